# shellcheck shell=bash
# prometheus-operator (the operator kube-prometheus-stack runs) and all of its CRDs, for the test
# that checks which of our monitoring objects a Prometheus and an Alertmanager configured with
# kube-prometheus-stack's default selectors really pick up. Built from its Go module, once per
# version: its go.mod points two nested modules (pkg/apis/monitoring, pkg/client) at local
# folders that the module zip does not contain, so the module is copied and those replace lines
# are swapped for the released nested modules of the same version. Cached outside the checkout:
#   $CHATCLUSTER_CACHE/prometheus-operator-v0.93.0/bin/prometheus-operator
#   $CHATCLUSTER_CACHE/prometheus-operator-v0.93.0/crds/*.yaml
# Exports CHATCLUSTER_PROMETHEUS_OPERATOR (the binary) and CHATCLUSTER_PROMETHEUS_OPERATOR_CRDS.
CHATCLUSTER_PROMETHEUS_OPERATOR_VERSION=v0.93.0 # kept equal to operator/tests/fixtures/crds

_build_prometheus_operator_now() {
    local root="$1"
    local version="$CHATCLUSTER_PROMETHEUS_OPERATOR_VERSION"
    local module=github.com/prometheus-operator/prometheus-operator
    command -v go >/dev/null 2>&1 || die "Go is needed to build prometheus-operator"
    command -v unzip >/dev/null 2>&1 || apt_install unzip
    log "building prometheus-operator $version from Go modules into $root"
    local zip
    zip="$( (GOFLAGS=-mod=mod go mod download -json "$module@$version" 2>/dev/null || true) |
        sed -n 's/^[[:space:]]*"Zip": "\(.*\)",\{0,1\}$/\1/p')"
    [ -f "$zip" ] || die "could not download the Go module $module@$version"
    rm -rf "$root/src" "$root/crds"
    mkdir -p "$root/src" "$root/crds" "$root/bin"
    unzip -q "$zip" -d "$root/src"
    local src="$root/src/$module@$version"
    chmod -R u+w "$src"
    cp "$src"/example/prometheus-operator-crd/*.yaml "$root/crds/"
    local start=$SECONDS
    (
        cd "$src"
        go mod edit \
            -dropreplace="$module/pkg/apis/monitoring" -dropreplace="$module/pkg/client" \
            -require="$module/pkg/apis/monitoring@$version" -require="$module/pkg/client@$version"
        GOFLAGS=-mod=mod go mod tidy >&2
        CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o "$root/bin/prometheus-operator.tmp" ./cmd/operator
    ) >&2
    mv "$root/bin/prometheus-operator.tmp" "$root/bin/prometheus-operator"
    rm -rf "$root/src"
    log "built prometheus-operator in $((SECONDS - start)) s"
}

build_prometheus_operator() {
    local root="$CHATCLUSTER_CACHE/prometheus-operator-$CHATCLUSTER_PROMETHEUS_OPERATOR_VERSION"
    if [ ! -x "$root/bin/prometheus-operator" ]; then
        build_job prometheus-operator _build_prometheus_operator_now "$root"
    fi
    export CHATCLUSTER_PROMETHEUS_OPERATOR="$root/bin/prometheus-operator"
    export CHATCLUSTER_PROMETHEUS_OPERATOR_CRDS="$root/crds"
}
build_prometheus_operator
