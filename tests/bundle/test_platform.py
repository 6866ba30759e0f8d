"""The platform chart: the Spark Operator v2.5.2 from the project's own manifests, rendered
by helm and checked for what the cluster tier cannot show on one node: each account's
rights, the restricted containers, the webhook's selectors and the API server override.
The cluster tier runs the same chart with the operator built from its module."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from .render import CHART, PLATFORM_CHART, Rendered, run_helm

pytestmark = pytest.mark.bundle

Obj = dict[str, Any]


def render(helm: str, *sets: str) -> list[Obj]:
    args = [a for s in sets for a in ("--set", s)]
    proc = run_helm(helm, "template", "p", str(PLATFORM_CHART), "-n", "ops", *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[Obj], kind: str) -> dict[str, Obj]:
    return {
        f"{d['metadata'].get('namespace', '')}/{d['metadata']['name']}": d
        for d in docs
        if d["kind"] == kind
    }


def test_platform_chart_has_no_dependency_charts_and_lints(helm: str) -> None:
    """Helm refuses to render a chart whose dependency charts are missing from charts/,
    even with their conditions false: neither chart has any."""
    for chart in (CHART, PLATFORM_CHART):
        assert "dependencies" not in yaml.safe_load((chart / "Chart.yaml").read_text())
    lint = run_helm(helm, "lint", str(PLATFORM_CHART))
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_operator_defaults_are_upstreams_image_and_one_job_namespace(helm: str) -> None:
    docs = render(helm)
    deployments = by_kind(docs, "Deployment")
    assert sorted(deployments) == [
        "ops/p-spark-operator-controller",
        "ops/p-spark-operator-webhook",
    ]
    for deployment in deployments.values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "ghcr.io/kubeflow/spark-operator/controller:2.5.2"
        assert "--namespaces=spark-jobs" in container["args"]
        assert "env" not in container, "no API server override by default"
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["runAsNonRoot"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
    controller = deployments["ops/p-spark-operator-controller"]["spec"]["template"]["spec"]
    assert controller["containers"][0]["args"][:2] == ["controller", "start"]
    webhook = deployments["ops/p-spark-operator-webhook"]["spec"]["template"]["spec"]
    args = webhook["containers"][0]["args"]
    assert args[:2] == ["webhook", "start"]
    assert "--webhook-svc-name=p-spark-operator-webhook" in args
    assert "--mutating-webhook-name=p-spark-operator-webhook" in args
    assert "ops/p-spark-operator-webhook" in by_kind(docs, "Service")


def test_operator_rights_are_namespaced_but_for_its_own_webhook_configurations(helm: str) -> None:
    docs = render(helm, "operator.jobNamespaces={jobs-a,jobs-b}")
    roles = by_kind(docs, "Role")
    assert sorted(roles) == [
        "jobs-a/p-spark-operator-controller", "jobs-a/p-spark-operator-webhook",
        "jobs-b/p-spark-operator-controller", "jobs-b/p-spark-operator-webhook",
        "ops/p-spark-operator-webhook-certs",
    ]  # fmt: skip
    # No account of the operator reads Secrets in a job namespace; the webhook's one Secret is
    # named.
    for key, role in roles.items():
        for rule in role["rules"]:
            if "secrets" in rule["resources"]:
                assert key == "ops/p-spark-operator-webhook-certs"
                assert rule["verbs"] == ["create"] or rule["resourceNames"] == [
                    "p-spark-operator-webhook-certs"
                ]
    cluster_roles = by_kind(docs, "ClusterRole")
    assert set(cluster_roles) == {"/p-spark-operator-webhook", "/p-spark-operator-controller"}
    cluster_role = cluster_roles["/p-spark-operator-webhook"]
    writes = [r for r in cluster_role["rules"] if set(r["verbs"]) & {"update", "patch", "create"}]
    assert writes and all(r["resourceNames"] == ["p-spark-operator-webhook"] for r in writes)
    # The controller may read one object of the cluster: the Volcano PodGroup CRD, which it
    # checks before it makes a job's PodGroup (batch scheduler on, the default).
    assert cluster_roles["/p-spark-operator-controller"]["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "resourceNames": ["podgroups.scheduling.volcano.sh"],
            "verbs": ["get"],
        }
    ]
    assert set(by_kind(docs, "ClusterRoleBinding")) == set(cluster_roles)
    # Without the batch scheduler, the webhook's right is the only cluster-wide one.
    docs = render(helm, "operator.controller.batchScheduler=false")
    assert set(by_kind(docs, "ClusterRole")) == {"/p-spark-operator-webhook"}


def test_webhooks_select_the_job_namespaces_and_only_the_operators_pods(helm: str) -> None:
    docs = render(
        helm, "operator.jobNamespaces={jobs-a,jobs-b}", "operator.webhook.failurePolicy=Ignore"
    )
    (mutating,) = by_kind(docs, "MutatingWebhookConfiguration").values()
    (validating,) = by_kind(docs, "ValidatingWebhookConfiguration").values()
    hooks = mutating["webhooks"] + validating["webhooks"]
    assert len(hooks) == 5
    for hook in hooks:
        assert hook["failurePolicy"] == "Ignore"
        (expression,) = hook["namespaceSelector"]["matchExpressions"]
        assert expression == {
            "key": "kubernetes.io/metadata.name", "operator": "In", "values": ["jobs-a", "jobs-b"]
        }  # fmt: skip
        assert hook["clientConfig"]["service"]["name"] == "p-spark-operator-webhook"
        assert "caBundle" not in hook["clientConfig"], "the webhook writes its own CA"
    pods = next(h for h in mutating["webhooks"] if h["rules"][0]["resources"] == ["pods"])
    assert pods["objectSelector"]["matchLabels"] == {
        "sparkoperator.k8s.io/launched-by-spark-operator": "true"
    }


def test_api_server_override_reaches_both_processes(helm: str) -> None:
    docs = render(helm, "operator.apiServer=https://10.1.2.3:6443")
    for deployment in by_kind(docs, "Deployment").values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["env"] == [
            {"name": "KUBERNETES_SERVICE_HOST", "value": "10.1.2.3"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"},
        ]
    default_port = render(helm, "operator.apiServer=https://api.example.com")
    container = by_kind(default_port, "Deployment")["ops/p-spark-operator-webhook"]
    env = container["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[1] == {"name": "KUBERNETES_SERVICE_PORT", "value": "443"}


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("operator.apiServer=http://10.1.2.3:6443", "/operator/apiServer"),
        ("operator.jobNamespaces=null", "/operator"),
        ("operator.webhook.failurePolicy=Sometimes", "/operator/webhook/failurePolicy"),
    ],
)
def test_bad_values_are_refused_naming_the_value(helm: str, setting: str, expected: str) -> None:
    proc = run_helm(helm, "template", "p", str(PLATFORM_CHART), "--set", setting)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr


def test_operator_off_renders_nothing_but_notes(helm: str) -> None:
    assert render(helm, "operator.enabled=false") == []


# The sparkConf keys the operator's validating webhook refuses in a SparkApplication (v2.5.2:
# internal/webhook/sparkconf_validator.go), each "managed by the operator" or set through a
# field of the spec. The cluster tier met the first one: the chart once put
# spark.kubernetes.driver.master there, and every install of it was refused.
OPERATOR_DENIED_SPARK_CONF = {
    "spark.master",
    "spark.kubernetes.driver.master",
    "spark.kubernetes.container.image",
    "spark.kubernetes.driver.container.image",
    "spark.kubernetes.executor.container.image",
    "spark.kubernetes.authenticate.driver.serviceAccountName",
    "spark.kubernetes.authenticate.executor.serviceAccountName",
    "spark.kubernetes.authenticate.oauthTokenFile",
    "spark.kubernetes.authenticate.oauthToken",
    "spark.kubernetes.authenticate.driver.oauthTokenFile",
    "spark.kubernetes.authenticate.driver.oauthToken",
    "spark.kubernetes.authenticate.executor.oauthTokenFile",
    "spark.kubernetes.authenticate.executor.oauthToken",
}


def test_no_spark_application_sets_a_key_the_operators_webhook_refuses(
    rendered: dict[str, Rendered],
) -> None:
    apps = {
        name: r.app_spec()
        for name, r in rendered.items()
        if not name.startswith(("submit", "notebook"))
    }
    assert len(apps) > 10
    for name, spec in apps.items():
        refused = OPERATOR_DENIED_SPARK_CONF & set(spec.get("sparkConf", {}))
        assert not refused, f"{name}: the operator's webhook refuses sparkConf {sorted(refused)}"
        namespace = spec.get("sparkConf", {}).get("spark.kubernetes.namespace")
        assert namespace in (None, "default"), f"{name}: spark.kubernetes.namespace {namespace}"


def test_api_server_reaches_the_driver_through_the_spec_on_the_operator_path(
    rendered: dict[str, Rendered],
) -> None:
    spec = rendered["api-server"].app_spec()
    assert spec["driver"]["kubernetesMaster"] == "https://10.0.0.1:6443"
    assert "kubernetesMaster" not in rendered["smoke"].app_spec()["driver"]
    conf = spec["sparkConf"]
    assert conf["spark.kubernetes.executor.useDriverPodIP"] == "true"
    assert conf["spark.kubernetes.driver.pod.excludedFeatureSteps"].split(",") == [
        "org.apache.spark.deploy.k8s.features.DriverServiceFeatureStep",
        "org.apache.spark.deploy.k8s.features.NetworkPolicyFeatureStep",
    ]
