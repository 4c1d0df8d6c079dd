#!/usr/bin/env bash
# `make images`: the container images of this repository, built offline from their Dockerfiles
# (FROM scratch + COPY of prebuilt static binaries) exactly as the test node builds them:
# target/images/<name>-<tag>.oci.tar (OCI archives: `skopeo copy oci-archive:...`,
# `ctr images import`, `podman load`) and target/images/context/<name>/ (Dockerfile + build
# context, for `docker build target/images/context/chat-node`).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=/dev/null
source "$REPO_ROOT/hack/setup.sh"
cd "$REPO_ROOT"
build_image_binaries
cargo build --locked -p test-harness --bin chatcluster-images >&2
"$TARGET_DIR"/debug/chatcluster-images "${1:-$TARGET_DIR/images}"
