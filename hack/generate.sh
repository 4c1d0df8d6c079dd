#!/usr/bin/env bash
# Regenerates every committed generated file. Tests fail when these are stale.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
for gen in "$REPO_ROOT"/hack/generate.d/*.sh; do
    [ -e "$gen" ] || continue
    log "generate $(basename "$gen")"
    bash "$gen"
done
