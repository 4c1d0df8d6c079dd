# shellcheck shell=bash
# Shared helpers for hack/*.sh. Source it; do not run it.
#
# Everything heavy (Go-built control plane and tools) is cached by version under
# $CHATCLUSTER_CACHE (default ~/.cache/chatcluster), outside the checkout, so that a
# second run of `make test` or `make run` is fast and a fresh clone reuses it.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT
export CHATCLUSTER_CACHE="${CHATCLUSTER_CACHE:-$HOME/.cache/chatcluster}"
# Where cargo puts binaries (honours CARGO_TARGET_DIR, as cargo does).
export TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
mkdir -p "$CHATCLUSTER_CACHE"

# Each step with the time since the script started, so that a slow step shows in the log.
log() { printf '==> [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

_APT_UPDATED=0
# apt_install PKG...: install the Debian packages that are missing; safe to run twice. With
# APT_TARGET_RELEASE set (e.g. bookworm-backports), from that release.
apt_install() {
    local missing=()
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if [ "$_APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        $sudo apt-get update -qq >&2
        _APT_UPDATED=1
    fi
    log "apt-get install ${missing[*]}"
    local release=()
    [ -n "${APT_TARGET_RELEASE:-}" ] && release=(-t "$APT_TARGET_RELEASE")
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${release[@]}" "${missing[@]}" >&2
}

# Cached builds (the Go-built tools) run either at once (the default: `make run`, a shell that
# sources hack/setup.sh) or, with CHATCLUSTER_BUILD_JOBS=background (what `make test` sets), as
# background jobs that overlap each other and the cargo builds that follow; wait_build_jobs then
# waits for them. Even on 2 cores this pays on a cold machine: module downloads and single-threaded
# links leave a core idle most of the time when the builds run one after another.
_BUILD_PIDS=()
_BUILD_NAMES=()
# build_job NAME COMMAND...: runs COMMAND now, or in the background (output in
# $CHATCLUSTER_CACHE/logs/build-NAME.log).
build_job() {
    local name="$1"
    shift
    if [ "${CHATCLUSTER_BUILD_JOBS:-}" != background ]; then
        "$@"
        return
    fi
    local log_file="$CHATCLUSTER_CACHE/logs/build-$name.log"
    mkdir -p "$CHATCLUSTER_CACHE/logs"
    log "building $name in the background (log: $log_file)"
    ("$@") >"$log_file" 2>&1 &
    _BUILD_PIDS+=("$!")
    _BUILD_NAMES+=("$name")
}

# stop_build_jobs: stops the background builds still running (when the script fails early).
stop_build_jobs() {
    local pid
    for pid in "${_BUILD_PIDS[@]}"; do
        pkill -TERM -P "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
    done
}

# wait_build_jobs: waits for every background build; dies naming (and showing the end of the log
# of) each one that failed.
wait_build_jobs() {
    [ ${#_BUILD_PIDS[@]} -gt 0 ] || return 0
    log "waiting for the background builds: ${_BUILD_NAMES[*]}"
    local i name failed=()
    for i in "${!_BUILD_PIDS[@]}"; do
        name="${_BUILD_NAMES[$i]}"
        if wait "${_BUILD_PIDS[$i]}"; then
            grep -h '^==> .*built ' "$CHATCLUSTER_CACHE/logs/build-$name.log" >&2 || true
        else
            failed+=("$name")
            tail -n 30 "$CHATCLUSTER_CACHE/logs/build-$name.log" >&2
        fi
    done
    _BUILD_PIDS=()
    _BUILD_NAMES=()
    [ ${#failed[@]} -eq 0 ] || die "background build(s) failed: ${failed[*]} (logs in $CHATCLUSTER_CACHE/logs)"
}

# go_install_cached NAME VERSION PKG: `go install PKG@VERSION` into the cache, once per version.
# Prints the directory holding the binary.
go_install_cached() {
    local name="$1" version="$2" pkg="$3"
    local dir="$CHATCLUSTER_CACHE/$name-$version/bin"
    if [ ! -x "$dir/$name" ]; then
        log "building $name $version from Go modules (cached in $dir)"
        mkdir -p "$dir"
        GOBIN="$dir" GOFLAGS=-mod=mod go install "$pkg@$version" >&2
    fi
    printf '%s\n' "$dir"
}

# go_build_local NAME SRC BIN: `go build` the Go module in SRC (a program of this repository,
# e.g. tests/tools/kstatus) into BIN/NAME, once per content of its go.mod, go.sum and *.go
# (the stamp in BIN/.stamp), as a build job (see build_job).
_go_build_local_now() {
    local name="$1" src="$2" bin="$3" stamp="$4"
    command -v go >/dev/null 2>&1 || die "Go is needed to build $name"
    log "building $name from Go modules into $bin"
    mkdir -p "$bin"
    (cd "$src" && CGO_ENABLED=0 go build -mod=readonly -trimpath -o "$bin/$name.tmp" .) >&2
    mv "$bin/$name.tmp" "$bin/$name"
    printf '%s\n' "$stamp" >"$bin/.stamp"
    log "built $name"
}

go_build_local() {
    local name="$1" src="$2" bin="$3"
    local stamp
    stamp="$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go | sha256sum | cut -c1-16)"
    if [ ! -x "$bin/$name" ] || [ "$(cat "$bin/.stamp" 2>/dev/null)" != "$stamp" ]; then
        build_job "$name" _go_build_local_now "$name" "$src" "$bin" "$stamp"
    fi
}

# The static (musl) release binaries the chat-node and chat-operator images carry (their
# Dockerfiles COPY them; the test harness builds the images offline from them). musl-gcc
# compiles the C parts (ring). Incremental: fast when nothing changed. Kept equal to
# BUILD_COMMAND in tests/harness/src/node/images.rs (which refuses binaries older than their sources).
build_image_binaries() {
    log "cargo build --release --target x86_64-unknown-linux-musl -p chat-node -p chat-operator (the images' binaries)"
    CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked \
        --target x86_64-unknown-linux-musl -p chat-node -p chat-operator >&2
}
