# shellcheck shell=bash
# Sourced by bench/run.sh and hack/test.d/80-bench-smoke.sh (after hack/lib.sh): installs what
# the benchmark needs beyond Rust, safe to run twice.
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
# bench/floor/write_floor.py, run by the suite before each fan-out rate.
command -v python3 >/dev/null 2>&1 || apt_install python3
# Centrifugo, built once per version into the cache (bench/centrifugo.sh); exports
# BENCH_CENTRIFUGO. Under make test it was started in the background by hack/test.sh.
# shellcheck source=bench/centrifugo.sh
source "$REPO_ROOT/bench/centrifugo.sh"
build_centrifugo
bench_ref="$REPO_ROOT/bench/reference-node"
# `npm ci` only when node_modules is missing or older than the lock file.
if [ ! -f "$bench_ref/node_modules/.package-lock.json" ] \
    || [ "$bench_ref/package-lock.json" -nt "$bench_ref/node_modules/.package-lock.json" ]; then
    log "npm ci in bench/reference-node"
    (cd "$bench_ref" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

# run_suite BIN ARGS...: runs `chat-loadgen suite` in its own session and process group and
# stops that whole group (servers, Redis, load processes) however this script exits.
# BENCH_NICE=N (e.g. -10) gives that session's scheduler autogroup nice N: with autogroups
# (kernel.sched_autogroup_enabled=1) every session shares the CPU equally whatever its
# processes' nice values, so on a machine busy with other sessions this is the only way to
# give the benchmark more than an equal share.
run_suite() {
    setsid "$@" &
    local pid=$!
    if [ -n "${BENCH_NICE:-}" ] && [ -w "/proc/$pid/autogroup" ]; then
        local i
        for i in $(seq 50); do
            [ "$(cut -d' ' -f1 "/proc/$pid/autogroup" 2>/dev/null)" != "$(cut -d' ' -f1 /proc/$$/autogroup)" ] && break
            sleep 0.02
        done
        echo "$BENCH_NICE" >"/proc/$pid/autogroup" 2>/dev/null || true
        log "benchmark autogroup: $(cat "/proc/$pid/autogroup" 2>/dev/null)"
    fi
    # shellcheck disable=SC2064
    trap "kill -TERM -- -$pid 2>/dev/null || true" EXIT INT TERM
    local rc=0
    wait "$pid" || rc=$?
    trap - EXIT INT TERM
    kill -TERM -- "-$pid" 2>/dev/null || true
    return "$rc"
}
