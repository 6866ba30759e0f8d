"""The names the code shares with the chart (spark_vllm.cluster.chart) are what the chart
renders: on the operator path, the operator-less path and the sidecar's two modes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spark_vllm.cluster import chart
from tests.bundle.render import SUBMIT_CASES, Rendered, containers_of, render

pytestmark = pytest.mark.bundle

VALUES = Path(__file__).resolve().parents[2] / "charts" / "spark-vllm" / "values.yaml"


def test_the_charts_name_and_the_sidecars_default_port() -> None:
    chart_yaml = yaml.safe_load((VALUES.parent / "Chart.yaml").read_text())
    assert chart_yaml["name"] == chart.CHART_NAME
    assert yaml.safe_load(VALUES.read_text())["sidecar"]["port"] == chart.SIDECAR_PORT


@pytest.mark.parametrize("case", ["chat", "classic-sidecar", "scheduled"])
def test_the_operator_paths_names(rendered: dict[str, Rendered], case: str) -> None:
    release = rendered[case]
    apps = release.of_kind("SparkApplication") + release.of_kind("ScheduledSparkApplication")
    (app,) = apps
    assert app["apiVersion"] == f"{chart.APP_GROUP}/{chart.APP_VERSION}"
    assert app["metadata"]["labels"][chart.INSTANCE_LABEL] == case
    spec = release.app_spec()
    executor = spec["executor"]
    named = [
        c["name"] for c in [*executor.get("initContainers", []), *executor.get("sidecars", [])]
    ]
    assert chart.SIDECAR_CONTAINER in named
    # the pods the operator's Spark creates carry the release's label too
    assert spec["driver"]["labels"][chart.INSTANCE_LABEL] == case
    assert executor["labels"][chart.INSTANCE_LABEL] == case


@pytest.mark.parametrize("case", ["submit-chat", "submit-classic"])
def test_the_operator_less_paths_names(helm: str, case: str) -> None:
    release = render(helm, case, SUBMIT_CASES[case])
    (job,) = release.of_kind("Job")
    assert job["metadata"]["labels"][chart.INSTANCE_LABEL] == case
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[chart.COMPONENT_LABEL] == chart.SUBMITTER_COMPONENT
    assert pod_labels[chart.INSTANCE_LABEL] == case
    properties = release.spark_properties()
    for role, container in (
        ("driver", chart.DRIVER_CONTAINER),
        ("executor", chart.EXECUTOR_CONTAINER),
    ):
        assert properties[f"spark.kubernetes.{role}.podTemplateContainerName"] == container
        template = release.pod_template(role)
        assert container in [c["name"] for c in containers_of(template)]
        assert template["metadata"]["labels"][chart.INSTANCE_LABEL] == case
    executor = release.pod_template("executor")
    assert chart.SIDECAR_CONTAINER in [c["name"] for c in containers_of(executor)]
