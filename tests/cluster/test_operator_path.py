"""The operator path against a real API server and the real Spark Operator v2.5.2 (built from
its Go module, run in the node by the platform chart): the operator's own CRDs take the
chart's SparkApplication and ScheduledSparkApplication whole, the driver's ServiceAccount may
do what Spark needs in its namespace and nothing else, and `helm install` of a job runs it
through the operator's webhook and controller to COMPLETED."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from deltalake import DeltaTable

from .jobs import Job, chat_job, make_job, questions, rendered_application, until
from .kube import Cluster, Obj, Operator, pod_containers, started_at, wait_for

pytestmark = pytest.mark.cluster

CHART = "charts/spark-vllm"
OPERATOR_RELEASES = {
    # release: (values file, overrides); the chart's defaults (native sidecars) otherwise.
    "chat-demo": ("examples/values/chat.yaml", []),
    # Volcano's Queue CRD is not installed here; the queue object stays out.
    "nightly-summaries": (
        "examples/values/scheduled.yaml",
        ["--set", "volcano.createQueue.enabled=false"],
    ),
}


def parse_time(text: str) -> datetime:
    """An RFC 3339 time as the API server and `kubectl logs --timestamps` write it."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _lost(sent: Any, stored: Any, path: str = "") -> list[str]:
    """Fields sent but not stored as sent: a CRD schema prunes the fields it does not know."""
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [f"{path}: {stored!r}"]
        return [d for k, v in sent.items() for d in _lost(v, stored.get(k), f"{path}/{k}")]
    if isinstance(sent, list):
        if not isinstance(stored, list) or len(stored) != len(sent):
            return [f"{path}: list of {len(sent)} became {stored!r}"]
        return [
            d
            for i, (a, b) in enumerate(zip(sent, stored, strict=True))
            for d in _lost(a, b, f"{path}[{i}]")
        ]
    return [] if sent == stored else [f"{path}: {sent!r} became {stored!r}"]


@pytest.fixture(scope="module")
def stored_namespace(cluster: Cluster, operator_crds: None) -> str:
    """A namespace the operator does not watch: the examples' applications are stored as
    sent (no webhook defaults them) and not run (they ask for GPUs and models from the
    internet)."""
    name = "spark-stored"
    cluster.kubectl("create", "namespace", name)
    wait_for(
        "the namespace's default ServiceAccount",
        lambda: cluster.find("serviceaccount", "default", name),
        60,
    )
    return name


@pytest.fixture(scope="module")
def operator_releases(cluster: Cluster, stored_namespace: str) -> dict[str, list[dict[str, Any]]]:
    """The examples installed through helm with the operator path; what helm sent."""
    namespace = stored_namespace
    sent = {}
    for release, (values, overrides) in OPERATOR_RELEASES.items():
        # --skip-crds: the CRDs are the fixture's. --server-side=false: see kube.py.
        cluster.helm(
            "install", release, CHART, "-n", namespace, "-f", values, *overrides,
            "--skip-crds", "--server-side=false",
        )  # fmt: skip
        manifest = cluster.helm("get", "manifest", release, "-n", namespace).stdout
        sent[release] = [d for d in yaml.safe_load_all(manifest) if d]
    return sent


def test_api_server_stores_every_object_the_operator_path_renders_unpruned(
    cluster: Cluster, operator_releases: dict[str, list[dict[str, Any]]], stored_namespace: str
) -> None:
    namespace = stored_namespace
    kinds = set()
    for release, docs in operator_releases.items():
        for doc in docs:
            kind, name = doc["kind"], doc["metadata"]["name"]
            kinds.add(kind)
            stored = cluster.find(kind, name, namespace)
            assert stored is not None, f"{release}: {kind} {name} was not created"
            for part in ("spec", "data", "rules", "roleRef", "subjects"):
                if part in doc:
                    lost = _lost(doc[part], stored.get(part))
                    assert not lost, f"{release}: {kind} {name} lost fields: {lost[:10]}"
    assert {"SparkApplication", "ScheduledSparkApplication", "ConfigMap", "Role"} <= kinds


def test_the_operators_crd_keeps_a_native_sidecar(cluster: Cluster, stored_namespace: str) -> None:
    """The chart's default sidecar is native: an init container with `restartPolicy:
    Always`. The operator's CRD stores the field as sent (the jobs of
    test_helm_install_runs_through_the_operators_webhook_and_controller_to_completed run it)."""
    app = rendered_application(
        cluster, "chat-native", stored_namespace, "-f", "examples/values/chat.yaml",
        "--set", "fullnameOverride=chat-native",
    )  # fmt: skip
    cluster.kubectl("create", "-n", stored_namespace, "-f", "-", stdin=yaml.safe_dump(app))
    stored = cluster.find("sparkapplication", app["metadata"]["name"], stored_namespace) or {}
    (vllm,) = stored["spec"]["executor"]["initContainers"]
    assert (vllm["name"], vllm.get("restartPolicy")) == ("vllm", "Always"), vllm
    assert not _lost(app["spec"], stored["spec"])


