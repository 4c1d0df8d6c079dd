# shellcheck shell=bash
# The real node the end-to-end tests and `make run` start (see docs/testing.md, "The real node"):
#   - Debian: runc, the CNI plugins (bridge, host-local, loopback, portmap), iptables, conntrack,
#     nftables (to snapshot and restore the host's ruleset), iproute2, util-linux (flock), dig
#     (the tests ask the cluster DNS);
#   - containerd v2.4.2 + ctr + containerd-shim-runc-v2, built from Go modules once per version;
#   - CoreDNS v1.15.0 (cluster DNS), built from Go modules once per version;
#   - Traefik v3.6.12 (the ingress controller), built from its module once per version (its
#     go.mod has replace directives, so `go install` refuses it: it is built inside a copy of
#     the downloaded module);
#   - the Gateway API CRDs of the release Traefik v3.6.12 implements (v1.4.0), from the
#     sigs.k8s.io/gateway-api module;
#   - the musl target of Rust and musl-gcc, for the static chat-node / chat-operator binaries of
#     the images.
# kubelet and kube-proxy are part of the control plane's multi-call binary (20-controlplane.sh).
# Exports CHATCLUSTER_CONTAINERD_BIN, CHATCLUSTER_COREDNS, CHATCLUSTER_TRAEFIK and
# CHATCLUSTER_GATEWAY_API_CRDS.
CHATCLUSTER_CONTAINERD_VERSION="${CHATCLUSTER_CONTAINERD_VERSION:-v2.4.2}"
CHATCLUSTER_COREDNS_VERSION="${CHATCLUSTER_COREDNS_VERSION:-v1.15.0}"
CHATCLUSTER_TRAEFIK_VERSION="${CHATCLUSTER_TRAEFIK_VERSION:-v3.6.12}"
CHATCLUSTER_GATEWAY_API_VERSION="${CHATCLUSTER_GATEWAY_API_VERSION:-v1.4.0}"

