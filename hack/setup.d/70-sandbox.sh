# shellcheck shell=bash
# The sandbox and the browser tests: Debian's chromium (driven by playwright-core, no browser
# download), nginx as the sticky-cookie reverse proxy, node + npm for the JS client's tests and
# the browser tests' only dependency (playwright-core, pinned by tests/browser/package-lock.json).
command -v node >/dev/null 2>&1 || apt_install nodejs
command -v npm >/dev/null 2>&1 || apt_install npm
command -v chromium >/dev/null 2>&1 || apt_install chromium
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || apt_install nginx
export CHATCLUSTER_CHROMIUM="${CHATCLUSTER_CHROMIUM:-$(command -v chromium)}"
export CHATCLUSTER_NGINX="${CHATCLUSTER_NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}"
if [ -f "$REPO_ROOT/tests/browser/package-lock.json" ]; then
    lock_sum="$(sha256sum "$REPO_ROOT/tests/browser/package-lock.json" | cut -c1-16)"
    if [ ! -f "$REPO_ROOT/tests/browser/node_modules/.lock-$lock_sum" ]; then
        log "npm ci (tests/browser)"
        (cd "$REPO_ROOT/tests/browser" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >&2)
        touch "$REPO_ROOT/tests/browser/node_modules/.lock-$lock_sum"
    fi
fi
