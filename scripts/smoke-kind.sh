#!/usr/bin/env bash
# The kind smoke test: the example chat job, end to end, on a throwaway Kubernetes cluster.
#
# Usage: scripts/smoke-kind.sh          (or `make smoke`; `make smoke VOLCANO=1`)
#
#  1. creates a one-node kind cluster (deleted again at exit);
#  2. builds the CPU image (make build-image VARIANT=cpu) and loads it into the node;
#  3. makes the tiny model (make model) and copies it, and examples/data/questions.jsonl,
#     onto the node's disk, where the job's hostPath volumes find them;
#  4. installs the Spark Operator's CRDs (from its Go module; needs Go) and the operator
#     through our platform chart, charts/spark-vllm-platform, with upstream's image; Volcano
#     (VOLCANO=1) from its own chart repository;
#  5. installs the job (charts/spark-vllm with examples/values/smoke.yaml), runs `helm test`,
#     and waits for the SparkApplication to be COMPLETED;
#  6. checks the output on the node: exactly one row per input id, none with an error.
# On failure it prints the application, the pods, the driver log, the executors' and their
# vLLM sidecars' logs, and the operator's log.
#
# It needs Docker, kind, kubectl and helm, a container registry to pull the kind node, the
# operators and the Debian base from, and the chart repositories: it runs on GitHub Actions
# (.github/workflows/smoke.yml) or a workstation, not on machines without a registry.
#
# Environment:
#   VOLCANO          1: install Volcano too and run the job with batchScheduler volcano
#   SMOKE_CLUSTER    kind cluster name (default spark-vllm-smoke); an existing cluster of
#                    that name is reused and left in place
#   KEEP_CLUSTER     1: do not delete the cluster this script created
#   KIND_NODE_IMAGE  node image (default: the one below, Kubernetes 1.35)
#   SKIP_BUILD       1: use the spark-vllm:dev-cpu image already in Docker
#   SMOKE_TIMEOUT    seconds to wait for the job to finish (default 1500)
#   HELM, KUBECTL, KIND, MAKE, PYTHON   the programs to run (default: found on PATH)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

cluster=${SMOKE_CLUSTER:-spark-vllm-smoke}
volcano=${VOLCANO:-0}
keep=${KEEP_CLUSTER:-0}
timeout=${SMOKE_TIMEOUT:-1500}
# kind v0.31.0's own default node image; Volcano 1.15 supports Kubernetes up to 1.35.
node_image=${KIND_NODE_IMAGE:-kindest/node:v1.35.0@sha256:452d707d4862f52530247495d180205e029056831160e22870e37e3f6c1ac31f}
helm_bin=${HELM:-helm}
kubectl_bin=${KUBECTL:-kubectl}
kind_bin=${KIND:-kind}
make_bin=${MAKE:-make}
python=${PYTHON:-python3}

image=spark-vllm:dev-cpu
values=examples/values/smoke.yaml
input=examples/data/questions.jsonl
ns=spark-jobs
operator_ns=spark-operator
release=smoke # fullnameOverride in $values: the SparkApplication is named "smoke" too
# On the node: the chart's default hostPath model cache, and the data directory that
# $values mounts at /data.
node_models=/var/lib/spark-vllm/models
node_data=/var/lib/spark-vllm/smoke

say() { printf '\nsmoke: %s\n' "$*" >&2; }
failure=""
die() {
    failure=$*
    say "FAILED: $*"
    exit 1
}

case "$volcano" in
    1 | true | yes) volcano=1 ;;
    0 | false | no | "") volcano=0 ;;
    *) die "VOLCANO must be 0 or 1, not '$volcano'" ;;
esac

# --- tools -----------------------------------------------------------------------------
missing=()
for tool in docker "$kind_bin" "$kubectl_bin" "$helm_bin" "$make_bin" "$python"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "missing: ${missing[*]}"
    cat >&2 <<'EOF'
  docker   https://docs.docker.com/engine/install/ (a running Docker engine)
  kind     https://kind.sigs.k8s.io/docs/user/quick-start/#installation (v0.31.0 or later)
  kubectl  https://kubernetes.io/docs/tasks/tools/
  helm     https://helm.sh/docs/intro/install/ (v3.8 or later)
