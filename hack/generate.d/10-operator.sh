#!/usr/bin/env bash
# Regenerates the operator's committed files from the code: the ChatCluster CRD and the
# operator's ClusterRole and the ValidatingAdmissionPolicy the chart ships.
# operator/tests/generated_files.rs fails when they are stale.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$REPO_ROOT"
cargo build -q -p chat-operator --bin chat-operator
mkdir -p crds config/rbac config/admission
"$TARGET_DIR"/debug/chat-operator crd > crds/chatclusters.realtime.dev.yaml
"$TARGET_DIR"/debug/chat-operator rbac > config/rbac/clusterrole.yaml
"$TARGET_DIR"/debug/chat-operator admission-policy > config/admission/validatingadmissionpolicy.yaml
log "wrote crds/chatclusters.realtime.dev.yaml, config/rbac/clusterrole.yaml and config/admission/validatingadmissionpolicy.yaml"
