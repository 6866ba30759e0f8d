#!/usr/bin/env bash
# Install the Spark Operator v2.5.2 into the cluster KUBECONFIG names, as the platform chart
# does it, with everything from this machine: the binary and the CRDs built from the
# operator's Go module (build.sh), the image made from a spark-vllm image (image.sh).
#
#   scripts/spark-operator/install.sh crds       the CRDs, created and Established (only
#                                                 the module is downloaded: no build)
#   scripts/spark-operator/install.sh operator   the platform chart (controller, webhook),
#                                                 Ready, with the webhook's CA in place
#   scripts/spark-operator/install.sh all        both (what `make cluster-up` runs)
#
# Environment:
#   KUBECONFIG          the cluster (required)
#   BASE_IMAGE          the spark-vllm image the operator's image is made from
#                       (default spark-vllm:dev-cpu, `make build-image VARIANT=cpu`)
#   JOB_NAMESPACE       the namespace jobs run in, created if missing (default spark-jobs)
#   OPERATOR_NAMESPACE  the operator's (default spark-operator); release name: platform
#   API_SERVER          the API server's URL for clusters whose Services do not route
#   HELM, KUBECTL       the binaries (default: build/tools/bin, then PATH)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
: "${KUBECONFIG:?set KUBECONFIG to the kubeconfig of the cluster}"
export KUBECONFIG
base=${BASE_IMAGE:-spark-vllm:dev-cpu}
jobs_ns=${JOB_NAMESPACE:-spark-jobs}
ops_ns=${OPERATOR_NAMESPACE:-spark-operator}
release=platform
tool() { # NAME: the binary to use
    local upper
    upper=$(echo "$1" | tr a-z A-Z)
    if [ -n "${!upper:-}" ]; then echo "${!upper}"; elif [ -x "$root/build/tools/bin/$1" ]; then
        echo "$root/build/tools/bin/$1"; else command -v "$1"; fi
}
kubectl=$(tool kubectl)
helm=$(tool helm)
say() { printf 'spark-operator install: %s\n' "$*" >&2; }
k() { "$kubectl" "$@"; }

crd_name() { # FILE: the CRD's name, from the file name controller-gen gives it
    local file
    file=$(basename "$1" .yaml)
    echo "${file#*_}.sparkoperator.k8s.io"
}

established() { # NAME
    [ "$(k get crd "$1" -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" = True ]
}

crds() {
    local built minor crd name
    built=$(bash "$here/build.sh" --crds-only)
    minor=$(k version -o json | sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | tail -n 1)
    for crd in "$built"/crds/*.yaml; do
        name=$(crd_name "$crd")
        if k get crd "$name" >/dev/null 2>&1; then
            say "CRD $name exists: kept"
            continue
        fi
        # Kubernetes < 1.21 refuses controller-gen's `default: ""` under string fields
        # ("default: Invalid value: "null": in body must be of type string"); dropping the
        # empty defaults changes nothing the chart relies on. create, not apply: a
        # client-side apply would store the 800 KB CRD in an annotation, over 256 KB.
        if [ "${minor:-99}" -lt 21 ]; then
            sed '/^[[:space:]]*default: ""$/d' "$crd" | k create -f - >/dev/null
        else
            k create -f "$crd" >/dev/null
        fi
        say "created CRD $name"
    done
    for crd in "$built"/crds/*.yaml; do
        name=$(crd_name "$crd")
        # Polled, not `kubectl wait`: an old server's CRD without conditions yet fails it.
        for _ in $(seq 60); do established "$name" && break; sleep 1; done
        established "$name" || { say "CRD $name not Established after 60 s"; exit 1; }
    done
}

ca_bundled() { # KIND NAME: the configuration exists and each of its webhooks has a caBundle
    local bundles
    bundles=$(k get "$1" "$2" -o jsonpath='{range .webhooks[*]}[{.clientConfig.caBundle}]{"\n"}{end}' 2>/dev/null) ||
        return 1
    [ -n "$bundles" ] && ! grep -qx '\[\]' <<<"$bundles"
}

operator() {
    local image repository tag name kind
    image=$(bash "$here/image.sh" "$base")
    repository=${image%:*}
    tag=${image##*:}
    k get namespace "$jobs_ns" >/dev/null 2>&1 || k create namespace "$jobs_ns" >/dev/null
    k get namespace "$ops_ns" >/dev/null 2>&1 || k create namespace "$ops_ns" >/dev/null
    # Kubernetes sets this label itself from 1.21 on; the webhooks select job namespaces by it.
    k label namespace "$jobs_ns" "kubernetes.io/metadata.name=$jobs_ns" --overwrite >/dev/null
    local -a sets
    sets=(--set "operator.image.repository=$repository" --set "operator.image.tag=$tag")
    sets+=(--set operator.image.pullPolicy=Never --set "operator.jobNamespaces={$jobs_ns}")
    [ -z "${API_SERVER:-}" ] || sets+=(--set "operator.apiServer=$API_SERVER")
    say "installing $root/charts/spark-vllm-platform as $release in $ops_ns with $image"
    # --server-side=false: Helm 4's server-side apply fails against Kubernetes < 1.21.
    "$helm" upgrade --install "$release" "$root/charts/spark-vllm-platform" -n "$ops_ns" \
        "${sets[@]}" --server-side=false --wait --timeout 5m >/dev/null
    name=$release-spark-operator-webhook
    for kind in mutatingwebhookconfiguration validatingwebhookconfiguration; do
        for _ in $(seq 120); do ca_bundled "$kind" "$name" && break; sleep 1; done
        ca_bundled "$kind" "$name" || { say "the webhook did not put its CA into $kind $name"; exit 1; }
    done
    say "the Spark Operator runs in $ops_ns, watching $jobs_ns"
    echo "$image"
}

case ${1:-} in
crds) crds ;;
operator) operator ;;
all) crds; operator ;;
*) echo "usage: $0 crds|operator|all" >&2; exit 2 ;;
esac
