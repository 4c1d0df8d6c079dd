# shellcheck shell=bash
# The test control plane and node: kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy, kubectl and an
# embedded etcd of one Kubernetes release, built from Go modules (tests/controlplane) into one
# multi-call binary, once per version (and per go.sum), cached outside the checkout:
#   $CHATCLUSTER_CACHE/kube-v1.36.3/bin/{chatcluster-kube,kube-apiserver,etcd,kubectl,...}
# Exports CHATCLUSTER_KUBE_BIN (the bin directory). The cold build takes 5 min on an idle 2-core machine, up to 45 on a busy one.
CHATCLUSTER_KUBE_VERSION="${CHATCLUSTER_KUBE_VERSION:-v1.36.3}"
export CHATCLUSTER_KUBE_VERSION

# _build_controlplane_now SRC BIN STAMP: the build itself (see build_job in hack/lib.sh).
_build_controlplane_now() {
    local src="$1" bin="$2" stamp="$3"
    command -v go >/dev/null 2>&1 || die "Go is needed to build the test control plane (apt-get install golang-go or https://go.dev/dl)"
    log "building the Kubernetes $CHATCLUSTER_KUBE_VERSION control plane from Go modules into $bin (cold: 5 min on 2 idle cores, up to 45 on busy ones)"
    mkdir -p "$bin"
    local minor="${CHATCLUSTER_KUBE_VERSION#v1.}"
    minor="${minor%%.*}"
    local ldflags="-s -w"
    ldflags+=" -X k8s.io/component-base/version.gitVersion=$CHATCLUSTER_KUBE_VERSION"
    ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
    ldflags+=" -X k8s.io/component-base/version.gitMinor=$minor"
    ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
    ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$CHATCLUSTER_KUBE_VERSION"
    ldflags+=" -X k8s.io/client-go/pkg/version.gitMajor=1"
    ldflags+=" -X k8s.io/client-go/pkg/version.gitMinor=$minor"
    local start=$SECONDS
    (cd "$src" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags="$ldflags" \
        -o "$bin/chatcluster-kube.tmp" .) >&2
    mv "$bin/chatcluster-kube.tmp" "$bin/chatcluster-kube"
    local name
    for name in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd; do
        ln -sf chatcluster-kube "$bin/$name"
    done
    printf '%s\n' "$stamp" >"$bin/.stamp"
    log "built the control plane in $((SECONDS - start)) s"
}

build_controlplane() {
    local src="$REPO_ROOT/tests/controlplane"
    local bin="$CHATCLUSTER_CACHE/kube-$CHATCLUSTER_KUBE_VERSION/bin"
    # The go.sum digest is part of the stamp, so a change of the module graph rebuilds.
    local stamp
    stamp="$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go | sha256sum | cut -c1-16)"
    if [ -x "$bin/chatcluster-kube" ] && [ "$(cat "$bin/.stamp" 2>/dev/null)" = "$stamp" ]; then
        export CHATCLUSTER_KUBE_BIN="$bin"
        return 0
    fi
    build_job controlplane _build_controlplane_now "$src" "$bin" "$stamp"
    export CHATCLUSTER_KUBE_BIN="$bin"
}
build_controlplane
