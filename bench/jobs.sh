#!/usr/bin/env bash
# Job benchmark (issue #14), on `berth dev` with the Docker driver and a busybox image:
#
#   1. Churn: 300 runs of a 1-second job (`sleep 1`; 3 jobs x 100 runs, queued at once,
#      as many at a time as the node's CPUs allow at 0.1 cpus a run), once with a container per
#      run (Chronos' way) and once in warm mode (one kept container per job, runs by
#      `docker exec`). For each: containers created (docker events), wall time per run, the
#      median run time, and the CPU time dockerd and containerd spent (from /proc).
#   2. Schedule accuracy: a job (`sleep 0.2`) due every second (R<n>/<start>/PT1S), per
#      mode: delay from each due time to the run's process running (the agent's report),
#      p50 and p99 (and max).
#
#   bench/jobs.sh                    # release build, 300 runs, 60 scheduled runs per mode
#   RUNS_PER_JOB=50 ACC_RUNS=30 bench/jobs.sh
#   BERTH=/path/to/berth bench/jobs.sh
#
# Needs: docker (a running engine), curl, jq, python3, and the image berth-test/busybox:latest
# (scripts/test-image.sh builds it). Everything it creates is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${BERTH_TEST_IMAGE:-berth-test/busybox:latest}"
JOBS=3
RUNS_PER_JOB="${RUNS_PER_JOB:-100}"
ACC_RUNS="${ACC_RUNS:-60}"
TOTAL=$((JOBS * RUNS_PER_JOB))

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

