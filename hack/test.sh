#!/usr/bin/env bash
# Runs every test of the project: lints, unit and integration tests (the end-to-end ones on a
# real node: needs root), and the extra suites in hack/test.d/*.sh (each run in its own bash, in
# order). Safe to run twice. At the end it checks that the host is as it was before (what a node
# may touch: iptables/nftables, sysctls, links, mounts, processes, paths; tests/harness/node/host.sh).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ "$(id -u)" -eq 0 ] || die "make test runs a real Kubernetes node (containers, mounts, iptables): run it as root"
# The Go-built tools that are missing build in the background while cargo lints and builds
# (hack/lib.sh, build_job); the tests wait for them.
export CHATCLUSTER_BUILD_JOBS=background
trap stop_build_jobs EXIT
# shellcheck source=/dev/null
source "$REPO_ROOT/hack/setup.sh"
# Centrifugo, for the bench smoke (hack/test.d/80-bench-smoke.sh; bench/prepare.sh builds it
# on demand otherwise).
# shellcheck source=bench/centrifugo.sh
source "$REPO_ROOT/bench/centrifugo.sh"
build_centrifugo
unset CHATCLUSTER_BUILD_JOBS
cd "$REPO_ROOT"
node_lock=/run/lock/chatcluster-node.lock
mkdir -p "$(dirname "$node_lock")"
host_before="$(mktemp)"
trap 'stop_build_jobs; rm -f "$host_before"' EXIT
flock -w 600 "$node_lock" sh tests/harness/node/host.sh fingerprint >"$host_before"
# A fresh clone (CI) gains nothing from incremental compilation; it only costs disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo build (binaries used by the integration tests)"
cargo build --workspace --locked --bins
build_image_binaries
wait_build_jobs
log "cargo test"
cargo test --workspace --locked --no-fail-fast

for suite in "$REPO_ROOT"/hack/test.d/*.sh; do
    [ -e "$suite" ] || continue
    log "suite $(basename "$suite")"
    bash "$suite"
done
log "checking that the host is as it was before the tests"
# The last node's watchdog may still be tearing it down: wait for it.
if ! flock -w 300 "$node_lock" sh tests/harness/node/host.sh fingerprint | diff -u "$host_before" - >&2; then
    die "the tests left the host changed (diff above)"
fi
log "all tests passed"
