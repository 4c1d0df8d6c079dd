# shellcheck shell=bash
# grpcurl, the gRPC client other than the project's own that drives chat-node's gRPC server API
# in chat-node/tests/grpcurl.rs (one call per streaming mode, through server reflection alone).
# Built from Go modules once per version into $CHATCLUSTER_CACHE/grpcurl-<version>/bin (about
# two minutes cold on 2 cores). Exports CHATCLUSTER_GRPCURL.
CHATCLUSTER_GRPCURL_VERSION="${CHATCLUSTER_GRPCURL_VERSION:-v1.9.3}"

# _build_grpcurl_now: the build itself (see build_job in hack/lib.sh).
_build_grpcurl_now() {
    local version="$CHATCLUSTER_GRPCURL_VERSION"
    local bin="$CHATCLUSTER_CACHE/grpcurl-$version/bin"
    command -v go >/dev/null 2>&1 || die "Go is needed to build grpcurl"
    log "building grpcurl $version from Go modules into $bin"
    mkdir -p "$bin"
    local start=$SECONDS
    GOBIN="$bin" GOFLAGS=-mod=mod CGO_ENABLED=0 \
        go install -trimpath "github.com/fullstorydev/grpcurl/cmd/grpcurl@$version" >&2
    log "built grpcurl in $((SECONDS - start)) s"
}

build_grpcurl() {
    local bin="$CHATCLUSTER_CACHE/grpcurl-$CHATCLUSTER_GRPCURL_VERSION/bin"
    if [ ! -x "$bin/grpcurl" ]; then
        build_job grpcurl _build_grpcurl_now
    fi
    export CHATCLUSTER_GRPCURL="$bin/grpcurl"
}
build_grpcurl
