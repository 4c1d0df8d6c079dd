# shellcheck shell=bash
# Centrifugo, the second peer of the benchmark (docs/benchmarks.md), built from its Go module
# once per version into $CHATCLUSTER_CACHE/centrifugo-<version>/bin, the way its releases are
# built (.goreleaser.yml: CGO_ENABLED=0, -s -w, the version stamped; no usage-stats endpoint is
# stamped in, so the binary has nowhere to send them even if the config did not turn them off).
# Sourced (after hack/lib.sh) by bench/prepare.sh and by hack/test.sh, where the build runs in
# the background (build_job). Exports BENCH_CENTRIFUGO. Cold build: ~3 min on 2 cores.
CHATCLUSTER_CENTRIFUGO_VERSION="${CHATCLUSTER_CENTRIFUGO_VERSION:-v6.9.1}"

# _build_centrifugo_now: the build itself (see build_job in hack/lib.sh).
_build_centrifugo_now() {
    local version="$CHATCLUSTER_CENTRIFUGO_VERSION"
    local bin="$CHATCLUSTER_CACHE/centrifugo-$version/bin"
    command -v go >/dev/null 2>&1 || die "Go is needed to build Centrifugo"
    log "building centrifugo $version from Go modules into $bin"
    mkdir -p "$bin"
    local start=$SECONDS
    GOBIN="$bin" GOFLAGS=-mod=mod CGO_ENABLED=0 go install \
        -ldflags="-s -w -X github.com/centrifugal/centrifugo/v6/internal/build.Version=${version#v}" \
        "github.com/centrifugal/centrifugo/v6@$version" >&2
    log "built centrifugo in $((SECONDS - start)) s"
}

build_centrifugo() {
    local bin="$CHATCLUSTER_CACHE/centrifugo-$CHATCLUSTER_CENTRIFUGO_VERSION/bin"
    if [ ! -x "$bin/centrifugo" ]; then
        build_job centrifugo _build_centrifugo_now
    fi
    export BENCH_CENTRIFUGO="$bin/centrifugo"
}
