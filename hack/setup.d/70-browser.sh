# shellcheck shell=bash
# The browser tests (run by the e2e suite against real pods): Debian's chromium, driven by
# playwright-core (no browser download), node + npm for them and for the JS client's unit tests,
# and the browser tests' only dependency (playwright-core, pinned by tests/browser/package-lock.json).
command -v node >/dev/null 2>&1 || apt_install nodejs
command -v npm >/dev/null 2>&1 || apt_install npm
command -v chromium >/dev/null 2>&1 || apt_install chromium
export CHATCLUSTER_CHROMIUM="${CHATCLUSTER_CHROMIUM:-$(command -v chromium)}"
if [ -f "$REPO_ROOT/tests/browser/package-lock.json" ]; then
    lock_sum="$(sha256sum "$REPO_ROOT/tests/browser/package-lock.json" | cut -c1-16)"
    if [ ! -f "$REPO_ROOT/tests/browser/node_modules/.lock-$lock_sum" ]; then
        log "npm ci (tests/browser)"
        (cd "$REPO_ROOT/tests/browser" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >&2)
        touch "$REPO_ROOT/tests/browser/node_modules/.lock-$lock_sum"
    fi
fi
