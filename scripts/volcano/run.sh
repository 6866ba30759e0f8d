#!/usr/bin/env bash
# Volcano's scheduler and controller manager for the one-node Kubernetes of scripts/k8s-node/
# (or any cluster KUBECONFIG names), run as host processes beside the node's own control
# plane, with the node's admin credentials: the same way that node runs kube-scheduler and
# kube-controller-manager. Built by build.sh (cached).
#
#   scripts/volcano/run.sh up     the CRDs (created, Established), then vc-controller-manager
#                                 (its queue and podgroup controllers) and vc-scheduler;
#                                 Ready once the default Queue (the scheduler creates it)
#                                 is Open
#   scripts/volcano/run.sh down   stop both (the CRDs and the Queues stay with the cluster)
#
# The scheduler runs Volcano's default configuration (actions enqueue, allocate, backfill;
# the gang plugin among others): a PodGroup's pods are bound all together or not at all.
# No admission webhook: it only validates and defaults Volcano's own objects.
#
# Environment:
#   KUBECONFIG     the cluster (required for up)
#   VOLCANO_DIR    logs and pid files (default: $K8S_NODE_DIR/volcano, else
#                  /tmp/spark-vllm-volcano)
#   KUBECTL        the binary (default: build/tools/bin/kubectl, then PATH)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/procs.sh
. "$here/../lib/procs.sh"
root=$(cd "$here/../.." && pwd)
state=${VOLCANO_DIR:-${K8S_NODE_DIR:+$K8S_NODE_DIR/volcano}}
state=${state:-/tmp/spark-vllm-volcano}
kubectl=${KUBECTL:-$root/build/tools/bin/kubectl}
[ -x "$kubectl" ] || kubectl=$(command -v kubectl)
components=(vc-controller-manager vc-scheduler)

say() { printf 'volcano: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
k() { "$kubectl" "$@"; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

down() {
    local i
    for ((i = ${#components[@]} - 1; i >= 0; i--)); do stop_pid "${components[$i]}"; done
}

crds() { # DIR: create the CRDs not there yet, wait until all are Established
    local crd name
    for crd in "$1"/*.yaml; do
        name=$(k create --dry-run=client -f "$crd" -o jsonpath='{.metadata.name}')
        # create, not apply: a client-side apply stores the whole CRD in an annotation,
        # which is over its 256 KB limit for the larger ones.
        k get crd "$name" >/dev/null 2>&1 || k create -f "$crd" >/dev/null
    done
    for crd in "$1"/*.yaml; do
        name=$(k create --dry-run=client -f "$crd" -o jsonpath='{.metadata.name}')
        k wait --for condition=Established --timeout 60s "crd/$name" >/dev/null
    done
}

up() {
    : "${KUBECONFIG:?set KUBECONFIG to the kubeconfig of the cluster}"
    export KUBECONFIG
    local built
    built=$("$here/build.sh" | tail -n 1)
    down
    mkdir -p "$state/pids" "$state/logs"
    crds "$built/crds"
    # Volcano's own namespace, as its chart creates it (both programs name it for their
    # leader-election lock, which is off here).
    k get namespace volcano-system >/dev/null 2>&1 || k create namespace volcano-system >/dev/null
    # Only the controllers gang scheduling needs: the others (Volcano's own Job, JobFlow,
    # CronJob ...) wait for informers of CRDs that this script does not create, and the
    # controller manager starts none of its controllers until every informer has synced.
    start vc-controller-manager "$built/bin/vc-controller-manager" \
        --kubeconfig "$KUBECONFIG" --leader-elect=false \
        --controllers queue-controller,pg-controller \
        --listen-address "127.0.0.1:$(free_port)" \
        --healthz-address "127.0.0.1:$(free_port)" \
        --logtostderr -v 2
    start vc-scheduler "$built/bin/vc-scheduler" \
        --kubeconfig "$KUBECONFIG" --leader-elect=false \
        --listen-address "127.0.0.1:$(free_port)" \
        --healthz-address "127.0.0.1:$(free_port)" \
        --schedule-period 500ms \
        --logtostderr -v 2
    local state_open=""
    for _ in $(seq 90); do
        alive_or_die vc-controller-manager
        alive_or_die vc-scheduler
        state_open=$(k get queue default -o jsonpath='{.status.state}' 2>/dev/null || true)
        [ "$state_open" = Open ] && break
        sleep 1
    done
    [ "$state_open" = Open ] || die "the default Queue is not Open after 90 s; see $state/logs"
    say "Volcano $(head -n 1 "$built/VERSION" | cut -d' ' -f1) running; logs in $state/logs"
}

case ${1:-} in
up)
    trap 'rc=$?; [ "$rc" = 0 ] || down; exit "$rc"' EXIT
    up
    ;;
down) down ;;
*) die "usage: $0 up|down" ;;
esac
