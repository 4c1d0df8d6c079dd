# shellcheck shell=bash
# The OpenTelemetry Collector used to validate and run collector configs in tests, built with
# the Collector Builder from tests/tools/otelcol/builder-config.yaml, once per builder version
# and config, into $CHATCLUSTER_CACHE/otelcol-<version>/bin/otelcol. Exports CHATCLUSTER_OTELCOL.
CHATCLUSTER_OTELCOL_VERSION="${CHATCLUSTER_OTELCOL_VERSION:-v0.165.0}"

# _build_otelcol_now: the build itself (see build_job in hack/lib.sh).
_build_otelcol_now() {
    local version="$CHATCLUSTER_OTELCOL_VERSION"
    local config="$REPO_ROOT/tests/tools/otelcol/builder-config.yaml"
    local root="$CHATCLUSTER_CACHE/otelcol-$version"
    local stamp
    stamp="$(sha256sum "$config" | cut -c1-16)"
    command -v go >/dev/null 2>&1 || die "Go is needed to build the OpenTelemetry Collector"
    local builder_dir
    builder_dir="$(go_install_cached builder "$version" go.opentelemetry.io/collector/cmd/builder)"
    log "building the OpenTelemetry Collector $version (ocb) into $root/bin"
    mkdir -p "$root/bin"
    local start=$SECONDS
    rm -rf "$root/src"
    GOFLAGS=-mod=mod CGO_ENABLED=0 "$builder_dir/builder" \
        --config="$config" --output-path="$root/src" >&2
    mv "$root/src/otelcol" "$root/bin/otelcol"
    printf '%s\n' "$stamp" >"$root/bin/.stamp"
    log "built the OpenTelemetry Collector in $((SECONDS - start)) s"
}

build_otelcol() {
    local version="$CHATCLUSTER_OTELCOL_VERSION"
    local config="$REPO_ROOT/tests/tools/otelcol/builder-config.yaml"
    local root="$CHATCLUSTER_CACHE/otelcol-$version"
    local stamp
    stamp="$(sha256sum "$config" | cut -c1-16)"
    if [ ! -x "$root/bin/otelcol" ] || [ "$(cat "$root/bin/.stamp" 2>/dev/null)" != "$stamp" ]; then
        build_job otelcol _build_otelcol_now
    fi
    export CHATCLUSTER_OTELCOL="$root/bin/otelcol"
}
build_otelcol
