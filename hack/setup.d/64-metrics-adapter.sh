# shellcheck shell=bash
# metrics-adapter (tests/tools/metrics-adapter): a custom metrics API server built on
# sigs.k8s.io/custom-metrics-apiserver (the library prometheus-adapter is built on, which the Go
# module proxy here does not serve) that answers docs/autoscaling.md's prometheus-adapter rule from
# a real Prometheus, so the real HorizontalPodAutoscaler controller scales on connections. Built
# from Go modules once per go.sum and source, cached outside the checkout:
#   $CHATCLUSTER_CACHE/metrics-adapter-cma-v1.36.0/bin/metrics-adapter
# Exports CHATCLUSTER_METRICS_ADAPTER (the binary).
CHATCLUSTER_CMA_VERSION=v1.36.0 # sigs.k8s.io/custom-metrics-apiserver, kept equal to its go.mod

_build_metrics_adapter_now() {
    local src="$1" bin="$2" stamp="$3"
    command -v go >/dev/null 2>&1 || die "Go is needed to build the metrics adapter"
    log "building metrics-adapter (custom-metrics-apiserver $CHATCLUSTER_CMA_VERSION) from Go modules into $bin"
    mkdir -p "$bin"
    (cd "$src" && CGO_ENABLED=0 go build -mod=readonly -trimpath -o "$bin/metrics-adapter.tmp" .) >&2
    mv "$bin/metrics-adapter.tmp" "$bin/metrics-adapter"
    printf '%s\n' "$stamp" >"$bin/.stamp"
    log "built metrics-adapter"
}

build_metrics_adapter() {
    local src="$REPO_ROOT/tests/tools/metrics-adapter"
    local bin="$CHATCLUSTER_CACHE/metrics-adapter-cma-$CHATCLUSTER_CMA_VERSION/bin"
    local stamp
    stamp="$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go | sha256sum | cut -c1-16)"
    if [ ! -x "$bin/metrics-adapter" ] || [ "$(cat "$bin/.stamp" 2>/dev/null)" != "$stamp" ]; then
        build_job metrics-adapter _build_metrics_adapter_now "$src" "$bin" "$stamp"
    fi
    export CHATCLUSTER_METRICS_ADAPTER="$bin/metrics-adapter"
}
build_metrics_adapter
