# shellcheck shell=bash
# Helm 3 and Helm 4, each built from its Go module once per version into
# $CHATCLUSTER_CACHE/helm-<version>/bin. Exports CHATCLUSTER_HELM (Helm 3: every chart test)
# and CHATCLUSTER_HELM4 (Helm 4: the chart's lifecycle runs with it too). Cold build: a few
# minutes each on 2 cores.
CHATCLUSTER_HELM_VERSION="${CHATCLUSTER_HELM_VERSION:-v3.21.4}"
CHATCLUSTER_HELM4_VERSION="${CHATCLUSTER_HELM4_VERSION:-v4.3.2}"

# _build_helm_version VERSION: the build itself (see build_job in hack/lib.sh). The same
# version stamps as upstream's Makefiles: helm's own version and, for Helm 3, the default
# Kubernetes version of `helm template`/`helm lint` (its client-go v0.N -> 1.N; Helm 4 reads
# it from its build information).
_build_helm_version() {
    local version="$1"
    local major="${version%%.*}"
    local bin="$CHATCLUSTER_CACHE/helm-$version/bin"
    command -v go >/dev/null 2>&1 || die "Go is needed to build helm"
    log "building helm $version from Go modules into $bin"
    mkdir -p "$bin"
    local module="helm.sh/helm/$major"
    local ldflags="-s -w -X $module/internal/version.version=$version"
    ldflags+=" -X $module/internal/version.gitTreeState=clean"
    if [ "$major" = v3 ]; then
        local client_go_minor=36 pkg
        for pkg in pkg/lint/rules pkg/chartutil; do
            ldflags+=" -X $module/$pkg.k8sVersionMajor=1 -X $module/$pkg.k8sVersionMinor=$client_go_minor"
        done
    else
        ldflags+=" -X $module/internal/version.metadata="
    fi
    local start=$SECONDS
    GOBIN="$bin" GOFLAGS=-mod=mod CGO_ENABLED=0 \
        go install -trimpath -ldflags="$ldflags" "$module/cmd/helm@$version" >&2
    log "built helm $version in $((SECONDS - start)) s"
}
_build_helm_now() { _build_helm_version "$CHATCLUSTER_HELM_VERSION"; }
_build_helm4_now() { _build_helm_version "$CHATCLUSTER_HELM4_VERSION"; }

build_helm() {
    local bin="$CHATCLUSTER_CACHE/helm-$CHATCLUSTER_HELM_VERSION/bin"
    if [ ! -x "$bin/helm" ]; then
        build_job helm _build_helm_now
    fi
    export CHATCLUSTER_HELM="$bin/helm"
    local bin4="$CHATCLUSTER_CACHE/helm-$CHATCLUSTER_HELM4_VERSION/bin"
    if [ ! -x "$bin4/helm" ]; then
        build_job helm4 _build_helm4_now
    fi
    export CHATCLUSTER_HELM4="$bin4/helm"
}
build_helm
