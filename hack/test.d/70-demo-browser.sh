#!/usr/bin/env bash
# The demo page and the JS client in headless Chromium (Debian's chromium via playwright-core)
# against two real chat-nodes and redis-server behind a sticky-cookie nginx, on loopback.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=/dev/null
source "$REPO_ROOT/hack/setup.d/70-sandbox.sh"
cd "$REPO_ROOT"
[ -x "${CHAT_NODE_BIN:-$TARGET_DIR/debug/chat-node}" ] || cargo build -p chat-node >&2
export CHAT_NODE_BIN="${CHAT_NODE_BIN:-$TARGET_DIR/debug/chat-node}"
cd tests/browser
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
status=0
node --test --test-concurrency=1 test/ >"$out" 2>&1 || status=$?
[ "$status" -eq 0 ] || cat "$out"
pass="$(sed -n 's/^# pass \([0-9]*\)/\1/p' "$out")"
fail="$(sed -n 's/^# fail \([0-9]*\)/\1/p' "$out")"
echo "demo-browser: ${pass:-0} passed, ${fail:-?} failed"
exit "$status"
