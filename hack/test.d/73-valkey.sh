#!/usr/bin/env bash
# chat-node's Redis suites again, against Valkey (the open-source fork of Redis) instead of
# redis-server: every chat-node test file that starts a server, a cluster or sentinels through
# the harness, and the operator's test of the managed Redis' configuration file. The harness
# runs $CHATCLUSTER_REDIS_SERVER for redis-server and sentinels alike.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$REPO_ROOT"
valkey="$(command -v valkey-server)" || die "valkey-server is missing: run ./hack/setup.sh"
log "Valkey: $("$valkey" --version)"
tests=()
files=0
for file in chat-node/tests/*.rs; do
    if grep -q 'test_harness::redis' "$file"; then
        tests+=(--test "$(basename "$file" .rs)")
        files=$((files + 1))
    fi
done
[ "$files" -ge 15 ] || die "found only $files chat-node test files on Redis: the selection is out of date"
# --workspace, as hack/test.sh builds: `-p chat-node` alone unifies the dependencies' features
# differently and would rebuild ~100 crates.
CHATCLUSTER_REDIS_SERVER="$valkey" cargo test --workspace --locked "${tests[@]}" --test redis_config >&2
echo "valkey: $files chat-node test files and the operator's redis_config passed on $("$valkey" --version | cut -d' ' -f3)"
