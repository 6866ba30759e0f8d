#!/usr/bin/env bash
# A one-node Kubernetes on this machine's Docker engine, for the cluster test tier and for
# trying the chart by hand. Real parts only, built from their Go modules by
# build.sh (cached): etcd, the API server, the controller manager, the scheduler and
# the kubelet of Kubernetes 1.35, with cri-dockerd as the kubelet's container runtime on the
# same engine as `docker build`, so locally built images are on the node already.
#
#   scripts/k8s-node/node.sh up          start (stopping a stale node first), wait until the
#                                        node is Ready, print the environment file
#   scripts/k8s-node/node.sh down        stop everything, remove the node's pods and mounts
#   scripts/k8s-node/node.sh run CMD...  up, run CMD with KUBECONFIG set, down (also on
#                                        failure and Ctrl-C)
#
# Certificates, keys and tokens are made at every start; nothing is kept between nodes.
# Memory: about 1 GB for the control plane and the kubelet together.
#
# What this node does not have, and why (the chart and the tests allow for each):
#   - no kube-proxy and no network plugin: pods sit on Docker's bridge and reach each other
#     by pod IP; a Service's cluster IP routes nowhere. The service range is put on loopback
#     (127.127.0.0/24) so that a pod dialling a Service address is refused inside its own
#     network namespace instead of sending packets off this machine;
#   - no cluster DNS: Service names do not resolve;
#   - so the API server calls admission webhooks (the Spark Operator's) at the pod behind the
#     webhook's Service, not at its cluster IP (--enable-aggregator-routing: its resolver
#     serves webhooks too), and reaches that pod on the bridge;
# The API server listens on the Docker bridge's address, not loopback, because pods must
# reach it (Spark's driver creates its executors through it); the kubelet registers that
# address too, because the API server reaches the kubelet there for `kubectl logs/exec`
# (with a loopback node address they fail: "no preferred addresses found").
#
# Environment:
#   K8S_NODE_DIR   state folder: certificates, logs, etcd data, kubelet root
#                  (default: /tmp/spark-vllm-k8s-node); its file `env` holds KUBECONFIG etc.
#   K8S_CACHE      where build.sh caches the binaries
#   K8S_NODE_TIMEOUT  seconds to wait for the node to be Ready (default: 180)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/procs.sh
. "$here/../lib/procs.sh"
state=${K8S_NODE_DIR:-/tmp/spark-vllm-k8s-node}
node_name=spark-vllm-node
service_range=127.127.0.0/24
pause_image=localhost/spark-vllm-pause:v1.35.8
runtime=spark-vllm-runc
# Stopped in reverse order; stopping a component that was not started does nothing.
components=(etcd kube-apiserver kube-controller-manager kube-scheduler cri-dockerd kubelet)

