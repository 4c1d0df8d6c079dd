# shellcheck shell=bash
# valkey-server: the open-source fork of Redis. chat-node's Redis suites run against it too
# (hack/test.d/73-valkey.sh). Debian 12 ships it in bookworm-backports (Valkey 8), Debian 13 in
# main; the backports source is added once, for this package only (nothing else is pinned to
# it: apt installs from backports only when asked with -t).
if ! command -v valkey-server >/dev/null 2>&1; then
    if grep -q '^VERSION_CODENAME=bookworm' /etc/os-release; then
        sources=/etc/apt/sources.list.d/bookworm-backports.sources
        if [ ! -e "$sources" ]; then
            log "adding the bookworm-backports apt source (for valkey-server)"
            sudo=""
            [ "$(id -u)" -eq 0 ] || sudo="sudo"
            printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' \
                'Suites: bookworm-backports' 'Components: main' \
                'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' | $sudo tee "$sources" >/dev/null
            _APT_UPDATED=0
        fi
        APT_TARGET_RELEASE=bookworm-backports apt_install valkey-server
    else
        apt_install valkey-server
    fi
fi