The workflow .github/workflows/smoke.yml installs kind and kubectl on a GitHub runner.
EOF
    exit 2
fi
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed)"

ctx=kind-$cluster
node=$cluster-control-plane
k() { "$kubectl_bin" --context "$ctx" "$@"; }
h() { "$helm_bin" --kube-context "$ctx" "$@"; }

work=$(mktemp -d)
created=0
job_installed=0
reported=0

# --- the failure report ------------------------------------------------------------------
report() {
    reported=1
    set +e
    say "report: the application"
    k -n "$ns" describe sparkapplication "$release"
    say "report: pods"
    k -n "$ns" get pods -o wide
    k -n "$operator_ns" get pods -o wide
    say "report: events in $ns"
    k -n "$ns" get events --sort-by=.lastTimestamp | tail -n 40
    local driver
    driver=$(k -n "$ns" get sparkapplication "$release" -o jsonpath='{.status.driverInfo.podName}' 2>/dev/null)
    if [ -n "$driver" ]; then
        say "report: driver log ($driver)"
        k -n "$ns" logs "$driver" --all-containers --tail=300
    fi
    local pod
    for pod in $(k -n "$ns" get pods -l "app.kubernetes.io/instance=$release,spark-role=executor" -o name 2>/dev/null); do
        say "report: $pod"
        k -n "$ns" describe "$pod"
        say "report: $pod, vLLM sidecar log"
        k -n "$ns" logs "$pod" -c vllm --tail=200
        k -n "$ns" logs "$pod" -c vllm --previous --tail=50 2>/dev/null
        say "report: $pod, executor log"
        k -n "$ns" logs "$pod" -c spark-kubernetes-executor --tail=200
    done
    say "report: Spark Operator log"
    k -n "$operator_ns" logs -l app.kubernetes.io/name=spark-operator --all-containers --prefix --tail=100
    if [ "$volcano" = 1 ]; then
        say "report: Volcano"
        k -n "$ns" get podgroups -o yaml
        k get queues
    fi
    set -e
}

