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
# apt_install PKG...: install the Debian packages that are missing; safe to run twice.
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
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
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

# The static (musl) release binaries the chat-node and chat-operator images carry (their
# Dockerfiles COPY them; the test harness builds the images offline from them). musl-gcc
# compiles the C parts (ring). Incremental: fast when nothing changed. Kept equal to
# BUILD_COMMAND in tests/harness/src/node/images.rs (which refuses binaries older than their sources).
build_image_binaries() {
    log "cargo build --release --target x86_64-unknown-linux-musl -p chat-node -p chat-operator (the images' binaries)"
    CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked \
        --target x86_64-unknown-linux-musl -p chat-node -p chat-operator >&2
}
