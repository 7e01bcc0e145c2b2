#!/usr/bin/env bash
# Discovery propagation benchmark: a 3-instance exec app behind a real nginx configured by
# `berth template`; 50 times, one instance turns unhealthy or healthy again, and the time from
# the catalog showing the change to nginx routing to exactly the new set is measured. Prints
# p50, p99 and max. Needs nginx (apt-get install nginx). For comparison: consul-template's
# default blocking wait is 60 s, and marathon-lb polled every 60 s.
#
#   bench/discovery.sh                     # 50 changes
#   BERTH_BENCH_ROUNDS=200 bench/discovery.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
exec cargo test --release -q -p berth --test template bench_propagation_to_nginx -- --ignored --nocapture
