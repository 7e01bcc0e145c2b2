#!/usr/bin/env bash
# Berth's one test command: installs and starts what the tests need when it is missing
# (Debian packages, dockerd, lxcfs, etcd, the busybox test image, marathon-python, chronos-python, py-consul, schemathesis), then
# runs formatting, lints and every test. Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. System packages.
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
[ -x /bin/busybox ] || missing+=(busybox-static)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v lxcfs >/dev/null 2>&1 || missing+=(lxcfs)
# etcd-client compiles etcd's protobuf definitions: protoc and its include files.
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
# The etcd store's tests run against a real etcd (each test starts its own member).
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
# dig, for the DNS tests; nginx, for the template tests.
command -v dig >/dev/null 2>&1 || missing+=(bind9-dnsutils)
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. Docker Engine (the Docker driver's tests run against the real one).
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  as_root sh -c 'nohup dockerd >/var/log/berth-dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/berth-dockerd.log"; tail -20 /var/log/berth-dockerd.log || true; exit 1; }
fi
# lxcfs (the Docker driver mounts its /proc files so a container sees its own limits); the
# lxcfs test is skipped, with the reason, when it cannot run (no /dev/fuse).
if [ ! -r /var/lib/lxcfs/proc/meminfo ] && [ -e /dev/fuse ]; then
  log "starting lxcfs"
  # A dead lxcfs leaves its FUSE mount behind ("Transport endpoint is not connected").
  if grep -qs ' /var/lib/lxcfs ' /proc/mounts; then as_root umount -l /var/lib/lxcfs || true; fi
  as_root mkdir -p /var/lib/lxcfs
  as_root sh -c 'nohup lxcfs /var/lib/lxcfs >/var/log/berth-lxcfs.log 2>&1 &'
  for _ in $(seq 1 20); do [ -r /var/lib/lxcfs/proc/meminfo ] && break; sleep 0.5; done
  [ -r /var/lib/lxcfs/proc/meminfo ] || { echo "lxcfs did not start (the lxcfs test will skip):"; tail -5 /var/log/berth-lxcfs.log || true; }
fi
if [ -x scripts/test-image.sh ]; then
  log "test image"
  scripts/test-image.sh
fi

# 3. marathon-python, chronos-python and py-consul for the client compatibility tests, schemathesis for
# the OpenAPI one.
if ! .venv-compat/bin/python -c 'import marathon' >/dev/null 2>&1; then
  log "installing marathon-python 0.13.0 into .venv-compat"
  python3 -m venv .venv-compat
  .venv-compat/bin/pip install -q 'marathon==0.13.0'
fi
if ! .venv-compat/bin/python -c 'import chronos, importlib.metadata as m; assert m.version("chronos-python") == "1.2.1"' >/dev/null 2>&1; then
  log "installing chronos-python 1.2.1 into .venv-compat"
  [ -x .venv-compat/bin/python ] || python3 -m venv .venv-compat
  .venv-compat/bin/pip install -q 'chronos-python==1.2.1'
fi
if ! .venv-compat/bin/python -c 'import consul, importlib.metadata as m; assert m.version("py-consul") == "1.8.0"' >/dev/null 2>&1; then
  log "installing py-consul 1.8.0 into .venv-compat"
  [ -x .venv-compat/bin/python ] || python3 -m venv .venv-compat
  .venv-compat/bin/pip install -q 'py-consul==1.8.0'
fi
export BERTH_PYTHON="$PWD/.venv-compat/bin/python"
# schemathesis for the OpenAPI conformance test (crates/berth/tests/openapi_schemathesis.rs).
if ! .venv-schemathesis/bin/st --version 2>/dev/null | grep -q ' 4\.32\.5$'; then
  log "installing schemathesis 4.32.5 into .venv-schemathesis"
  python3 -m venv .venv-schemathesis
  .venv-schemathesis/bin/pip install -q 'schemathesis==4.32.5'
fi
export BERTH_SCHEMATHESIS="$PWD/.venv-schemathesis/bin/st"

# 4. Format, lints, tests.
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "cargo test"
cargo test --workspace 2>&1 | tee /tmp/berth-test-output.log

# 5. cargo-fuzz targets of berth-core's parsers (fuzz/: app JSON and validation, constraints,
#    timestamps, the BERTH_* labels, DNS queries), BERTH_FUZZ_SECONDS (20) each from the seeds in
#    fuzz/seeds/; a crash (a panic, or one input taking over 10 s) fails the run and leaves its
#    input in fuzz/artifacts/<target>/.
#    libFuzzer needs -Z flags: the nightly toolchain when it is installed, else the stable one
#    with RUSTC_BOOTSTRAP=1 (a new machine has no other toolchain, and none can be fetched).
if ! cargo fuzz --version 2>/dev/null | grep ' 0\.13\.2$' >/dev/null; then
  log "installing cargo-fuzz 0.13.2"
  cargo install --locked --quiet cargo-fuzz@0.13.2
fi
if rustup toolchain list 2>/dev/null | grep '^nightly' >/dev/null; then
  fuzz_cargo=(cargo +nightly)
else
  fuzz_cargo=(env RUSTC_BOOTSTRAP=1 cargo)
fi
fuzz_secs="${BERTH_FUZZ_SECONDS:-20}"
fuzz_targets=$(cd fuzz && cargo fuzz list)
for target in $fuzz_targets; do
  log "cargo fuzz run $target (${fuzz_secs} s)"
  corpus="$(mktemp -d)"
  dict=()
  [ -f "fuzz/$target.dict" ] && dict=("-dict=$PWD/fuzz/$target.dict")
  if ! "${fuzz_cargo[@]}" fuzz run "$target" "$corpus" "$PWD/fuzz/seeds/$target" -- \
    -max_total_time="$fuzz_secs" -timeout=10 "${dict[@]}" >"$corpus.log" 2>&1; then
    cat "$corpus.log"
    echo "cargo fuzz run $target failed (the input is in fuzz/artifacts/$target/)"
    exit 1
  fi
  grep -E '^Done [0-9]+ runs' "$corpus.log" || tail -n 5 "$corpus.log"
  rm -rf "$corpus" "$corpus.log"
done
fuzz_count=$(echo "$fuzz_targets" | wc -w)
echo "fuzz: $fuzz_count targets ran clean"

# The closing line counts everything that ran: the cargo tests and the fuzz targets.
read -r tests_passed tests_failed < <(awk '/^test result:/ {p += $4; f += $6} END {print p + 0, f + 0}' /tmp/berth-test-output.log)
echo "$((tests_passed + fuzz_count)) passed, $tests_failed failed"