node_debian_packages() {
    local need=()
    command -v runc >/dev/null 2>&1 || need+=(runc)
    [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
    command -v iptables >/dev/null 2>&1 || need+=(iptables)
    command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
    command -v nft >/dev/null 2>&1 || need+=(nftables)
    command -v ip >/dev/null 2>&1 || need+=(iproute2)
    command -v flock >/dev/null 2>&1 || need+=(util-linux)
    command -v dig >/dev/null 2>&1 || need+=(bind9-dnsutils)
    command -v musl-gcc >/dev/null 2>&1 || need+=(musl-tools)
    [ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
    [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
    if command -v rustup >/dev/null 2>&1; then
        rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl \
            || rustup target add x86_64-unknown-linux-musl >&2
    fi
}

# _build_containerd_now: the build itself (see build_job in hack/lib.sh).
_build_containerd_now() {
    local version="$CHATCLUSTER_CONTAINERD_VERSION"
    local bin="$CHATCLUSTER_CACHE/containerd-$version/bin"
    command -v go >/dev/null 2>&1 || die "Go is needed to build containerd"
    log "building containerd $version from Go modules into $bin (cold: ~1.5 min)"
    mkdir -p "$bin"
    local start=$SECONDS
    GOBIN="$bin" GOFLAGS=-mod=mod CGO_ENABLED=0 go install -trimpath -ldflags="-s -w" \
        -tags "no_btrfs no_devmapper no_zfs" \
        "github.com/containerd/containerd/v2/cmd/containerd@$version" \
        "github.com/containerd/containerd/v2/cmd/ctr@$version" \
        "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$version" >&2
    log "built containerd in $((SECONDS - start)) s"
}

build_containerd() {
    local version="$CHATCLUSTER_CONTAINERD_VERSION"
    local bin="$CHATCLUSTER_CACHE/containerd-$version/bin"
    if [ ! -x "$bin/containerd" ] || [ ! -x "$bin/ctr" ] || [ ! -x "$bin/containerd-shim-runc-v2" ]; then
        build_job containerd _build_containerd_now
    fi
    export CHATCLUSTER_CONTAINERD_BIN="$bin"
}

# _build_coredns_now: the build itself (see build_job in hack/lib.sh).
_build_coredns_now() {
    local version="$CHATCLUSTER_COREDNS_VERSION"
    local bin="$CHATCLUSTER_CACHE/coredns-$version/bin"
    command -v go >/dev/null 2>&1 || die "Go is needed to build CoreDNS"
    log "building CoreDNS $version from Go modules into $bin (cold: ~2 min)"
    mkdir -p "$bin"
    local start=$SECONDS
    GOBIN="$bin" GOFLAGS=-mod=mod CGO_ENABLED=0 go install -trimpath -ldflags="-s -w" \
        "github.com/coredns/coredns@$version" >&2
    log "built CoreDNS in $((SECONDS - start)) s"
}

build_coredns() {
    local version="$CHATCLUSTER_COREDNS_VERSION"
    local bin="$CHATCLUSTER_CACHE/coredns-$version/bin"
    if [ ! -x "$bin/coredns" ]; then
        build_job coredns _build_coredns_now
    fi
    export CHATCLUSTER_COREDNS="$bin/coredns"
}

# go mod download -json MODULE@VERSION: prints the field $3 (Dir or Zip) of the downloaded module.
go_module_path() {
    (GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download -json "$1@$2" 2>/dev/null || true) |
        sed -n "s/^[[:space:]]*\"$3\": \"\(.*\)\",\{0,1\}\$/\1/p"
}

# _build_traefik_now: the build itself (see build_job in hack/lib.sh).
_build_traefik_now() {
    local version="$CHATCLUSTER_TRAEFIK_VERSION"
    local bin="$CHATCLUSTER_CACHE/traefik-$version/bin"
    command -v go >/dev/null 2>&1 || die "Go is needed to build Traefik"
    log "building Traefik $version from its Go module into $bin (cold: ~5 min)"
    local module
    module="$(go_module_path github.com/traefik/traefik/v3 "$version" Dir)"
    [ -d "$module" ] || die "could not download the Go module github.com/traefik/traefik/v3@$version"
    local src="$CHATCLUSTER_CACHE/traefik-$version/src"
    rm -rf "$src"
    mkdir -p "$src" "$bin"
    cp -r "$module/." "$src/"
    chmod -R u+w "$src"
    local start=$SECONDS
    (cd "$src" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath \
        -ldflags="-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$version" \
        -o "$bin/traefik.tmp" ./cmd/traefik) >&2
    mv "$bin/traefik.tmp" "$bin/traefik"
    rm -rf "$src"
    log "built Traefik in $((SECONDS - start)) s"
}

build_traefik() {
    local version="$CHATCLUSTER_TRAEFIK_VERSION"
    local bin="$CHATCLUSTER_CACHE/traefik-$version/bin"
    if [ ! -x "$bin/traefik" ]; then
        build_job traefik _build_traefik_now
    fi
    export CHATCLUSTER_TRAEFIK="$bin/traefik"
}

gateway_api_crds() {
    local version="$CHATCLUSTER_GATEWAY_API_VERSION"
    local dir="$CHATCLUSTER_CACHE/gateway-api-$version"
    if [ ! -f "$dir/.done" ]; then
        command -v go >/dev/null 2>&1 || die "Go is needed to fetch the Gateway API CRDs"
        command -v unzip >/dev/null 2>&1 || apt_install unzip
        log "fetching the Gateway API $version CRDs (standard channel) from sigs.k8s.io/gateway-api"
        local zip
        zip="$(go_module_path sigs.k8s.io/gateway-api "$version" Zip)"
        [ -f "$zip" ] || die "could not download the Go module sigs.k8s.io/gateway-api@$version"
        rm -rf "$dir"
        mkdir -p "$dir"
        unzip -q -j "$zip" "sigs.k8s.io/gateway-api@$version/config/crd/standard/*.yaml" -d "$dir"
        ls "$dir"/gateway.networking.k8s.io_httproutes.yaml >/dev/null || die "no HTTPRoute CRD in gateway-api $version"
        touch "$dir/.done"
    fi
    export CHATCLUSTER_GATEWAY_API_CRDS="$dir"
}

node_debian_packages
build_containerd
build_coredns
build_traefik
gateway_api_crds
