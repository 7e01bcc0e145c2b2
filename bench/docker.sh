#!/usr/bin/env bash
# Docker start-up benchmark (issue #3): for N busybox `sleep 3600` containers, the time from
#   - Berth:  POST /v2/apps (berth server + berth agent --drivers docker) to all N TASK_RUNNING
#             (an app without health checks), and, for a second app with a COMMAND check
#             `true` every second, to all N healthy;
#   - docker run: N parallel `docker run -d`, until every one returned;
#   - Swarm:  `docker service create --replicas N` (single-node swarm on 127.0.0.1) until
#             `docker service ls` shows N/N (skipped, with the reason, when swarm cannot init);
# then a table with the ratios. Each size runs ROUNDS times (the three contenders in turn each
# round, so drift in the machine's load hits them alike); the table shows the median and the
# range of each column, and of the per-round ratios. Everything it creates is removed at the end.
#
#   bench/docker.sh                 # N = 20 and 50, 3 rounds, release build
#   bench/docker.sh 10 30           # other sizes
#   ROUNDS=5 bench/docker.sh 20     # more rounds
#   BERTH=/path/to/berth bench/docker.sh   # use this binary (no build)
#
# Needs: docker (a running engine), curl, jq, and the image berth-test/busybox:latest
# (scripts/test-image.sh builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${BERTH_TEST_IMAGE:-berth-test/busybox:latest}"
SIZES=("$@")
[ ${#SIZES[@]} -eq 0 ] && SIZES=(20 50)
ROUNDS="${ROUNDS:-3}"

if ! docker info >/dev/null 2>&1; then
  echo "docker info fails: no Docker Engine, nothing to benchmark" >&2
  exit 1
fi
scripts/test-image.sh >/dev/null
if [ -z "${BERTH:-}" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
  cargo build --release -q -p berth --bin berth
  BERTH="$CARGO_TARGET_DIR/release/berth"
fi

TAG="bench$$"
NODE="bench-$TAG"
WORK="$(mktemp -d /tmp/berth-docker-bench-XXXX)"
SERVER_PID=""
AGENT_PID=""
SWARM_MINE=0

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc -l | xargs printf '%.2f'; }
ratio() { if [ "$2" = "-" ] || [ "$1" = "-" ]; then echo "-"; else echo "$1 / $2" | bc -l | xargs printf '%.2fx'; fi; }

cleanup() {
  set +e
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  docker service ls -q --filter "name=$TAG" | xargs -r docker service rm >/dev/null 2>&1
  ids="$(docker ps -aq --filter "label=berth.node_id=$NODE"; docker ps -aq --filter "label=bench=$TAG")"
  [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1
  if [ "$SWARM_MINE" = 1 ]; then
    # Wait for the service's containers to go before leaving.
    for _ in $(seq 1 100); do
      [ -z "$(docker ps -aq --filter "label=com.docker.swarm.service.name=$TAG-svc")" ] && break
      sleep 0.2
    done
    docker swarm leave --force >/dev/null 2>&1
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- berth server + agent -------------------------------------------------------------------
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
API="http://127.0.0.1:$PORT"
BERTH_LOG=warn "$BERTH" server --listen "127.0.0.1:$PORT" --data-dir "$WORK/server" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 200); do curl -fs "$API/ping" >/dev/null 2>&1 && break; sleep 0.1; done
BERTH_LOG=warn "$BERTH" agent --server "$API" --data-dir "$WORK/agent" --listen 127.0.0.1:0 \
  --address 127.0.0.1 --node-id "$NODE" --hostname "$NODE" --cpus 64 --mem 65536 --disk 100000 \
  --drivers docker --ports 45000-45999 >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 1 300); do
  curl -fs "$API/api/v1/nodes" 2>/dev/null | jq -e --arg n "$NODE" \
    '(if type=="array" then . else .nodes end) | any(.id==$n and (.status|ascii_downcase)=="ready")' >/dev/null 2>&1 && break
  sleep 0.1
done

count_berth() { docker ps -aq --filter "label=berth.node_id=$NODE" | wc -l; }

# One Berth app of N containers, timed from the POST until `field` >= N; then deleted.
berth_app() { # N field healthcheck(0|1) -> seconds
  local n=$1 field=$2 hc=$3 app="/bench/n$1-hc$3" t0 t="-" j
  t0="$(now)"
  curl -fs -X POST "$API/v2/apps" -H 'Content-Type: application/json' -d "$(jq -n --arg id "$app" --argjson n "$n" --arg img "$IMAGE" --argjson hc "$hc" '{
      id: $id, cmd: "exec sleep 3600", cpus: 0.01, mem: 8, instances: $n,
      taskKillGracePeriodSeconds: 1,
      container: {type: "DOCKER", docker: {image: $img}}}
    + (if $hc == 1 then {healthChecks: [{protocol: "COMMAND", command: {value: "true"}, intervalSeconds: 1,
                      gracePeriodSeconds: 30, timeoutSeconds: 10, maxConsecutiveFailures: 3}]} else {} end)')" >/dev/null
  for _ in $(seq 1 6000); do
    j="$(curl -fs "$API/v2/apps$app" || echo '{}')"
    if [ "$(jq --arg f "$field" '.app[$f] // 0' <<<"$j")" -ge "$n" ]; then t="$(since "$t0")"; break; fi
    sleep 0.05
  done
  curl -fs -X DELETE "$API/v2/apps$app?force=true" >/dev/null || true
  for _ in $(seq 1 600); do [ "$(count_berth)" -eq 0 ] && break; sleep 0.2; done
  echo "$t"
}

# "running healthy": running is timed on an app without health checks (the same work as
# `docker run` and the Swarm service: their `docker exec` checks would load dockerd while
# containers still start), healthy on a second app with a COMMAND check every second.
bench_berth() { # N -> "running healthy"
  echo "$(berth_app "$1" tasksRunning 0) $(berth_app "$1" tasksHealthy 1)"
}

bench_run() { # N -> seconds
  local n=$1 t0 i
  t0="$(now)"
  for i in $(seq 1 "$n"); do
    docker run -d --name "$TAG-run-$n-$i" --label "bench=$TAG" "$IMAGE" sleep 3600 >/dev/null &
  done
  wait
  local t; t="$(since "$t0")"
  docker ps -aq --filter "label=bench=$TAG" | xargs -r docker rm -f >/dev/null
  echo "$t"
}

SWARM_WHY=""
swarm_init() {
  local state out
  state="$(docker info --format '{{.Swarm.LocalNodeState}}')"
  if [ "$state" = "active" ]; then SWARM_WHY="this engine is already in a swarm (not touching it)"; return 1; fi
  if ! out="$(docker swarm init --advertise-addr 127.0.0.1 2>&1)"; then SWARM_WHY="docker swarm init failed: $out"; return 1; fi
  SWARM_MINE=1
}

bench_swarm() { # N -> seconds
  local n=$1 svc="$TAG-svc" t0 t="-"
  t0="$(now)"
  if ! docker service create --detach --no-resolve-image --name "$svc" --replicas "$n" \
      "$IMAGE" sleep 3600 >/dev/null 2>"$WORK/swarm.err"; then
    echo "-"; return
  fi
  for _ in $(seq 1 6000); do
    if [ "$(docker service ls --filter "name=$svc" --format '{{.Replicas}}')" = "$n/$n" ]; then t="$(since "$t0")"; break; fi
    sleep 0.1
  done
  docker service rm "$svc" >/dev/null
  for _ in $(seq 1 300); do
    [ -z "$(docker ps -aq --filter "label=com.docker.swarm.service.name=$svc")" ] && break
    sleep 0.2
  done
  echo "$t"
}

# Median and range of numbers ("-" entries are failures and are left out): "1.23 (1.10-1.40)".
summary() { # values...
  local v; v="$(printf '%s\n' "$@" | grep -v '^-$' | sort -n)" || true
  [ -z "$v" ] && { echo "-"; return; }
  local n; n="$(wc -l <<<"$v")"
  local med; med="$(sed -n "$(( (n + 1) / 2 ))p" <<<"$v")"
  echo "$med ($(head -1 <<<"$v")-$(tail -1 <<<"$v"))"
}

declare -A R_RUN R_HEALTHY R_DOCKER R_SWARM R_VS_DOCKER R_VS_SWARM
HAVE_SWARM=1
swarm_init || { HAVE_SWARM=0; echo "Swarm column skipped: $SWARM_WHY" >&2; }
for n in "${SIZES[@]}"; do
  for round in $(seq 1 "$ROUNDS"); do
    echo "N=$n round $round/$ROUNDS: berth ..." >&2
    read -r run healthy < <(bench_berth "$n")
    echo "N=$n round $round/$ROUNDS: docker run ..." >&2
    dr="$(bench_run "$n")"
    sw="-"
    if [ "$HAVE_SWARM" = 1 ]; then
      echo "N=$n round $round/$ROUNDS: swarm ..." >&2
      sw="$(bench_swarm "$n")"
    fi
    echo "N=$n round $round: berth running ${run}s, healthy ${healthy}s, docker run ${dr}s, swarm ${sw}s" >&2
    R_RUN[$n]+="$run "
    R_HEALTHY[$n]+="$healthy "
    R_DOCKER[$n]+="$dr "
    R_SWARM[$n]+="$sw "
    R_VS_DOCKER[$n]+="$(ratio "$run" "$dr" | tr -d x) "
    R_VS_SWARM[$n]+="$(ratio "$run" "$sw" | tr -d x) "
  done
done

echo
echo "docker $(docker version --format '{{.Server.Version}}'), $(nproc) CPUs, image $IMAGE, berth: $BERTH"
echo "seconds (and ratios): median of $ROUNDS rounds, range in brackets"
printf '%-4s %-19s %-19s %-19s %-19s %-19s %-19s\n' N "berth running" "berth healthy" "docker run" "swarm N/N" "berth/docker run" "berth/swarm"
for n in "${SIZES[@]}"; do
  # shellcheck disable=SC2086 # the lists are space-separated on purpose
  printf '%-4s %-19s %-19s %-19s %-19s %-19s %-19s\n' "$n" "$(summary ${R_RUN[$n]})" "$(summary ${R_HEALTHY[$n]})" \
    "$(summary ${R_DOCKER[$n]})" "$(summary ${R_SWARM[$n]})" "$(summary ${R_VS_DOCKER[$n]})" "$(summary ${R_VS_SWARM[$n]})"
done
[ "$HAVE_SWARM" = 1 ] || echo "(swarm skipped: $SWARM_WHY)"
