# shellcheck shell=bash
# Background programs with a pid file and a log each, for the scripts that run a cluster's
# parts on this machine (scripts/k8s-node/node.sh, scripts/volcano/run.sh). The caller sets
# `state` (a folder holding pids/ and logs/) and defines `say MESSAGE`.

# start NAME BINARY ARGS...: run BINARY in the background, its output in logs/NAME.log.
start() {
    local name=$1
    shift
    # setsid: Ctrl-C in the terminal reaches the calling script (which stops everything in
    # order), not each program on its own.
    setsid "$@" >"$state/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$state/pids/$name"
}

# stop_pid NAME: TERM, then KILL after 10 s; nothing if NAME was not started.
stop_pid() {
    local name=$1 file=$state/pids/$1 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$pid" 2>/dev/null || true
        say "stopped $name (pid $pid)"
    fi
    rm -f "$file"
}

# alive_or_die NAME: exit 1 with the last lines of its log if NAME has exited.
alive_or_die() {
    local name=$1 pid
    pid=$(cat "$state/pids/$name")
    kill -0 "$pid" 2>/dev/null && return 0
    say "$name exited; last lines of $state/logs/$name.log:"
    tail -n 25 "$state/logs/$name.log" >&2
    exit 1
}