def test_driver_service_account_may_do_what_spark_needs_and_nothing_else(
    cluster: Cluster, operator_releases: dict[str, list[dict[str, Any]]], stored_namespace: str
) -> None:
    namespace = stored_namespace
    sa = f"system:serviceaccount:{namespace}:spark-vllm-driver"
    # What Spark's driver does: executor pods, their ConfigMaps and on-demand PVCs, Services.
    # On the operator path the operator's own account runs spark-submit, and with executors
    # deleted on termination (the default) the driver patches and updates nothing
    # (tests/bundle/test_rbac.py has the other cases).
    resources = ("pods", "services", "configmaps", "persistentvolumeclaims")
    verbs = ("create", "get", "list", "watch", "delete", "deletecollection")
    allowed = [(verb, resource) for resource in resources for verb in verbs]
    refused = [
        *[(verb, resource) for resource in resources for verb in ("update", "patch")],
        ("get", "secrets"),
        ("list", "secrets"),
        ("create", "pods/exec"),
        ("get", "pods/log"),
        ("create", "serviceaccounts"),
        ("create", "roles"),
        ("create", "rolebindings"),
        ("create", "jobs"),
        ("create", "sparkapplications.sparkoperator.k8s.io"),
        ("list", "nodes"),
        ("get", "namespaces"),
    ]
    wrong = [f"{v} {r}: refused" for v, r in allowed if not cluster.can_i(v, r, namespace, sa)]
    wrong += [f"{v} {r}: allowed" for v, r in refused if cluster.can_i(v, r, namespace, sa)]
    # Namespaced: nothing in another namespace.
    wrong += [
        f"{v} pods in default: allowed"
        for v in ("create", "list")
        if cluster.can_i(v, "pods", "default", sa)
    ]
    assert not wrong, wrong


def test_executor_service_account_may_do_nothing(
    cluster: Cluster, operator_releases: dict[str, list[dict[str, Any]]], stored_namespace: str
) -> None:
    namespace = stored_namespace
    sa = f"system:serviceaccount:{namespace}:spark-vllm-executor"
    for verb, resource in [
        ("get", "pods"),
        ("list", "pods"),
        ("create", "pods"),
        ("get", "configmaps"),
    ]:
        assert not cluster.can_i(verb, resource, namespace, sa), f"executor may {verb} {resource}"


def operator_report(cluster: Cluster, operator: Operator, job: Job) -> str:
    """What went on, for a failing assertion: the application's status, the pods, the
    controller's and the driver's logs."""
    app = cluster.find("sparkapplication", job.name, job.namespace) or {}
    controller = cluster.kubectl(
        "logs", f"deploy/{operator.controller}", "-n", operator.namespace, "--tail=60",
        check=False,
    )  # fmt: skip
    pods = cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
    return (
        f"--- status ---\n{json.dumps(app.get('status'), indent=1)[-3000:]}\n--- pods ---\n{pods}"
        f"\n--- controller ---\n{controller.stdout[-4000:]}{controller.stderr[-500:]}"
        f"\n--- driver ---\n{job.logs(job.driver)[-4000:]}"
    )


