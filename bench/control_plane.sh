#!/usr/bin/env bash
# Whole-control-plane benchmark: `berth server` + `berth sim` (5,000 simulated nodes), then
# 1,000 apps x 100 instances (fake driver) through the API, timed until all 100,000 tasks are
# TASK_RUNNING, then GET /v2/apps and /v2/apps/{id} latency (16 clients, 10 s each).
#
#   bench/control_plane.sh            # full run
#   bench/control_plane.sh --quick    # 200 nodes, 20 apps x 100 instances
#   bench/control_plane.sh --nodes 10000 --apps 100 --instances 100
#   bench/control_plane.sh --mem 8 --constraint hostname:MAX_PER:5 --no-driver-label
#   bench/control_plane.sh --store etcd     # the state in etcd (one member the bench starts)
#   bench/control_plane.sh --both [...]     # embedded, then etcd, same arguments
#
# Exits 1, saying how many tasks run and why the rest wait (GET /v2/queue), when not all
# run within --timeout seconds (600) or none more starts for --stall seconds (60).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p berth --bin berth --example control_plane
bench=("$CARGO_TARGET_DIR/release/examples/control_plane" --berth "$CARGO_TARGET_DIR/release/berth")
if [ "${1:-}" = "--both" ]; then
  shift
  "${bench[@]}" --store embedded "$@"
  echo
  exec "${bench[@]}" --store etcd "$@"
fi
exec "${bench[@]}" "$@"