WORK="$(mktemp -d /tmp/berth-jobs-bench-XXXX)"
NODE="jobs-bench-$$"
DEV_PID=""
cleanup() {
  set +e
  if [ -n "$DEV_PID" ]; then kill "$DEV_PID" 2>/dev/null; wait "$DEV_PID" 2>/dev/null; fi
  ids="$(docker ps -aq --filter "label=berth.node_id=$NODE")"
  [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
API="http://127.0.0.1:$PORT"
BERTH_LOG=warn "$BERTH" dev --listen "127.0.0.1:$PORT" --data-dir "$WORK/dev" --node-id "$NODE" \
  --hostname "$NODE" --address 127.0.0.1 --drivers docker >"$WORK/dev.log" 2>&1 &
DEV_PID=$!
for _ in $(seq 1 300); do
  curl -fs "$API/api/v1/nodes" 2>/dev/null | jq -e '(if type=="array" then . else .nodes end) | any((.status|ascii_downcase)=="ready")' >/dev/null 2>&1 && break
  sleep 0.1
done

iso_in() { python3 -c "import datetime,sys; t=datetime.datetime.now(datetime.timezone.utc)+datetime.timedelta(seconds=float(sys.argv[1])); print(t.strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]+'Z')" "$1"; }
cpu_ticks() { # utime+stime of every process named $1, in clock ticks
  local total=0
  for pid in $(pidof "$1" 2>/dev/null); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
TICKS="$(getconf CLK_TCK)"
put_job() {
  local code
  code="$(curl -s -o "$WORK/put.out" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    --data "$1" "$API/scheduler/iso8601")"
  if [ "$code" != 204 ]; then echo "creating a job failed ($code): $(cat "$WORK/put.out")" >&2; exit 1; fi
}
job_json() { # name mode schedule concurrent command
  jq -nc --arg n "$1" --arg m "$2" --arg s "$3" --argjson c "$4" --arg cmd "$5" --arg img "$IMAGE" \
    '{name: $n, command: $cmd, schedule: $s, concurrent: $c, retries: 0, cpus: 0.1, mem: 32,
      runMode: $m, container: {type: "DOCKER", image: $img}}'
}
finished() { # total finished runs of the jobs named $1-*
  curl -fs "$API/scheduler/jobs" | jq --arg p "$1-" '[.[] | select(.name|startswith($p)) | .successCount + .errorCount] | add // 0'
}

declare -A R
churn() { # mode
  local mode="$1" prefix="churn-$1" later t0 t1 d0 k0 created failed
  later="R/$(iso_in 86400)/PT24H"
  for j in $(seq 1 $JOBS); do put_job "$(job_json "$prefix-$j" "$mode" "$later" true "sleep 1")"; done
  # Counted live: dockerd keeps only its last events, fewer than 300 runs make.
  docker events --filter type=container --filter event=create --filter "label=berth.node_id=$NODE" \
    --format '{{.ID}}' >"$WORK/creates-$mode" 2>/dev/null &
  local events_pid=$!
  sleep 0.5
  d0="$(cpu_ticks dockerd)"; k0="$(cpu_ticks containerd)"
  t0="$(date +%s.%N)"
  for j in $(seq 1 $JOBS); do
    for _ in $(seq 1 "$RUNS_PER_JOB"); do
      curl -fs -X PUT "$API/scheduler/job/$prefix-$j" >/dev/null
    done
  done
  while [ "$(finished "$prefix")" -lt "$TOTAL" ]; do sleep 0.2; done
  t1="$(date +%s.%N)"
  R[$mode,dockerd]="$(echo "($(cpu_ticks dockerd) - $d0) / $TICKS" | bc -l | xargs printf '%.1f')"
  R[$mode,containerd]="$(echo "($(cpu_ticks containerd) - $k0) / $TICKS" | bc -l | xargs printf '%.1f')"
  sleep 1
  kill "$events_pid" 2>/dev/null; wait "$events_pid" 2>/dev/null || true
  created="$(wc -l <"$WORK/creates-$mode")"
  R[$mode,median_run]="$(for j in $(seq 1 $JOBS); do curl -fs "$API/api/v1/jobs/$prefix-$j/runs"; done |
    jq -s '[.[].runs[].durationMs | select(. != null)] | sort | if length == 0 then "-" else .[length/2|floor] end')"
  failed="$(curl -fs "$API/scheduler/jobs" | jq --arg p "$prefix-" '[.[] | select(.name|startswith($p)) | .errorCount] | add // 0')"
  R[$mode,created]="$created"
  R[$mode,failed]="$failed"
  R[$mode,wall]="$(echo "$t1 - $t0" | bc -l | xargs printf '%.1f')"
  R[$mode,per_run]="$(echo "($t1 - $t0) * 1000 / $TOTAL" | bc -l | xargs printf '%.0f')"
  for j in $(seq 1 $JOBS); do curl -fs -X DELETE "$API/scheduler/job/$prefix-$j" >/dev/null; done
}

accuracy() { # mode
  local mode="$1" name="acc-$1"
  put_job "$(job_json "$name" "$mode" "R$ACC_RUNS/$(iso_in 3)/PT1S" false "sleep 0.2")"
  for _ in $(seq 1 $((ACC_RUNS * 3 + 60))); do
    [ "$(curl -fs "$API/scheduler/job/$name" | jq '.successCount + .errorCount')" -ge "$ACC_RUNS" ] && break
    sleep 1
  done
  curl -fs "$API/api/v1/jobs/$name/runs" >"$WORK/acc-$mode.json"
  R[$mode,acc]="$(python3 - "$WORK/acc-$mode.json" <<'PY'
import json, sys, datetime
def ms(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp() * 1000
runs = json.load(open(sys.argv[1]))["runs"]
d = sorted(ms(r["runningAt"]) - ms(r["scheduledFor"]) for r in runs if r.get("runningAt") and r.get("scheduledFor"))
if not d:
    print("- - - 0"); sys.exit()
q = lambda p: d[min(len(d) - 1, max(0, int(round(p * len(d) + 0.5)) - 1))]
print(f"{q(0.5):.0f} {q(0.99):.0f} {d[-1]:.0f} {len(d)}")
PY
)"
  curl -fs -X DELETE "$API/scheduler/job/$name" >/dev/null
}

for mode in per-run warm; do
  echo "churn, $mode: $TOTAL runs of 'sleep 1' ..." >&2
  churn "$mode"
  echo "accuracy, $mode: $ACC_RUNS runs due every second ..." >&2
  accuracy "$mode"
done

echo
echo "$TOTAL runs of a 1-second job ($JOBS jobs x $RUNS_PER_JOB, queued at once, 0.1 cpus each; $(nproc) cores)"
printf '%-9s %11s %7s %7s %11s %14s %14s %17s\n' mode containers failed wall_s wall_ms/run median_run_ms dockerd_cpu_s containerd_cpu_s
for mode in per-run warm; do
  printf '%-9s %11s %7s %7s %11s %14s %14s %17s\n' "$mode" "${R[$mode,created]}" "${R[$mode,failed]}" \
    "${R[$mode,wall]}" "${R[$mode,per_run]}" "${R[$mode,median_run]}" "${R[$mode,dockerd]}" "${R[$mode,containerd]}"
done
echo "(median_run_ms: a run's start to its end as the server saw them, for 'sleep 1')"
echo
echo "schedule accuracy: due time -> run's process running (ms), a job due every second"
printf '%-9s %8s %8s %8s %8s\n' mode p50 p99 max samples
for mode in per-run warm; do
  read -r p50 p99 max n <<<"${R[$mode,acc]}"
  printf '%-9s %8s %8s %8s %8s\n' "$mode" "$p50" "$p99" "$max" "$n"
done
