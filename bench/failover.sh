#!/usr/bin/env bash
# Failover benchmark: 3 berth servers on a 3-member etcd (all on this host); N times, kill -9
# the leader and time until another server accepts a write. Prints each round, the median
# and the max.
#
#   bench/failover.sh                  # 10 rounds, --leader-ttl 2
#   bench/failover.sh --rounds 20 --leader-ttl 3
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p berth --bin berth --example failover
exec "$CARGO_TARGET_DIR/release/examples/failover" --berth "$CARGO_TARGET_DIR/release/berth" "$@"