say() { printf 'k8s-node: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}

# The address of Docker's bridge on this machine: what pods use to reach the host.
bridge_ip() {
    local name
    name=$(docker network inspect bridge --format '{{index .Options "com.docker.network.bridge.name"}}')
    ip -4 -o addr show "${name:-docker0}" | awk '{split($4, a, "/"); print a[1]; exit}'
}

down() {
    [ -d "$state" ] || return 0
    local had_kubelet=0
    [ -f "$state/pids/kubelet" ] && had_kubelet=1
    local i
    for ((i = ${#components[@]} - 1; i >= 0; i--)); do
        stop_pid "${components[$i]}"
    done
    if [ "$had_kubelet" = 1 ]; then
        # The kubelet leaves its pods' containers running when it stops. It named them k8s_…
        # and labelled them; this machine runs no other kubelet.
        local ids
        ids=$(docker ps -aq --filter label=io.kubernetes.docker.type 2>/dev/null || true)
        if [ -n "$ids" ]; then
            # shellcheck disable=SC2086
            docker rm -f $ids >/dev/null 2>&1 || true
            say "removed $(wc -w <<<"$ids") pod containers"
        fi
    fi
    # Secret and memory-backed emptyDir volumes are tmpfs mounts under the kubelet's root.
    awk -v root="$state/" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r |
        while read -r mount; do umount -l "$mount" 2>/dev/null || true; done
    rm -rf "$state/etcd" "$state/kubelet"
}

# Certificates and keys, made fresh for every node.
make_pki() {
    local pki=$state/pki bridge=$1
    mkdir -p "$pki"
    (
        cd "$pki"
        umask 077
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 \
            -subj "/CN=spark-vllm-k8s-node-ca" 2>/dev/null
        # cert NAME SUBJECT [SAN]: a client or server certificate signed by the CA.
        cert() {
            openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
            local ext=$1.ext
            {
                echo "basicConstraints=CA:FALSE"
                echo "keyUsage=critical,digitalSignature,keyEncipherment"
                echo "extendedKeyUsage=serverAuth,clientAuth"
                [ -z "${3:-}" ] || echo "subjectAltName=$3"
            } >"$ext"
            openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
                -out "$1.crt" -days 30 -extfile "$ext" 2>/dev/null
            rm -f "$1.csr" "$ext"
        }
        cert apiserver "/CN=kube-apiserver" \
            "IP:$bridge,IP:127.0.0.1,IP:127.127.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:localhost"
        cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
        cert admin "/O=system:masters/CN=spark-vllm-admin"
        cert controller-manager "/CN=system:kube-controller-manager"
        cert scheduler "/CN=system:kube-scheduler"
        cert kubelet "/O=system:nodes/CN=system:node:$node_name" "IP:$bridge,DNS:$node_name"
        # Service account tokens: the controller manager signs, the API server verifies.
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    )
}

kubeconfig() { # NAME SERVER: a kubeconfig for the client certificate NAME
    cat >"$state/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: spark-vllm
    cluster:
      server: $2
      certificate-authority: $state/pki/ca.crt
users:
  - name: $1
    user:
      client-certificate: $state/pki/$1.crt
      client-key: $state/pki/$1.key
contexts:
  - name: spark-vllm
    context: {cluster: spark-vllm, user: $1}
current-context: spark-vllm
EOF
}

api() { # PATH: GET from the API server as the admin
    curl -sf --cacert "$state/pki/ca.crt" --cert "$state/pki/admin.crt" --key "$state/pki/admin.key" \
        "$server$1"
}

# The kubelet's settings (kubelet.yaml below):
#   no cgroups per QoS class and no node-allocatable enforcement: the kubelet does not build
#     its own cgroup hierarchy (it would fight the machine's); pods still get their limits;
#   oom score 0: the kubelet would lower its own score to -999, which this machine forbids
#     (see scripts/k8s-node/runc-oom-score-adj for the pods' side of it);
#   image GC at 100%: never delete images; they belong to the Docker engine's other users
#     (the image tier's build cache) as much as to this node;
#   eviction: only a nearly full machine evicts pods; a test machine's disk is busy.
start_kubelet() { # cri-dockerd as the CRI runtime, the kubelet's settings in a file
    # cri-dockerd with no network plugin: pods sit on Docker's bridge, as with dockershim.
    start cri-dockerd "$bin/cri-dockerd" \
        --container-runtime-endpoint "unix://$state/cri-dockerd.sock" \
        --docker-endpoint "$docker_endpoint" \
        --cri-dockerd-root-directory "$state/cri-dockerd" \
        --pod-infra-container-image "$pause_image" \
        --network-plugin= \
        --log-level warn
    for _ in $(seq 60); do
        alive_or_die cri-dockerd
        [ -S "$state/cri-dockerd.sock" ] && break
        sleep 0.5
    done
    # failCgroupV1: false: this machine has cgroup v1, which the kubelet refuses from 1.35
    #   unless told so (v1 is in maintenance upstream, not removed).
    cat >"$state/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$state/cri-dockerd.sock
address: $bridge
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
oomScoreAdj: 0
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 200Mi, nodefs.available: "1%", imagefs.available: "1%"}
runtimeRequestTimeout: 10m
EOF
    start kubelet "$bin/kubelet" \
        --config "$state/kubelet.yaml" \
        --kubeconfig "$state/kubelet.kubeconfig" \
        --root-dir "$state/kubelet" --cert-dir "$state/kubelet-pki" \
        --hostname-override "$node_name" --node-ip "$bridge"
}

up() {
    [ "$(id -u)" = 0 ] || die "the kubelet needs root"
    docker info >/dev/null 2>&1 || die "no Docker engine answers: run scripts/start-dockerd.sh"
    [ "$(docker info --format '{{.DefaultRuntime}}')" = "$runtime" ] ||
        die "the Docker engine's default runtime is not $runtime: run scripts/start-dockerd.sh" \
            "(pod sandboxes fail without it where oom_score_adj cannot be lowered)"
    local bin
    bin=$("$here/build.sh" | tail -n 1)/bin
    local cache
    cache=$(dirname "$bin")

    down
    rm -rf "$state"
    mkdir -p "$state"/{pids,logs,etcd,kubelet,kubelet-pki}
    local bridge
    bridge=$(bridge_ip)
    [ -n "$bridge" ] || die "cannot find the address of Docker's bridge"

    # The pod sandbox image cannot be pulled: import the pause binary built from the tree.
    if ! docker image inspect "$pause_image" >/dev/null 2>&1; then
        tar -C "$cache/pause" -c pause | docker import -c 'ENTRYPOINT ["/pause"]' - "$pause_image" >/dev/null
        say "imported $pause_image"
    fi

    make_pki "$bridge"
    local etcd_port etcd_peer api_port cm_port sched_port kubelet_port healthz_port
    etcd_port=$(free_port)
    etcd_peer=$(free_port)
    api_port=$(free_port)
    cm_port=$(free_port)
    sched_port=$(free_port)
    kubelet_port=$(free_port)
    healthz_port=$(free_port)
    server=https://$bridge:$api_port
    kubeconfig admin "$server"
    kubeconfig controller-manager "$server"
    kubeconfig scheduler "$server"
    kubeconfig kubelet "$server"
    local pki=$state/pki
    start etcd "$bin/etcd" --name "$node_name" --data-dir "$state/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" \
        --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-cluster "$node_name=http://127.0.0.1:$etcd_peer"

    start kube-apiserver "$bin/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$etcd_port" \
        --bind-address "$bridge" --advertise-address "$bridge" --secure-port "$api_port" \
        --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
        --client-ca-file "$pki/ca.crt" \
        --authorization-mode Node,RBAC \
        --enable-admission-plugins NodeRestriction \
        --service-cluster-ip-range "$service_range" \
        --service-account-key-file "$pki/sa.pub" \
        --service-account-signing-key-file "$pki/sa.key" \
        --service-account-issuer https://kubernetes.default.svc \
        --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types InternalIP \
        --enable-aggregator-routing=true

    for _ in $(seq 60); do
        alive_or_die etcd
        alive_or_die kube-apiserver
        [ "$(api /readyz 2>/dev/null)" = ok ] && break
        sleep 1
    done
    [ "$(api /readyz 2>/dev/null)" = ok ] || die "the API server did not become ready; see $state/logs"
    say "API server ready at $server"

    start kube-controller-manager "$bin/kube-controller-manager" \
        --kubeconfig "$state/controller-manager.kubeconfig" \
        --authentication-kubeconfig "$state/controller-manager.kubeconfig" \
        --authorization-kubeconfig "$state/controller-manager.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port "$cm_port" \
        --cert-dir "$state/pki/controller-manager-serving" \
        --leader-elect=false \
        --use-service-account-credentials \
        --service-account-private-key-file "$pki/sa.key" \
        --root-ca-file "$pki/ca.crt"

    start kube-scheduler "$bin/kube-scheduler" \
        --kubeconfig "$state/scheduler.kubeconfig" \
        --authentication-kubeconfig "$state/scheduler.kubeconfig" \
        --authorization-kubeconfig "$state/scheduler.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port "$sched_port" \
        --cert-dir "$state/pki/scheduler-serving" \
        --leader-elect=false

    local docker_endpoint=${DOCKER_HOST:-unix:///var/run/docker.sock}
    start_kubelet

    local timeout=${K8S_NODE_TIMEOUT:-180} ready=""
    for _ in $(seq "$timeout"); do
        for c in "${components[@]}"; do alive_or_die "$c"; done
        ready=$(api "/api/v1/nodes/$node_name" 2>/dev/null |
            jq -r '.status.conditions[]? | select(.type == "Ready") | .status' || true)
        [ "$ready" = True ] && break
        sleep 1
    done
    [ "$ready" = True ] || die "node $node_name not Ready within ${timeout}s; see $state/logs"

    cat >"$state/env" <<EOF
KUBECONFIG=$state/admin.kubeconfig
K8S_API_SERVER=$server
K8S_NODE_NAME=$node_name
K8S_NODE_DIR=$state
K8S_VERSION=$(cat "$cache/VERSION" | awk '{print $2}')
EOF
    say "node $node_name Ready ($(cat "$cache/VERSION")); environment in $state/env:"
    cat "$state/env"
}

case ${1:-} in
up)
    # A node that failed to come up is not left half running.
    trap 'rc=$?; [ "$rc" = 0 ] || down; exit "$rc"' EXIT
    up
    ;;
down) down ;;
run)
    shift
    [ $# -gt 0 ] || die "usage: $0 run CMD..."
    trap down EXIT
    trap 'exit 130' INT TERM
    up >/dev/null
    set -a
    # shellcheck disable=SC1091
    . "$state/env"
    set +a
    "$@"
    ;;
*) die "usage: $0 up|down|run CMD..." ;;
esac
