#!/usr/bin/env bash
# Docker start-up benchmark (issue #3): for N busybox `sleep 3600` containers, the time from
#   - Berth:  POST /v2/apps (berth server + berth agent --drivers docker) to all N TASK_RUNNING
#             (an app without health checks), and, for a second app with a COMMAND check
#             `true` every second, to all N healthy;
#   - docker run: N parallel `docker run -d`, until every one returned;
#   - Swarm:  `docker service create --replicas N` (single-node swarm on 127.0.0.1) until
#             `docker service ls` shows N/N (skipped, with the reason, when swarm cannot init);
# then a table with the ratios. Everything it creates is removed at the end.
#
#   bench/docker.sh                 # N = 20 and 50, release build
#   bench/docker.sh 10 30           # other sizes
#   BERTH=/path/to/berth bench/docker.sh   # use this binary (no build)
#
# Needs: docker (a running engine), curl, jq, and the image berth-test/busybox:latest
# (scripts/test-image.sh builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${BERTH_TEST_IMAGE:-berth-test/busybox:latest}"
SIZES=("$@")
[ ${#SIZES[@]} -eq 0 ] && SIZES=(20 50)

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

declare -A R_RUN R_HEALTHY R_DOCKER R_SWARM
HAVE_SWARM=1
swarm_init || { HAVE_SWARM=0; echo "Swarm column skipped: $SWARM_WHY" >&2; }
for n in "${SIZES[@]}"; do
  echo "N=$n: berth ..." >&2
  read -r R_RUN[$n] R_HEALTHY[$n] < <(bench_berth "$n")
  echo "N=$n: docker run ..." >&2
  R_DOCKER[$n]="$(bench_run "$n")"
  if [ "$HAVE_SWARM" = 1 ]; then
    echo "N=$n: swarm ..." >&2
    R_SWARM[$n]="$(bench_swarm "$n")"
  else
    R_SWARM[$n]="-"
  fi
done

echo
echo "docker $(docker version --format '{{.Server.Version}}'), $(nproc) CPUs, image $IMAGE, berth: $BERTH"
printf '%-4s %14s %14s %12s %12s %16s %14s\n' N "berth running" "berth healthy" "docker run" "swarm N/N" "berth/docker run" "berth/swarm"
for n in "${SIZES[@]}"; do
  printf '%-4s %13ss %13ss %11ss %11ss %16s %14s\n' "$n" "${R_RUN[$n]}" "${R_HEALTHY[$n]}" \
    "${R_DOCKER[$n]}" "${R_SWARM[$n]}" "$(ratio "${R_RUN[$n]}" "${R_DOCKER[$n]}")" "$(ratio "${R_RUN[$n]}" "${R_SWARM[$n]}")"
done
[ "$HAVE_SWARM" = 1 ] || echo "(swarm skipped: $SWARM_WHY)"
