#!/usr/bin/env bash
# Runs every test of the project: lints, unit and integration tests, and the extra suites
# in hack/test.d/*.sh (each run in its own bash, in order). Safe to run twice.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=/dev/null
source "$REPO_ROOT/hack/setup.sh"
cd "$REPO_ROOT"
# A fresh clone (CI) gains nothing from incremental compilation; it only costs disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo build (binaries used by the integration tests)"
cargo build --workspace --locked --bins
build_image_binaries
log "cargo test"
cargo test --workspace --locked --no-fail-fast

for suite in "$REPO_ROOT"/hack/test.d/*.sh; do
    [ -e "$suite" ] || continue
    log "suite $(basename "$suite")"
    bash "$suite"
done
log "all tests passed"
