#!/usr/bin/env bash
# Make a Docker engine available to the `docker` client on this machine, with the runc
# wrapper the one-node Kubernetes of the cluster tier needs (scripts/k8s-node/). Safe to run
# any number of times; CI runs it through .ci/run.
#
# The engine is judged by the socket the `docker` client uses (DOCKER_HOST, else the
# default /var/run/docker.sock): a dockerd process serving some other socket (a rootless
# engine, another tool's engine) is not ours and is left alone. When nothing answers on
# that socket, this script starts dockerd on it (installing Debian's docker.io if needed).
#
# The runc wrapper (scripts/k8s-node/runc-oom-score-adj) is copied to a fixed place and
# registered in dockerd's configuration file as the default runtime; an engine already
# running from that file reloads it on SIGHUP (dockerd reloads runtimes without a restart).
#
# Environment:
#   DOCKER_HOST      the engine's socket, as the docker client reads it (else the current
#                    docker context's; an engine is started only for a unix:// socket)
#   DOCKERD_LOG      where dockerd writes its log (default: /var/log/spark-vllm-dockerd.log)
#   DOCKERD_TIMEOUT  seconds to wait for the engine (default: 90)
#   DOCKERD_CONFIG   dockerd's configuration file (default: /etc/docker/daemon.json)
#   DOCKERD_PIDFILE  dockerd's pid file (default: /var/run/docker.pid)
#   RUNC_WRAPPER     where the runc wrapper is installed
#                    (default: /usr/local/libexec/spark-vllm/runc-oom-score-adj)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log=${DOCKERD_LOG:-/var/log/spark-vllm-dockerd.log}
timeout=${DOCKERD_TIMEOUT:-90}
config=${DOCKERD_CONFIG:-/etc/docker/daemon.json}
pidfile=${DOCKERD_PIDFILE:-/var/run/docker.pid}
wrapper=${RUNC_WRAPPER:-/usr/local/libexec/spark-vllm/runc-oom-score-adj}
runtime=spark-vllm-runc

say() { printf 'start-dockerd: %s\n' "$*" >&2; }
answers() { docker info >/dev/null 2>&1; }

# Installing packages and running dockerd need root; use sudo when we are not root.
as_root=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { say "need root (or sudo) to install and start dockerd"; exit 1; }
    as_root=(sudo -n)
fi

install_packages() {
    say "installing $* from Debian"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -o DPkg::Lock::Timeout=300 --no-install-recommends "$@" >/dev/null \
        || {
            "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
            "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                -o DPkg::Lock::Timeout=300 --no-install-recommends "$@" >/dev/null
        }
}

# The socket the docker client talks to: DOCKER_HOST, else the current context's endpoint.
endpoint=${DOCKER_HOST:-}
if [ -z "$endpoint" ] && command -v docker >/dev/null; then
    endpoint=$(docker context inspect --format '{{.Endpoints.docker.Host}}' 2>/dev/null || true)
fi
endpoint=${endpoint:-unix:///var/run/docker.sock}
case $endpoint in
unix://*) socket=${endpoint#unix://} ;;
*)
    if answers; then
        say "engine at $endpoint answers (not a local socket: runtimes left as they are)"
        exit 0
    fi
    say "the docker client's engine $endpoint does not answer, and it is not a local socket" \
        "this script could serve"
    exit 1
    ;;
esac

need=()
command -v jq >/dev/null || need+=(jq)
command -v dockerd >/dev/null || need+=(docker.io iptables)
[ ${#need[@]} -eq 0 ] || install_packages "${need[@]}"

# The runc wrapper at a fixed place: the engine outlives this checkout's working tree.
if ! cmp -s "$here/k8s-node/runc-oom-score-adj" "$wrapper" 2>/dev/null; then
    "${as_root[@]}" install -D -m 0755 "$here/k8s-node/runc-oom-score-adj" "$wrapper"
fi

# Register it in dockerd's configuration file, keeping whatever else the file holds.
current='{}'
[ -s "$config" ] && current=$(cat "$config")
wanted=$(jq --arg name "$runtime" --arg path "$wrapper" \
    '.runtimes[$name] = {path: $path} | ."default-runtime" = $name' <<<"$current")
if [ "$(jq -S . <<<"$current")" != "$(jq -S . <<<"$wanted")" ]; then
    say "registering $runtime (runc that never lowers oom_score_adj) as the default runtime in $config"
    "${as_root[@]}" mkdir -p "$(dirname "$config")"
    printf '%s\n' "$wanted" | "${as_root[@]}" tee "$config" >/dev/null
fi

engine_pid() {
    local pid
    pid=$(cat "$pidfile" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] \
        && echo "$pid"
}

default_runtime() { docker info --format '{{.DefaultRuntime}}' 2>/dev/null; }

if answers; then
    if [ "$(default_runtime)" != "$runtime" ]; then
        if pid=$(engine_pid); then
            say "engine running (pid $pid): reloading $config"
            "${as_root[@]}" kill -HUP "$pid"
            for _ in $(seq 10); do
                [ "$(default_runtime)" = "$runtime" ] && break
                sleep 1
            done
        fi
        if [ "$(default_runtime)" != "$runtime" ]; then
            say "warning: the engine on $socket does not run $runtime by default (started" \
                "with another configuration?); the cluster tier's pods will fail to start"
        fi
    fi
    say "engine already running on $socket (default runtime: $(default_runtime))"
    exit 0
fi

# Nothing answers on our socket. A live dockerd owning the pid file serves another socket
# and holds the default data root: a second engine on the same paths would not start.
if pid=$(engine_pid); then
    say "dockerd pid $pid owns $pidfile but does not answer on $socket;" \
        "point DOCKER_HOST at its socket, or stop it"
    exit 1
fi
# A stale pid file from a dockerd that died would stop a new one from starting.
[ -f "$pidfile" ] && "${as_root[@]}" rm -f "$pidfile"

say "starting dockerd on $socket (log: $log)"
# setsid: the engine outlives this script and the shell that ran it, and no terminal's
# hangup reaches it (no nohup: SIGHUP is how its configuration is reloaded).
"${as_root[@]}" sh -c "setsid dockerd -H 'unix://$socket' --config-file '$config' \
    --pidfile '$pidfile' >>'$log' 2>&1 </dev/null &"

for _ in $(seq "$timeout"); do
    if answers; then
        say "engine ready on $socket: $(docker version --format '{{.Server.Version}}' 2>/dev/null)," \
            "default runtime $(default_runtime)"
        exit 0
    fi
    sleep 1
done

say "engine did not answer on $socket within ${timeout}s; last lines of $log:"
"${as_root[@]}" tail -n 30 "$log" >&2 || true
exit 1