def test_helm_install_runs_through_the_operators_webhook_and_controller_to_completed(
    cluster: Cluster,
    spark_operator: Operator,
    node_gpus: int,
    namespace: str,
    image: str,
    model_root: Path,
    tmp_path: Path,
) -> None:
    """The chart's default path for real: helm installs a SparkApplication, the operator's
    webhook accepts it, its controller runs spark-submit, the webhook adds the vLLM sidecar
    and the model volume to the executor pod, and the application ends COMPLETED with one
    row per input id. One GPU per executor, as the chart's defaults ask: the node advertises
    GPUs (node_gpus), the sidecar carries the limit and the executor's Spark container none.
    The sidecar is native (the chart's default) and behaves so on the node's kubelet: the
    executor's container starts only after vLLM logged its start-up and passed its
    startupProbe. The answers go into a Delta table, committed once by the driver: the
    image carries the connector for the driver and the executors."""
    rows = 24
    output = {"format": "delta", "path": "/data/output", "keep_columns": ["question"]}
    job = make_job(
        cluster, namespace, "op-chat", tmp_path, image, model_root, rows,
        chat_job(output=output), extra={"operator": {"enabled": True}},
    )  # fmt: skip
    job.set_gpus(1)
    # Kept when it ends, so that its last state is seen: the pod ends with the executor.
    values = yaml.safe_load(job.values_file.read_text())
    values["executor"]["deleteOnTermination"] = False
    job.values_file.write_text(yaml.safe_dump(values))
    job.install()
    seen: dict[str, Any] = {}

    def ended() -> str | None:
        for pod in job.executors():
            seen.setdefault("executor", pod)
            if "order" not in seen and (started := started_at(pod, "spark-kubernetes-executor")):
                logs = job.cluster.kubectl(
                    "logs", pod["metadata"]["name"], "-n", namespace, "-c", "vllm",
                    "--timestamps", check=False,
                ).stdout  # fmt: skip
                ready = [
                    line.split(" ", 1)[0]
                    for line in logs.splitlines()
                    if "Application startup complete" in line
                ]
                seen["order"] = (ready[0] if ready else None, started)
        app = cluster.find("sparkapplication", job.name, namespace) or {}
        seen["app"] = app
        state = ((app.get("status") or {}).get("applicationState") or {}).get("state")
        return state if state in ("COMPLETED", "FAILED", "SUBMISSION_FAILED") else None

    try:
        state = until("the SparkApplication's end", ended, 900, every=3)
        assert state == "COMPLETED", operator_report(cluster, spark_operator, job)
        status = seen["app"]["status"]
        assert status["driverInfo"]["podName"] == job.driver
        # The webhook's work, in the executor pod the API server stored.
        executor = seen.get("executor")
        assert executor is not None, operator_report(cluster, spark_operator, job)
        assert executor["metadata"]["labels"]["sparkoperator.k8s.io/launched-by-spark-operator"]
        containers = pod_containers(executor)
        assert sorted(containers) == ["spark-kubernetes-executor", "vllm"]
        vllm = containers["vllm"]
        assert vllm.get("restartPolicy") == "Always", vllm  # native, through the webhook
        host = vllm["args"][vllm["args"].index("--host") + 1]
        assert host == "127.0.0.1", vllm["args"]
        assert "/models" in {m["mountPath"] for m in vllm.get("volumeMounts", [])}
        assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
        spark = containers["spark-kubernetes-executor"]["resources"]
        assert "nvidia.com/gpu" not in {**spark.get("limits", {}), **spark.get("requests", {})}
        # Exactly one row per input id, none failed, in one Delta commit naming its run.
        runs = job.rows_by_run()
        writes = [c for c in DeltaTable(str(job.output)).history() if c["operation"] == "WRITE"]
        assert [c.get("userMetadata") for c in writes] == [
            f"spark-vllm run {key.removeprefix('run=')}" for key in runs
        ]
        assert len(runs) == 1, runs.keys()
        (answers,) = runs.values()
        assert sorted(r["id"] for r in answers) == sorted(q["id"] for q in questions(rows))
        assert not [r for r in answers if r["error"] is not None]
        # Native sidecar: the executor's container started after vLLM was up.
        ready, started = seen.get("order") or (None, None)
        assert ready and started, (seen.get("order"), operator_report(cluster, spark_operator, job))
        assert parse_time(started) >= parse_time(ready).replace(microsecond=0), (ready, started)
        # Native sidecar: when the executor exits, the kubelet stops vLLM and the pod ends
        # Succeeded; nothing lingers.
        name = executor["metadata"]["name"]

        def executor_pod_ended() -> Obj | None:
            pod = cluster.find("pod", name, namespace) or {}
            phase = (pod.get("status") or {}).get("phase")
            return pod if phase in ("Succeeded", "Failed") else None

        pod = until("the executor pod's end", executor_pod_ended, 180, every=2)
        statuses = {
            s["name"]: s.get("state", {})
            for s in pod["status"].get("containerStatuses", [])
            + pod["status"].get("initContainerStatuses", [])
        }
        assert pod["status"]["phase"] == "Succeeded", statuses
        assert statuses.keys() == {"spark-kubernetes-executor", "vllm"}, statuses
        assert all("terminated" in state for state in statuses.values()), statuses
        assert statuses["spark-kubernetes-executor"]["terminated"]["exitCode"] == 0, statuses
    finally:
        job.uninstall()
        cluster.kubectl(
            "delete", "sparkapplication", job.name, "-n", namespace, "--ignore-not-found",
            check=False,
        )  # fmt: skip
