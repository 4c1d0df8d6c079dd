#!/usr/bin/env bash
# Unit tests of the browser client (clients/js) with node's built-in test runner.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$REPO_ROOT/clients/js"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
status=0
node --test test/ >"$out" 2>&1 || status=$?
[ "$status" -eq 0 ] || cat "$out"
pass="$(sed -n 's/^# pass \([0-9]*\)/\1/p' "$out")"
fail="$(sed -n 's/^# fail \([0-9]*\)/\1/p' "$out")"
echo "client-js unit: ${pass:-0} passed, ${fail:-?} failed"
exit "$status"
