#!/usr/bin/env bash
# Smoke test of `make run` (chat-sandbox): it comes up on the real node with the example Ready in
# real pods, the demo page and a message go through Traefik at the address it prints,
# `kubectl get pods -o wide` shows containers running on the node, `kubectl scale` adds a
# chat-node pod, and SIGTERM tears everything down and leaves the host as it found it.
# Runs on a free ingress port (the e2e suite already covers port 80).
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=/dev/null
source "$REPO_ROOT/hack/setup.sh"
cd "$REPO_ROOT"
build_image_binaries
# The whole workspace, as hack/test.sh builds it: `-p chat-sandbox` alone unifies the
# dependencies' features differently and would rebuild ~75 crates after make test's build.
cargo build --workspace --locked --bins >&2

tmp="$(mktemp -d)"
ready="$tmp/ready.json"
passed=0
failed=0
ok() { passed=$((passed + 1)); log "ok: $*"; }
fail() { failed=$((failed + 1)); printf 'FAIL: %s\n' "$*" >&2; }
summary() { echo "sandbox-smoke: $passed passed, $failed failed"; }
host_state() { sh tests/harness/node/host.sh fingerprint; }

# no other node may be running while the host is fingerprinted
flock -w 300 /run/lock/chatcluster-node.lock true
host_state >"$tmp/host-before"

"$TARGET_DIR"/debug/chat-sandbox --port 0 --dir "$tmp/state" --ready-file "$ready" \
    >"$tmp/sandbox.log" 2>&1 &
pid=$!
cleanup() {
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
dump() {
    echo "--- sandbox log ---" >&2
    tail -n 60 "$tmp/sandbox.log" >&2
    summary
    exit 1
}
kubectl() { "$CHATCLUSTER_KUBE_BIN/kubectl" "$@"; }

# 1. up and Ready (the node starts, the chart installs the operator, the example's pods run)
for _ in $(seq 1 600); do
    [ -f "$ready" ] && break
    kill -0 "$pid" 2>/dev/null || { fail "sandbox exited before it was ready"; dump; }
    sleep 0.5
done
[ -f "$ready" ] || { fail "sandbox not ready after 300 s"; dump; }
url="$(node -p "require('$ready').url")"
KUBECONFIG="$(node -p "require('$ready').kubeconfig")"
export KUBECONFIG
grep -q "Demo page:   $url" "$tmp/sandbox.log" && ok "prints the demo page $url" || fail "no 'Demo page: $url' in the output"
state="$(kubectl get chat demo -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')"
[ "$state" = "True" ] && ok "ChatCluster demo Ready" || fail "ChatCluster demo Ready is '$state'"
running="$(kubectl get pods -o wide -l app.kubernetes.io/instance=demo --no-headers | grep -c ' Running .*chatcluster-node' || true)"
[ "$running" = "3" ] && ok "kubectl get pods -o wide: 3 Running on chatcluster-node" || fail "$running running pods"
operator="$(kubectl get pods -n chat-operator --no-headers | grep -c ' Running ' || true)"
[ "$operator" = "2" ] && ok "the operator runs as 2 pods (Helm chart)" || fail "operator pods running: $operator"

# 2. the demo page and a message through Traefik
curl -fsS "$url" | grep -q "ChatCluster" && ok "demo page served through Traefik" || fail "demo page"
curl -fsS "${url}client/index.js" | grep -q "ChatClient" && ok "client module served" || fail "client module"
answer="$(curl -sS -X POST -H 'Content-Type: application/json' \
    -d '{"channel":"chat:smoke","data":{"text":"hello through traefik"}}' "${url}api/publish")"
echo "$answer" | grep -q '"offset"' && ok "publish through Traefik: $answer" || fail "publish: $answer"
curl -sN --max-time 5 "${url}sse?channel=chat:smoke&since=0-0" >"$tmp/sse.out" 2>/dev/null || true
grep -q "hello through traefik" "$tmp/sse.out" && ok "message read back over SSE through Traefik" \
    || fail "message not received over SSE: $(head -c 300 "$tmp/sse.out")"

# 3. scale to 3: a third chat-node pod runs and joins the Service
kubectl scale chat/demo --replicas=3 >/dev/null
ready_replicas=""
for _ in $(seq 1 240); do
    ready_replicas="$(kubectl get deploy demo -o jsonpath='{.status.readyReplicas}')"
    [ "$ready_replicas" = "3" ] && break
    sleep 0.5
done
[ "$ready_replicas" = "3" ] && ok "scaled: 3 ready chat-node pods" || fail "readyReplicas=$ready_replicas after scale"

# 4. SIGTERM: exit 0, and the host is as it was
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
[ "$status" = "0" ] && ok "sandbox stopped with exit 0" || fail "sandbox exit status $status"
flock -w 120 /run/lock/chatcluster-node.lock true
host_state >"$tmp/host-after"
if diff -u "$tmp/host-before" "$tmp/host-after" >"$tmp/host.diff"; then
    ok "the host is as it was (rules, sysctls, links, mounts, processes, paths)"
else
    fail "the host changed: $(cat "$tmp/host.diff")"
fi
[ "$failed" = 0 ] || dump
summary
