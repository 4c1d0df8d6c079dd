#!/bin/sh
# The test node's footprint on the host, in one place: what `save` records before the node starts
# and what `teardown` undoes, so that the host is left as it was found, whether the test process
# ended normally, panicked or was killed (the node's watchdog runs `teardown` when the test
# process's pipe closes; the harness runs it first at every start, for a node whose watchdog was
# killed too). Idempotent; safe to run when nothing is running.
#
#   host.sh save     RUN_DIR LIB_DIR   record sysctls, iptables/nftables, which fixed paths exist
#   host.sh teardown RUN_DIR LIB_DIR   stop everything of the node and restore what `save` recorded
#   host.sh fingerprint [RUN LIB]      print the host state the node may touch (rules without
#                                      counters, sysctls, links, addresses, fixed paths, mounts,
#                                      node processes, cgroups): equal before and after a node
#
# RUN_DIR holds sockets, containerd's state, runc's root and the record (RUN_DIR/host); LIB_DIR
# holds containerd's root, the kubelet's root and the pod logs. The node's processes are found by
# these directories on their command lines, the containers by runc's root and by the kubelet's
# cgroups; nothing else on the host is touched.
set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
action="${1:-}"
RUN="${2:-/run/chatcluster-node}"
LIB="${3:-/var/lib/chatcluster-node}"
BRIDGE="${CHATCLUSTER_NODE_BRIDGE:-chatcluster0}"
POD_CIDR="${CHATCLUSTER_NODE_POD_CIDR:-10.88.0.0/16}"
SERVICE_CIDR="${CHATCLUSTER_NODE_SERVICE_CIDR:-10.96.0.0/16}"
RECORD="$RUN/host"

# Sysctls the bridge plugin (ip_forward), the kubelet (panic, overcommit, keys) or kube-proxy
# (route_localnet, bridge-nf-call) may change.
SYSCTLS="net.ipv4.ip_forward net.ipv6.conf.all.forwarding vm.overcommit_memory vm.panic_on_oom
kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes
net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
net.bridge.bridge-nf-call-ip6tables"
# Fixed paths the kubelet, containerd and the CNI plugins use whatever they are configured with.
FIXED_PATHS="/var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /run/containerd
/var/run/containerd /etc/cni /opt/cni /run/netns /var/run/netns /etc/kubernetes /opt/containerd
/var/lib/containerd /run/nri /var/run/nri /etc/nri /var/lib/kube-proxy /run/xtables.lock"

log() { echo "host.sh: $*"; }

save() {
    mkdir -p "$RECORD/sysctl"
    for name in $SYSCTLS; do
        value="$(sysctl -n "$name" 2>/dev/null)" && printf '%s\n' "$value" >"$RECORD/sysctl/$name"
    done
    nft list tables 2>/dev/null | sort >"$RECORD/nft-tables"
    iptables-save >"$RECORD/iptables" 2>/dev/null || :
    ip6tables-save >"$RECORD/ip6tables" 2>/dev/null || :
    : >"$RECORD/paths"
    for path in $FIXED_PATHS; do
        [ -e "$path" ] || [ -L "$path" ] && printf '%s\n' "$path" >>"$RECORD/paths"
    done
    touch "$RECORD/.saved"
}

