#!/usr/bin/env bash
# The main job: until the sandbox lands, run one chat-node with the embedded broker.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=/dev/null
source "$REPO_ROOT/hack/setup.sh"
cd "$REPO_ROOT"
exec cargo run --release -p chat-node -- "$@"