on_exit() {
    local rc=$?
    set +e
    if [ "$rc" -ne 0 ] && [ "$job_installed" = 1 ] && [ "$reported" = 0 ]; then
        report
    fi
    if [ "$created" = 1 ]; then
        if [ "$keep" = 1 ]; then
            say "keeping cluster $cluster (KEEP_CLUSTER=1); delete it with: kind delete cluster --name $cluster"
        else
            say "deleting cluster $cluster"
            "$kind_bin" delete cluster --name "$cluster" >/dev/null 2>&1
        fi
    fi
    rm -rf "$work"
    if [ "$rc" -eq 0 ]; then
        say "PASSED"
    else
        say "FAILED (exit $rc)${failure:+: $failure}"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. the cluster ----------------------------------------------------------------------
if "$kind_bin" get clusters 2>/dev/null | grep -qx "$cluster"; then
    say "reusing the existing kind cluster $cluster (it is left in place)"
else
    say "creating kind cluster $cluster ($node_image)"
    created=1
    "$kind_bin" create cluster --name "$cluster" --image "$node_image" --wait 180s
fi
k get nodes -o wide

# --- 2. the image ------------------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" = 1 ]; then
    say "SKIP_BUILD=1: using the $image already built"
else
    say "building $image"
    IMAGE=$image "$make_bin" build-image VARIANT=cpu
fi
docker image inspect "$image" >/dev/null 2>&1 || die "image $image not found; build it with: make build-image VARIANT=cpu"
say "loading $image into the node (a few minutes for 4 GB)"
"$kind_bin" load docker-image "$image" --name "$cluster"

# --- 3. model and data onto the node -----------------------------------------------------
say "making the tiny model and copying it and $input onto the node"
"$make_bin" model
model_dir=build/models/tiny-llama
[ -f "$model_dir/config.json" ] || die "make model did not write $model_dir"
docker exec "$node" sh -c "rm -rf '$node_models/tiny-llama' '$node_data' \
    && mkdir -p '$node_models' '$node_data/input' '$node_data/output'"
docker cp "$model_dir" "$node:$node_models/tiny-llama"
docker cp "$input" "$node:$node_data/input/questions.jsonl"
# The pods run as uid 185: they read the model and the input (docker cp keeps the files'
# modes, and the weights are written 0600) and write the output.
docker exec "$node" sh -c "chown -R 0:0 '$node_models' '$node_data' \
    && chmod -R a+rX '$node_models' '$node_data' && chown 185:185 '$node_data/output'"

# --- 4. the operators --------------------------------------------------------------------
operators="the Spark Operator"
if [ "$volcano" = 1 ]; then
    operators="the Spark Operator and Volcano"
fi
say "installing $operators (charts/spark-vllm-platform)"
k create namespace "$ns" --dry-run=client -o yaml | k apply -f -
if [ "$volcano" = 1 ]; then
    "$helm_bin" repo add volcano-sh https://volcano-sh.github.io/helm-charts --force-update >/dev/null
    h upgrade --install volcano volcano-sh/volcano --version 1.15.0 \
        --namespace volcano-system --create-namespace --wait --timeout 10m
fi
kubeconfig=$work/kubeconfig
"$kind_bin" get kubeconfig --name "$cluster" >"$kubeconfig"
KUBECONFIG=$kubeconfig KUBECTL=$kubectl_bin HELM=$helm_bin bash scripts/spark-operator/install.sh crds
h upgrade --install spark-vllm-platform charts/spark-vllm-platform \
    --namespace "$operator_ns" --create-namespace \
    --set "operator.jobNamespaces={$ns}" \
    --wait --timeout 10m
k -n "$operator_ns" get pods
if [ "$volcano" = 1 ]; then
    say "waiting for Volcano's default queue"
    for _ in $(seq 60); do
        k get queue default >/dev/null 2>&1 && break
        sleep 5
    done
    k get queue default
fi

# --- 5. the job --------------------------------------------------------------------------
if h -n "$ns" status "$release" >/dev/null 2>&1; then
    say "removing the earlier release $release"
    h -n "$ns" uninstall "$release" --wait --timeout 5m
    k -n "$ns" wait --for=delete pod -l "app.kubernetes.io/instance=$release" --timeout=180s || true
fi
job_args=(-f "$values")
if [ "$volcano" = 1 ]; then job_args+=(--set volcano.enabled=true); fi
say "installing the job: helm install $release charts/spark-vllm -n $ns ${job_args[*]}"
job_installed=1
h install "$release" charts/spark-vllm --namespace "$ns" "${job_args[@]}"

say "helm test $release (the job spec, validated in the image)"
h -n "$ns" test "$release" --logs --timeout 5m

say "waiting for the SparkApplication to complete (up to ${timeout}s)"
deadline=$((SECONDS + timeout))
last=""
while :; do
    state=$(k -n "$ns" get sparkapplication "$release" -o jsonpath='{.status.applicationState.state}' 2>/dev/null || true)
    executors=$(k -n "$ns" get sparkapplication "$release" -o jsonpath='{.status.executorState}' 2>/dev/null || true)
    now="${state:-NEW} ${executors}"
    if [ "$now" != "$last" ]; then
        printf '  %4ds  %s\n' "$((timeout - (deadline - SECONDS)))" "$now" >&2
        last=$now
    fi
    case "$state" in
        COMPLETED) break ;;
        FAILED | SUBMISSION_FAILED)
            msg=$(k -n "$ns" get sparkapplication "$release" -o jsonpath='{.status.applicationState.errorMessage}' 2>/dev/null || true)
            report
            die "the SparkApplication ended $state${msg:+: $msg}"
            ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        report
        die "the SparkApplication is still ${state:-NEW} after ${timeout}s"
    fi
    sleep 10
done

driver=$(k -n "$ns" get sparkapplication "$release" -o jsonpath='{.status.driverInfo.podName}')
say "driver summary ($driver)"
k -n "$ns" logs "$driver" | grep -A 12 'spark-vllm summary' || k -n "$ns" logs "$driver" --tail=30

