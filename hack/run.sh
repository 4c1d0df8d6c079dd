#!/usr/bin/env bash
# `make run`: the sandbox, in real pods. Starts the test harness's real node (control plane,
# containerd + runc, kubelet, kube-proxy, CoreDNS, Traefik on 127.0.0.1:80), builds the images
# from this repository, installs the operator with its Helm chart, applies examples/basic.yaml and
# prints the demo page URL and the KUBECONFIG to use; Ctrl-C tears the node down and leaves the
# host as it was. Needs root (containers, mounts, iptables). Flags go straight to chat-sandbox:
#   hack/run.sh --port 8000 --example examples/basic.yaml     (see --help, docs/sandbox.md)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=/dev/null
source "$REPO_ROOT/hack/setup.sh"
cd "$REPO_ROOT"
[ "$(id -u)" -eq 0 ] || die "make run starts a real Kubernetes node (containers, mounts, iptables): run it as root"
build_image_binaries
log "building chat-sandbox"
cargo build --locked -p chat-sandbox >&2
PATH="${CHATCLUSTER_KUBE_BIN:+$CHATCLUSTER_KUBE_BIN:}$PATH" exec "$TARGET_DIR"/debug/chat-sandbox "$@"