# PIDs of processes whose command line mentions RUN or LIB, except this script and its parent
# (the watchdog, whose own arguments name them).
node_pids() {
    for dir in /proc/[0-9]*; do
        pid="${dir#/proc/}"
        [ "$pid" = "$$" ] || [ "$pid" = "$PPID" ] && continue
        cmdline="$(tr '\0' ' ' 2>/dev/null <"$dir/cmdline")" || continue
        case "$cmdline" in
        *host.sh\ *) ;;
        *"$RUN"/* | *"$LIB"/* | *"$RUN" | *"$LIB") echo "$pid" ;;
        esac
    done
}

kill_matching() {
    pattern="$1"
    for pid in $(node_pids); do
        case "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" in
        *$pattern*) kill -KILL "$pid" 2>/dev/null ;;
        esac
    done
}

kubepods_cgroups() {
    for controller in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
        if [ -d "$controller" ]; then echo "$controller"; fi
    done
}

teardown() {
    # 1. the kubelet and kube-proxy first, so that nothing restarts what is stopped next
    kill_matching kubelet
    kill_matching kube-proxy
    # 2. the containers: through runc's state, then whatever is left in the kubelet's cgroups
    for root in "$RUN"/runc/*; do
        [ -d "$root" ] || continue
        for id in $(runc --root "$root" list -q 2>/dev/null); do
            runc --root "$root" kill "$id" KILL 2>/dev/null
            runc --root "$root" delete -f "$id" 2>/dev/null
        done
    done
    for cgroup in $(kubepods_cgroups); do
        find "$cgroup" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r pid; do
            kill -KILL "$pid" 2>/dev/null
        done
    done
    # 3. shims and containerd (and anything else started with the node's directories)
    for pid in $(node_pids); do kill -KILL "$pid" 2>/dev/null; done
    waited=0
    while [ -n "$(node_pids)" ] && [ "$waited" -lt 100 ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    [ -z "$(node_pids)" ] || log "processes still running: $(node_pids)"
    # 4. mounts under the node's directories, deepest first (pod volumes, rootfs, netns, shm)
    for attempt in 1 2 3; do
        mounts="$(awk -v run="$RUN" -v lib="$LIB" '
            index($5, run "/") == 1 || $5 == run || index($5, lib "/") == 1 || $5 == lib { print $5 }' \
            /proc/self/mountinfo | awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2-)"
        [ -n "$mounts" ] || break
        printf '%s\n' "$mounts" | while read -r mount; do
            umount "$mount" 2>/dev/null || umount -l "$mount" 2>/dev/null
        done
    done
    # 5. the kubelet's cgroups, leaves first
    for cgroup in $(kubepods_cgroups); do
        find "$cgroup" -depth -type d -exec rmdir {} \; 2>/dev/null
        [ -d "$cgroup" ] && log "cgroup left: $cgroup"
    done
    # 6. the pod network
    ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
    for net in "$POD_CIDR" "$SERVICE_CIDR"; do
        conntrack -D -s "$net" >/dev/null 2>&1
        conntrack -D -d "$net" >/dev/null 2>&1
    done
    # 7. iptables/nftables as recorded: tables made since are deleted, the others restored
    if [ -f "$RECORD/.saved" ]; then
        nft list tables 2>/dev/null | sort | comm -13 "$RECORD/nft-tables" - | while read -r _ family name; do
            nft delete table "$family" "$name" 2>/dev/null || log "could not delete nft table $family $name"
        done
        [ -s "$RECORD/iptables" ] && iptables-restore <"$RECORD/iptables"
        [ -s "$RECORD/ip6tables" ] && ip6tables-restore <"$RECORD/ip6tables"
        for file in "$RECORD"/sysctl/*; do
            [ -f "$file" ] || continue
            name="${file##*/}"
            [ "$(sysctl -n "$name" 2>/dev/null)" = "$(cat "$file")" ] || sysctl -q -w "$name=$(cat "$file")" >/dev/null
        done
        # 8. fixed paths that did not exist before
        for path in $FIXED_PATHS; do
            grep -qx "$path" "$RECORD/paths" && continue
            if [ -e "$path" ] || [ -L "$path" ]; then
                # never below a mount point that is still in use
                umount -R "$path" 2>/dev/null
                rm -rf "$path"
            fi
        done
    else
        # No record (the node never got that far): at least drop the forwarding guard.
        while iptables -D FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j DROP 2>/dev/null; do :; done
    fi
    # kubelet symlinks into our pod logs, when /var/log/containers existed before
    if [ -d /var/log/containers ]; then
        for link in /var/log/containers/*; do
            [ -L "$link" ] || continue
            case "$(readlink "$link")" in "$LIB"/*) rm -f "$link" ;; esac
        done
    fi
    # 9. the node's directories; the record last
    rm -rf "$LIB"
    find "$RUN" -mindepth 1 -maxdepth 1 ! -name host -exec rm -rf {} + 2>/dev/null
    rm -rf "$RUN"
}

fingerprint() {
    echo "# nftables"
    nft list ruleset 2>/dev/null | sed -e 's/counter packets [0-9]* bytes [0-9]*/counter/'
    echo "# sysctls"
    for name in $SYSCTLS; do echo "$name=$(sysctl -n "$name" 2>/dev/null)"; done
    echo "# links and addresses"
    ip -o link show | awk '{ print $2 }'
    ip -o addr show | awk '{ print $2, $3, $4 }'
    echo "# fixed paths"
    for path in $FIXED_PATHS "$RUN" "$LIB"; do
        [ -e "$path" ] || [ -L "$path" ] && echo "$path"
    done
    echo "# mounts of the node"
    awk -v run="$RUN" -v lib="$LIB" 'index($5, run) == 1 || index($5, lib) == 1 { print $5 }' /proc/self/mountinfo
    echo "# processes of the node"
    for pid in $(node_pids); do tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline"; echo; done
    echo "# kubelet cgroups"
    kubepods_cgroups
    return 0
}

case "$action" in
save) save ;;
fingerprint) fingerprint ;;
teardown) teardown ;;
*)
    echo "usage: $0 save|teardown|fingerprint [RUN_DIR] [LIB_DIR]" >&2
    exit 2
    ;;
esac
