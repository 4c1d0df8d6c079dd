# shellcheck shell=bash
# Helm 3, built from its Go module once per version into $CHATCLUSTER_CACHE/helm-<version>/bin.
# Exports CHATCLUSTER_HELM. Cold build: a few minutes on 2 cores.
CHATCLUSTER_HELM_VERSION="${CHATCLUSTER_HELM_VERSION:-v3.22.0}"

# _build_helm_now: the build itself (see build_job in hack/lib.sh).
_build_helm_now() {
    local version="$CHATCLUSTER_HELM_VERSION"
    local bin="$CHATCLUSTER_CACHE/helm-$version/bin"
    command -v go >/dev/null 2>&1 || die "Go is needed to build helm"
    log "building helm $version from Go modules into $bin"
    mkdir -p "$bin"
    # The same version stamps as upstream's Makefile: helm's own version, and the default
    # Kubernetes version of `helm template`/`helm lint` (client-go v0.N -> 1.N).
    local client_go_minor=37
    local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
    ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    local pkg
    for pkg in pkg/lint/rules pkg/chartutil; do
        ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$client_go_minor"
    done
    local start=$SECONDS
    GOBIN="$bin" GOFLAGS=-mod=mod CGO_ENABLED=0 \
        go install -trimpath -ldflags="$ldflags" "helm.sh/helm/v3/cmd/helm@$version" >&2
    log "built helm in $((SECONDS - start)) s"
}

build_helm() {
    local version="$CHATCLUSTER_HELM_VERSION"
    local bin="$CHATCLUSTER_CACHE/helm-$version/bin"
    if [ ! -x "$bin/helm" ]; then
        build_job helm _build_helm_now
    fi
    export CHATCLUSTER_HELM="$bin/helm"
}
build_helm
