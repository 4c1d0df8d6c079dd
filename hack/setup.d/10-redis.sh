# shellcheck shell=bash
# redis-server: chat-node's broker in tests (each test starts its own on a free port).
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
