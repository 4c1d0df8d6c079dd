# shellcheck shell=bash
# nginx: the buffering proxy of the long-polling browser test (hack/test.d/72-browser-proxy.sh,
# tests/browser/local/longpoll.test.js), run by the test as a foreground process with its own
# prefix on a loopback port. Installed without letting the package start the system service
# (it would take port 80): a policy-rc.d that refuses starts, for the install only. Exports
# CHATCLUSTER_NGINX.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    _nginx_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ] && [ "$(id -u)" -eq 0 ]; then
        _nginx_policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$_nginx_policy"
        chmod 755 "$_nginx_policy"
    fi
    apt_install nginx-light
    [ -z "$_nginx_policy" ] || rm -f "$_nginx_policy"
    unset _nginx_policy
fi
export CHATCLUSTER_NGINX="${CHATCLUSTER_NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}"
