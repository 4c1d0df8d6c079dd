# shellcheck shell=bash
# Prometheus, promtool, Alertmanager and amtool (Debian's packages) for the observability tests:
# the generated rules and Alertmanager routes are checked by the real tools. The packages'
# services are not started (tests start their own servers on loopback ports).
command -v promtool >/dev/null 2>&1 && command -v prometheus-alertmanager >/dev/null 2>&1 \
    || apt_install prometheus prometheus-alertmanager
