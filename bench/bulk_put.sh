#!/usr/bin/env bash
# One `PUT /v2/apps` of N apps (issue #11: 500 apps once grew the server by 150 MB/s until
# the OOM killer ended it). For each size: a fresh `berth dev` with an event-stream client
# attached, the PUT's time, the time until its deployment is gone, the server's peak RSS and
# CPU seconds, and the bytes the event stream carried.
#
#   bench/bulk_put.sh                 # 100, 1000 and 5000 apps
#   bench/bulk_put.sh 10000
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p berth --bin berth
BERTH="$CARGO_TARGET_DIR/release/berth"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(100 1000 5000)
port=$((20000 + RANDOM % 10000))
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
tick=$(getconf CLK_TCK)

printf '| apps | PUT | deployment done | server peak RSS | server CPU | event stream |\n|---|---|---|---|---|---|\n'
for n in "${sizes[@]}"; do
  rm -rf "$work/data"
  "$BERTH" dev --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/dev.log" 2>&1 &
  dev=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/ping" >/dev/null && break; sleep 0.1; done
  python3 -c "import json; print(json.dumps([{'id': '/bulk/app%d' % i, 'cmd': 'sleep 1', 'instances': 0, 'cpus': 0.01, 'mem': 8} for i in range($n)]))" >"$work/body.json"
  curl -sN "http://127.0.0.1:$port/v2/events" >"$work/events.out" &
  sse=$!
  sleep 0.3
  cpu0=$(awk '{print $14 + $15}' "/proc/$dev/stat")
  start=$(date +%s.%N)
  put=$(curl -s -o "$work/put.out" -w '%{http_code} %{time_total}' -X PUT -H 'Content-Type: application/json' \
    --data-binary @"$work/body.json" "http://127.0.0.1:$port/v2/apps")
  [ "${put%% *}" = 200 ] || { echo "PUT of $n apps answered ${put%% *}: $(cat "$work/put.out")"; exit 1; }
  done_at=""
  for _ in $(seq 1 600); do
    if [ "$(curl -s -m 10 "http://127.0.0.1:$port/v2/deployments")" = "[]" ]; then done_at=$(date +%s.%N); break; fi
    sleep 0.1
  done
  [ -n "$done_at" ] || { echo "the deployment of $n apps did not finish within 60 s"; exit 1; }
  sleep 1
  hwm=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$dev/status")
  cpu1=$(awk '{print $14 + $15}' "/proc/$dev/stat")
  kill $sse 2>/dev/null || true; wait $sse 2>/dev/null || true
  printf '| %s | %.2f s | %.2f s | %s MiB | %.2f s | %s MB |\n' "$n" "${put#* }" \
    "$(awk "BEGIN {print $done_at - $start}")" "$hwm" "$(awk "BEGIN {print ($cpu1 - $cpu0) / $tick}")" \
    "$(( $(stat -c %s "$work/events.out") / 1000000 ))"
  kill $dev; wait $dev 2>/dev/null || true
done
