#!/usr/bin/env bash
# Smoke test of the sandbox (`make run`): it comes up Ready, a message goes through the proxy,
# `kubectl scale chat/demo --replicas=3` starts a third chat-node, deleting the ChatCluster stops
# the nodes, and SIGTERM stops the sandbox cleanly.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=/dev/null
source "$REPO_ROOT/hack/setup.sh"
cd "$REPO_ROOT"
cargo build -p chat-node -p chat-operator -p chat-sandbox >&2

tmp="$(mktemp -d)"
ready="$tmp/ready.json"
passed=0
failed=0
ok() { passed=$((passed + 1)); log "ok: $*"; }
fail() { failed=$((failed + 1)); printf 'FAIL: %s\n' "$*" >&2; }
summary() { echo "sandbox-smoke: $passed passed, $failed failed"; }

PATH="${CHATCLUSTER_KUBE_BIN:+$CHATCLUSTER_KUBE_BIN:}$PATH" "$TARGET_DIR"/debug/chat-sandbox --port 0 \
    --dir "$tmp/state" --ready-file "$ready" --sync-interval 500ms --stop-grace 5s \
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
    echo "--- operator log ---" >&2
    tail -n 30 "$tmp/state/operator.log" >&2 2>/dev/null || true
    summary
    exit 1
}
kubectl() { "${CHATCLUSTER_KUBE_BIN:+$CHATCLUSTER_KUBE_BIN/}kubectl" "$@"; }
pod_processes() {
    for p in /proc/[0-9]*; do readlink "$p/cwd" 2>/dev/null || true; done | grep -c "^$tmp/state/pods/" || true
}

# 1. up and Ready (the control plane starts, the operator reconciles, the pods start)
for _ in $(seq 1 360); do
    [ -f "$ready" ] && break
    kill -0 "$pid" 2>/dev/null || { fail "sandbox exited before it was ready"; dump; }
    sleep 0.5
done
[ -f "$ready" ] || { fail "sandbox not ready after 180 s"; dump; }
url="$(node -p "require('$ready').url")"
KUBECONFIG="$(node -p "require('$ready').kubeconfig")"
export KUBECONFIG
state="$(kubectl get chat demo -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')"
[ "$state" = "True" ] && ok "ChatCluster demo Ready" || fail "ChatCluster demo Ready is '$state'"

# 2. the demo page and a message through the proxy
curl -fsS "$url" | grep -q "ChatCluster" && ok "demo page served through the proxy" || fail "demo page"
curl -fsS "${url}client/index.js" | grep -q "ChatClient" && ok "client module served" || fail "client module"
answer="$(curl -sS -X POST -H 'Content-Type: application/json' \
    -d '{"channel":"chat:smoke","data":{"text":"hello through the proxy"}}' "${url}api/publish")"
echo "$answer" | grep -q '"offset"' && ok "publish through the proxy: $answer" || fail "publish: $answer"
# read it back from history over SSE (since=0-0: all the channel holds): no timing race
curl -sN --max-time 5 "${url}sse?channel=chat:smoke&since=0-0" >"$tmp/sse.out" 2>/dev/null || true
grep -q "hello through the proxy" "$tmp/sse.out" && ok "message read back over SSE through the proxy" \
    || fail "message not received over SSE: $(head -c 300 "$tmp/sse.out")"

# 3. scale to 3: a third chat-node starts and joins the proxy
kubectl scale chat/demo --replicas=3 >/dev/null
ready_replicas=""
for _ in $(seq 1 120); do
    ready_replicas="$(kubectl get deploy demo -o jsonpath='{.status.readyReplicas}')"
    [ "$ready_replicas" = "3" ] && break
    sleep 0.5
done
[ "$ready_replicas" = "3" ] && ok "scaled: 3 ready chat-nodes" || fail "readyReplicas=$ready_replicas after scale"
upstreams=0
for _ in $(seq 1 20); do
    upstreams="$(grep -c 'server 127.0.0.1:.* max_fails' "$tmp/state/proxy/nginx.conf" || true)"
    [ "$upstreams" = "3" ] && break
    sleep 0.5
done
[ "$upstreams" = "3" ] && ok "proxy routes to 3 nodes" || fail "proxy routes to $upstreams nodes"
# the pods' status IPs are ones the endpoints controller accepts: the Service has 3 ready endpoints
endpoints=""
for _ in $(seq 1 40); do
    endpoints="$(kubectl get endpointslices -l kubernetes.io/service-name=demo \
        -o jsonpath='{range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{" "}{end}')"
    [ "$(wc -w <<<"$endpoints")" = "3" ] && break
    sleep 0.5
done
[ "$(wc -w <<<"$endpoints")" = "3" ] && ok "Service demo has 3 ready endpoints: $endpoints" \
    || fail "Service demo endpoints: '$endpoints'"
rejected="$(kubectl get events --field-selector reason=FailedToUpdateEndpointSlices -o name)"
[ -z "$rejected" ] && ok "no FailedToUpdateEndpointSlices events" || fail "endpoint slices rejected: $rejected"
# creating and scaling is the normal course: the operator warns only about what is really
# missing here (prometheus-operator's CRDs)
warnings="$(kubectl get events --field-selector type=Warning,involvedObject.kind=ChatCluster \
    -o jsonpath='{range .items[*]}{.reason}{" "}{end}')"
unexpected="$(tr ' ' '\n' <<<"$warnings" | grep -v -e '^$' -e '^CRDNotInstalled$' -e '^ApiNotInstalled$' || true)"
[ -z "$unexpected" ] && ok "the operator's Warning events are only about missing CRDs: ${warnings:-none}" \
    || fail "unexpected Warning events for the ChatCluster: $warnings"

# 4. delete the ChatCluster: its pods (processes) stop and disappear
kubectl delete chat demo --wait=false >/dev/null
left="?"
for _ in $(seq 1 120); do
    left="$(kubectl get pods -l app.kubernetes.io/instance=demo -o name)"
    [ -z "$left" ] && break
    sleep 0.5
done
[ -z "$left" ] && ok "deleting the ChatCluster removed its pods" || fail "pods left: $left"
running="$(pod_processes)"
[ "$running" = "0" ] && ok "no pod process left" || fail "$running pod processes still running"

# 5. SIGTERM stops the sandbox cleanly
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
[ "$status" = "0" ] && ok "sandbox stopped with exit 0" || fail "sandbox exit status $status"
[ "$failed" = 0 ] || dump
summary
