"""Rendered objects against the authorities: the Spark Operator's own API models
(kubeflow-spark-api), the Kubernetes OpenAPI schemas (kubernetes-validate), and the Prometheus
Operator's PodMonitor CRD (pinned in crds/, validated strictly)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from kubeflow_spark_api.models import (
    SparkV1beta2ScheduledSparkApplication,
    SparkV1beta2SparkApplication,
)

from .render import CASES, MANIFESTS, Rendered, load_docs, operator_pod, pod_monitor_validator

pytestmark = pytest.mark.bundle

# Kubernetes version the core objects are validated against: the oldest one where native
# sidecars are stable (1.33); classic mode also works on older clusters.
KUBERNETES_VERSION = "1.33"

MODELS = {
    "SparkApplication": SparkV1beta2SparkApplication,
    "ScheduledSparkApplication": SparkV1beta2ScheduledSparkApplication,
}
# Custom resources checked against their pinned CRD's schema, strictly: kind -> (apiVersion,
# validator).
CRD_VALIDATORS = {"PodMonitor": ("monitoring.coreos.com/v1", pod_monitor_validator())}
# Not core Kubernetes: checked elsewhere (Volcano's Queue by its own test below).
NOT_CORE = {*MODELS, *CRD_VALIDATORS, "Queue"}


def _check_custom_resource(doc: dict[str, Any]) -> None:
    api_version, validator = CRD_VALIDATORS[doc["kind"]]
    assert doc["apiVersion"] == api_version, doc["apiVersion"]
    errors = [e.message for e in validator.iter_errors(doc)]
    assert not errors, f"{doc['kind']} {doc['metadata']['name']}: {errors}"


def _differences(given: Any, kept: Any, path: str = "") -> list[str]:
    """Where a model round trip lost, added or changed something. The models drop unknown
    keys silently, so a lost key is a misspelled or unsupported field."""
    if isinstance(given, dict) and isinstance(kept, dict):
        found = [f"lost {path}/{k}" for k in given.keys() - kept.keys()]
        found += [f"added {path}/{k}" for k in kept.keys() - given.keys()]
        for key in given.keys() & kept.keys():
            found += _differences(given[key], kept[key], f"{path}/{key}")
        return found
    if isinstance(given, list) and isinstance(kept, list):
        if len(given) != len(kept):
            return [f"length of {path}: {len(given)} became {len(kept)}"]
        return [
            d
            for i, (a, b) in enumerate(zip(given, kept, strict=True))
            for d in _differences(a, b, f"{path}[{i}]")
        ]
    if given != kept or type(given) is not type(kept):
        return [f"{path}: {given!r} became {kept!r}"]
    return []


def test_round_trip_detects_an_unknown_field() -> None:
    """The comparison itself catches a misspelled field (a test of the test)."""
    app = {
        "apiVersion": "sparkoperator.k8s.io/v1beta2",
        "kind": "SparkApplication",
        "metadata": {"name": "x"},
        "spec": {
            "type": "Python",
            "sparkVersion": "4.2.0",
            "mainApplicationFile": "f",
            "driver": {"cores": 1},
            "executor": {"instanses": 2},
        },
    }
    kept = SparkV1beta2SparkApplication.from_dict(app).to_dict()
    assert _differences(app, kept) == ["lost /spec/executor/instanses"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_spark_objects_round_trip_through_the_operator_api_models(
    rendered: dict[str, Rendered], name: str
) -> None:
    apps = [d for d in rendered[name].docs if d["kind"] in MODELS]
    assert apps
    for app in apps:
        kept = MODELS[app["kind"]].from_dict(app).to_dict()
        assert _differences(app, kept) == [], f"{app['kind']} fields the operator does not know"


@pytest.mark.parametrize("path", sorted(p.name for p in MANIFESTS.glob("*.yaml")))
def test_manifests_round_trip_and_validate(path: str) -> None:
    for doc in load_docs(MANIFESTS / path):
        if doc["kind"] in MODELS:
            kept = MODELS[doc["kind"]].from_dict(doc).to_dict()
            assert _differences(doc, kept) == []
        elif doc["kind"] in CRD_VALIDATORS:
            _check_custom_resource(doc)
        elif doc["kind"] not in NOT_CORE:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_core_objects_match_the_kubernetes_schema(rendered: dict[str, Rendered], name: str) -> None:
    for doc in rendered[name].docs:
        if doc["kind"] not in NOT_CORE:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_custom_resources_match_their_pinned_crd(rendered: dict[str, Rendered], name: str) -> None:
    for doc in rendered[name].docs:
        if doc["kind"] in CRD_VALIDATORS:
            _check_custom_resource(doc)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("role", ["driver", "executor"])
def test_pods_the_operator_makes_match_the_kubernetes_schema(
    rendered: dict[str, Rendered], name: str, role: str
) -> None:
    """The sidecar, probes, volumes and security contexts end up in a valid Pod."""
    pod = operator_pod(rendered[name].app_spec(), role, name)
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_volcano_queue_has_only_known_fields(rendered: dict[str, Rendered]) -> None:
    queue = rendered["scheduled"].one("Queue")
    assert queue["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    assert set(queue["spec"]) <= {"weight", "capability", "reclaimable"}
    assert isinstance(queue["spec"]["weight"], int)
    assert all(isinstance(v, str) for v in queue["spec"]["capability"].values())


def _empty_env_values(node: Any, path: str = "") -> list[str]:
    if isinstance(node, dict):
        found = [f"{path}/{node.get('name')}" for k, v in node.items() if k == "value" and v == ""]
        return found + [e for k, v in node.items() for e in _empty_env_values(v, f"{path}/{k}")]
    if isinstance(node, list):
        return [e for i, v in enumerate(node) for e in _empty_env_values(v, f"{path}[{i}]")]
    return []


@pytest.mark.parametrize("name", sorted(CASES))
def test_spark_objects_carry_no_empty_env_value(rendered: dict[str, Rendered], name: str) -> None:
    """The API server (seen on Kubernetes 1.20 with the v2.5.2 CRDs) refused a SparkApplication
    whose driver env held `value: ""` ("spec.driver.env.value: Invalid value: "null""),
    which the operator's API models and the CRD's schema both let through."""
    for doc in rendered[name].docs:
        if doc["kind"] in MODELS:
            assert not _empty_env_values(doc["spec"]), _empty_env_values(doc["spec"])
