# shellcheck shell=bash
# kstatus-check (tests/tools/kstatus): a tiny Go program around the kstatus library
# (sigs.k8s.io/cli-utils/pkg/kstatus/status, what Flux's health checks and Helm 4's --wait use), so
# the tests ask the real library whether a ChatCluster is Current, InProgress or Failed. Built from
# Go modules once per go.sum, cached outside the checkout:
#   $CHATCLUSTER_CACHE/kstatus-cli-utils-v0.37.2/bin/kstatus-check
# Exports CHATCLUSTER_KSTATUS (the binary).
CHATCLUSTER_KSTATUS_VERSION=v0.37.2 # sigs.k8s.io/cli-utils, kept equal to tests/tools/kstatus/go.mod

_build_kstatus_now() {
    local src="$1" bin="$2" stamp="$3"
    command -v go >/dev/null 2>&1 || die "Go is needed to build kstatus-check"
    log "building kstatus-check (cli-utils $CHATCLUSTER_KSTATUS_VERSION) from Go modules into $bin"
    mkdir -p "$bin"
    (cd "$src" && CGO_ENABLED=0 go build -mod=readonly -trimpath -o "$bin/kstatus-check.tmp" .) >&2
    mv "$bin/kstatus-check.tmp" "$bin/kstatus-check"
    printf '%s\n' "$stamp" >"$bin/.stamp"
    log "built kstatus-check"
}

build_kstatus() {
    local src="$REPO_ROOT/tests/tools/kstatus"
    local bin="$CHATCLUSTER_CACHE/kstatus-cli-utils-$CHATCLUSTER_KSTATUS_VERSION/bin"
    local stamp
    stamp="$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go | sha256sum | cut -c1-16)"
    if [ ! -x "$bin/kstatus-check" ] || [ "$(cat "$bin/.stamp" 2>/dev/null)" != "$stamp" ]; then
        build_job kstatus _build_kstatus_now "$src" "$bin" "$stamp"
    fi
    export CHATCLUSTER_KSTATUS="$bin/kstatus-check"
}
build_kstatus
