#!/usr/bin/env bash
# The demo page in headless Chromium through a proxy that buffers responses (a real nginx on a
# loopback port, in front of a local chat-node on the embedded broker): WebSocket and SSE both
# fail through it, and the page must still chat over long-polling (tests/browser/local). Needs
# hack/setup.d/70-browser.sh (chromium, node, playwright-core) and 71-nginx.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$REPO_ROOT"
[ -d tests/browser/node_modules/playwright-core ] ||
    die "tests/browser/node_modules is missing: hack/setup.sh runs npm ci there"
# The whole workspace, as hack/test.sh builds it (a subset of packages unifies the dependencies'
# features differently and would rebuild part of them); the binary embeds the demo page and the
# JS client, so it must be fresh.
cargo build --workspace --locked --bins
export CHATCLUSTER_CHAT_NODE="$TARGET_DIR/debug/chat-node"
export CHATCLUSTER_NGINX="${CHATCLUSTER_NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}"
cd tests/browser
node --test --test-concurrency=1 local/
