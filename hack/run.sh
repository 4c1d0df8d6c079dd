#!/usr/bin/env bash
# `make run`: the sandbox. Starts the real test control plane (etcd + kube-apiserver +
# controllers), installs the CRD, runs chat-operator against it, applies examples/basic.yaml and
# runs the operator's pods (chat-nodes, managed Redis) as local processes behind nginx, which is
# configured from the operator's Ingress. Prints the demo page URL and the KUBECONFIG to use;
# Ctrl-C stops everything. Flags: `make run ARGS=...` is not needed, pass them directly:
#   hack/run.sh --port 8000 --example examples/basic.yaml     (see --help, docs/sandbox.md)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=/dev/null
source "$REPO_ROOT/hack/setup.sh"
cd "$REPO_ROOT"
log "building chat-node, chat-operator and chat-sandbox"
cargo build -p chat-node -p chat-operator -p chat-sandbox >&2
PATH="${CHATCLUSTER_KUBE_BIN:+$CHATCLUSTER_KUBE_BIN:}$PATH" exec "$TARGET_DIR"/debug/chat-sandbox "$@"
