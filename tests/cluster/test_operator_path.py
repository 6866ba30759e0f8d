"""The operator path against a real API server: the Spark Operator's own CRDs (pinned) take
the chart's SparkApplication and ScheduledSparkApplication whole, and the driver's
ServiceAccount may do what Spark needs in its namespace and nothing else."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from .kube import Cluster

pytestmark = pytest.mark.cluster

CHART = "charts/spark-vllm"
OPERATOR_RELEASES = {
    # release: (values file, overrides). 1.20 has no native sidecars: classic mode.
    "chat-demo": ("examples/values/chat.yaml", ["--set", "sidecar.mode=classic"]),
    # Volcano's Queue CRD is not installed here; the queue object stays out.
    "nightly-summaries": (
        "examples/values/scheduled.yaml",
        ["--set", "sidecar.mode=classic", "--set", "volcano.createQueue.enabled=false"],
    ),
}


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
def operator_releases(
    cluster: Cluster, operator_crds: list[str], namespace: str
) -> dict[str, list[dict[str, Any]]]:
    """The examples installed through helm with the operator path; what helm sent."""
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
    cluster: Cluster, operator_releases: dict[str, list[dict[str, Any]]], namespace: str
) -> None:
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


def test_driver_service_account_may_do_what_spark_needs_and_nothing_else(
    cluster: Cluster, operator_releases: dict[str, list[dict[str, Any]]], namespace: str
) -> None:
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
    cluster: Cluster, operator_releases: dict[str, list[dict[str, Any]]], namespace: str
) -> None:
    sa = f"system:serviceaccount:{namespace}:spark-vllm-executor"
    for verb, resource in [
        ("get", "pods"),
        ("list", "pods"),
        ("create", "pods"),
        ("get", "configmaps"),
    ]:
        assert not cluster.can_i(verb, resource, namespace, sa), f"executor may {verb} {resource}"
