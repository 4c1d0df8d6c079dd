#!/usr/bin/env bash
# Regenerates the operator's committed files from the code: the ChatCluster CRD and the
# operator's ClusterRole. operator/tests/generated_files.rs fails when they are stale.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$REPO_ROOT"
cargo build -q -p chat-operator --bin chat-operator
mkdir -p crds config/rbac
"$TARGET_DIR"/debug/chat-operator crd > crds/chatclusters.realtime.dev.yaml
"$TARGET_DIR"/debug/chat-operator rbac > config/rbac/clusterrole.yaml
log "wrote crds/chatclusters.realtime.dev.yaml and config/rbac/clusterrole.yaml"
