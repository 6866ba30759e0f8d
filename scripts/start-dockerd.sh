#!/usr/bin/env bash
# Make a Docker engine available on this machine: install Debian's docker.io when
# dockerd is missing, start dockerd in the background when `docker info` fails, and
# wait until the engine answers. Safe to run any number of times.
#
# Environment:
#   DOCKERD_LOG      where dockerd writes its log (default: /var/log/spark-vllm-dockerd.log)
#   DOCKERD_TIMEOUT  seconds to wait for the engine (default: 90)
set -euo pipefail

log=${DOCKERD_LOG:-/var/log/spark-vllm-dockerd.log}
timeout=${DOCKERD_TIMEOUT:-90}

say() { printf 'start-dockerd: %s\n' "$*" >&2; }

if docker info >/dev/null 2>&1; then
    say "engine already running"
    exit 0
fi

# Installing packages and running dockerd need root; use sudo when we are not root.
as_root=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { say "need root (or sudo) to install and start dockerd"; exit 1; }
    as_root=(sudo -n)
fi

if ! command -v dockerd >/dev/null 2>&1; then
    say "installing docker.io from Debian"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends docker.io iptables >/dev/null
fi

# A stale pid file from a dockerd that died would stop a new one from starting.
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    "${as_root[@]}" rm -f /var/run/docker.pid
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
    say "starting dockerd (log: $log)"
    # setsid + nohup: the engine must outlive this script and the shell that ran it.
    "${as_root[@]}" sh -c "setsid nohup dockerd >>'$log' 2>&1 </dev/null &"
fi

for _ in $(seq "$timeout"); do
    if docker info >/dev/null 2>&1; then
        say "engine ready: $(docker version --format '{{.Server.Version}}' 2>/dev/null)"
        exit 0
    fi
    sleep 1
done

say "engine did not answer within ${timeout}s; last lines of $log:"
"${as_root[@]}" tail -n 30 "$log" >&2 || true
exit 1
