#!/usr/bin/env bash
# Smoke run of the benchmark tooling (bench/, docs/benchmarks.md) so it does not rot: a few
# seconds at tiny rates against chat-node, the Node.js reference server and Centrifugo (history
# off and on), each with its own redis-server, and the floor script once per rate. Fails when a
# connection limit is not enforced exactly (every connection below it accepted, the rest refused
# with 503) or a message is lost, duplicated or reordered. Measures nothing: performance lives
# in bench/run.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=bench/prepare.sh
source "$REPO_ROOT/bench/prepare.sh"
cd "$REPO_ROOT"

# The whole workspace, as hack/test.sh builds it (a subset of packages unifies the dependencies'
# features differently and would rebuild part of them).
cargo build --workspace --locked --bins
# Every design once chat-node's server is on main; until then (its placeholder binary has no
# --redis-url flag) the others only.
designs=reference,centrifugo,centrifugo-history
if timeout 10 "$TARGET_DIR"/debug/chat-node --help 2>/dev/null | grep -q -- '--redis-url'; then
    designs=chat-node,$designs
fi
out="$(mktemp -d)"
# the drain scenario stops a chat-node: a short drain window keeps the smoke test short
export CHAT_DRAIN_TIMEOUT=2s
if ! run_suite "$TARGET_DIR"/debug/chat-loadgen suite \
    --chat-node "$TARGET_DIR"/debug/chat-node \
    --reference bench/reference-node/server.js \
    --centrifugo "$BENCH_CENTRIFUGO" \
    --out "$out" \
    --designs "$designs" \
    --max-connections 40 --idle-extra 10 --idle-processes 2 --idle-settle 0.2 \
    --burst-connections 30 --burst-rate 300 --drain-connections 20 \
    --rates 50,200 --channels 4 --subscribers-per-channel 4 --publishers 2 \
    --step 1.5 --drain-timeout 10 --p99-bound-ms 60000 --always-up-to 1000000 \
    --floor-seconds 0.5 \
    --check >"$out/stdout"; then
    cat "$out/stdout" >&2
    for f in "$out"/*.log; do
        echo "--- $f" >&2
        tail -n 20 "$f" >&2
    done
    exit 1
fi
rm -rf "$out"
