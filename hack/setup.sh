#!/usr/bin/env bash
# Installs and builds everything the tests and the sandbox need. Safe to run twice.
# Each step lives in hack/setup.d/NN-name.sh and is *sourced* in order, so a step can
# export the paths it built (e.g. CHATCLUSTER_KUBE_BIN) for the commands that follow.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for step in "$REPO_ROOT"/hack/setup.d/*.sh; do
    [ -e "$step" ] || continue
    # shellcheck source=/dev/null
    source "$step"
done
