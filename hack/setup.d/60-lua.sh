# shellcheck shell=bash
# Lua 5.1: the chart tests run docs/gitops/resource_customizations/realtime.dev/ChatCluster/health.lua (the Argo CD health check)
# with it. Argo CD runs health checks in gopher-lua, which implements Lua 5.1 semantics.
command -v lua5.1 >/dev/null 2>&1 || apt_install lua5.1
