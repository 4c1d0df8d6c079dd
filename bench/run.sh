#!/usr/bin/env bash
# The whole benchmark in one command: builds chat-node and the load generator in release
# mode, installs the Node.js reference server and Centrifugo (built once per version into
# ~/.cache/chatcluster), then runs every scenario against chat-node, the reference and
# Centrifugo (history off and on), with the kernel's floor measured at each rate (see
# docs/benchmarks.md). Results and server logs go to bench/results/ (results.md, .json).
# Extra arguments go to `chat-loadgen suite` (e.g. --rates 500,3000 --no-idle); see --help.
source "$(dirname "${BASH_SOURCE[0]}")/../hack/lib.sh"
# shellcheck source=bench/prepare.sh
source "$REPO_ROOT/bench/prepare.sh"
cd "$REPO_ROOT"

log "cargo build --release -p chat-node -p chat-loadgen"
cargo build --release --locked -p chat-node -p chat-loadgen

# BENCH_NICE=-10 runs the benchmark (servers, Redis, load generator alike) at a higher
# priority than the rest of a busy machine (see run_suite); the default leaves it alone.
nice_cmd=()
[ -n "${BENCH_NICE:-}" ] && nice_cmd=(nice -n "$BENCH_NICE")
log "running the benchmark (a few minutes); loadavg now: $(cut -d' ' -f1-3 /proc/loadavg)"
run_suite "${nice_cmd[@]}" "$TARGET_DIR"/release/chat-loadgen suite \
    --chat-node "$TARGET_DIR"/release/chat-node \
    --reference bench/reference-node/server.js \
    --centrifugo "$BENCH_CENTRIFUGO" \
    --out bench/results "$@"
log "results: bench/results/results.md"