# --- 6. checks -------------------------------------------------------------------------
say "checking the executor pod: vLLM as a native sidecar, model cache mounted"
k -n "$ns" get pods -l "app.kubernetes.io/instance=$release,spark-role=executor" -o json >"$work/executors.json"
if ! check=$("$python" - "$work/executors.json" 2>&1 <<'PY'
import json
import sys

pods = json.load(open(sys.argv[1]))["items"]
assert pods, "no executor pod found (executor.deleteOnTermination is false in the smoke values)"
for pod in pods:
    name, spec = pod["metadata"]["name"], pod["spec"]
    sidecars = [c for c in spec.get("initContainers", []) if c["name"] == "vllm"]
    assert sidecars, f"{name}: no vllm init container: did the operator's webhook run?"
    assert sidecars[0].get("restartPolicy") == "Always", f"{name}: vllm is not a native sidecar"
    volumes = {v["name"] for v in spec.get("volumes", [])}
    assert {"model-cache", "dshm", "tmp"} <= volumes, f"{name}: volumes {sorted(volumes)}"
    print(f"  {name}: vllm native sidecar, volumes {sorted(volumes)}")
PY
); then
    die "the executor pod: ${check##*AssertionError: }"
fi
printf '%s\n' "$check" >&2

if [ "$volcano" = 1 ]; then
    say "checking that Volcano scheduled the job"
    scheduler=$(k -n "$ns" get pod "$driver" -o jsonpath='{.spec.schedulerName}')
    [ "$scheduler" = volcano ] || die "driver pod $driver was scheduled by '$scheduler', not volcano"
    k -n "$ns" get podgroups
    [ -n "$(k -n "$ns" get podgroups -o name)" ] || die "no Volcano PodGroup in $ns"
fi

say "checking the output: one row per input id, no error"
runs=$(docker exec "$node" sh -c "cd '$node_data/output' && ls -d run=*" || true)
[ "$(printf '%s\n' "$runs" | grep -c '^run=')" = 1 ] || die "expected one run folder in the output, found: ${runs:-none}"
docker exec "$node" test -f "$node_data/output/$runs/_SUCCESS" || die "$runs has no _SUCCESS: the job was not committed"
docker exec "$node" sh -c "cat '$node_data/output/$runs'/part-*.json" >"$work/output.jsonl"
if ! check=$("$python" - "$input" "$work/output.jsonl" 2>&1 <<'PY'
import collections
import json
import sys

with open(sys.argv[1]) as fh:
    wanted = [json.loads(line)["id"] for line in fh if line.strip()]
with open(sys.argv[2]) as fh:
    rows = [json.loads(line) for line in fh if line.strip()]
counts = collections.Counter(row.get("id") for row in rows)
problems = []
missing = sorted(set(wanted) - set(counts))
extra = sorted(set(counts) - set(wanted), key=str)
twice = sorted(i for i, n in counts.items() if n > 1 and i in set(wanted))
errors = [row for row in rows if "error" not in row or row["error"] is not None]
empty = [row for row in rows if row.get("error") is None and not isinstance(row.get("response"), str)]
if missing:
    problems.append(f"{len(missing)} input ids have no output row, e.g. {missing[:5]}")
if extra:
    problems.append(f"{len(extra)} output ids are not in the input, e.g. {extra[:5]}")
if twice:
    problems.append(f"{len(twice)} ids have more than one row, e.g. {twice[:5]}")
if errors:
    problems.append(f"{len(errors)} rows have an error (or no error key), e.g. {errors[:2]}")
if empty:
    problems.append(f"{len(empty)} rows succeeded without a response, e.g. {empty[:2]}")
if problems:
    print("output check failed:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
tokens = sum(row.get("completion_tokens") or 0 for row in rows)
print(f"  {len(rows)} rows for {len(wanted)} input ids, each once, no error; {tokens} tokens out")
PY
); then
    die "$check"
fi
printf '%s\n' "$check" >&2
