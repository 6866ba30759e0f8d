"""The operator-less path (operator.enabled false): a Job running spark-submit, with the Spark
configuration and the pod templates carrying what the operator path would give the pods.

Each rendering is compared with the operator path's rendering of the same values, so the two
paths cannot drift apart; the cluster tier runs this path in real pods."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from .render import (
    CHART,
    SUBMIT_CASES,
    Case,
    Rendered,
    containers_of,
    render,
    run_helm,
    spark_pod,
    vllm_container,
)

pytestmark = pytest.mark.bundle

KUBERNETES_VERSION = "1.33"


@pytest.fixture(scope="module")
def submit(helm: str) -> dict[str, Rendered]:
    return {name: render(helm, name, case) for name, case in SUBMIT_CASES.items()}


@pytest.fixture(scope="module")
def operator(helm: str) -> dict[str, Rendered]:
    """The same values with operator.enabled left on: what the two paths must agree on."""
    found = {}
    for name, case in SUBMIT_CASES.items():
        kept = tuple((k, v) for k, v in case.overrides if k != "operator.enabled")
        if ("restartPolicy.type", "OnFailure") not in kept:
            found[name] = render(helm, name, Case(case.values_file, kept))
    return found


@pytest.mark.parametrize("name", sorted(SUBMIT_CASES))
def test_renders_a_job_and_no_spark_application(submit: dict[str, Rendered], name: str) -> None:
    kinds = sorted(d["kind"] for d in submit[name].docs)
    assert "SparkApplication" not in kinds and "ScheduledSparkApplication" not in kinds
    assert kinds.count("Job") == 1
    dashboard = bool(dict(SUBMIT_CASES[name].overrides).get("metrics.enabled"))
    # the job spec, spark-submit's files (and Grafana's dashboard)
    assert kinds.count("ConfigMap") == 2 + dashboard
    assert "Pod" in kinds  # the helm test hook
    for doc in submit[name].docs:
        if doc["kind"] != "PodMonitor":  # a custom resource: test_metrics.py checks it (CRD)
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(SUBMIT_CASES))
@pytest.mark.parametrize("role", ["driver", "executor"])
def test_pod_templates_are_valid_pods(submit: dict[str, Rendered], name: str, role: str) -> None:
    kubernetes_validate.validate(submit[name].pod_template(role), KUBERNETES_VERSION, strict=True)


def test_spark_configuration_is_what_the_operator_derives_from_the_application(
    submit: dict[str, Rendered], operator: dict[str, Rendered]
) -> None:
    for name, rendered in operator.items():
        app = rendered.app_spec()
        props = submit[name].spark_properties()
        expected = {
            "spark.kubernetes.container.image": app["image"],
            "spark.kubernetes.container.image.pullPolicy": app["imagePullPolicy"],
            "spark.kubernetes.authenticate.driver.serviceAccountName": app["driver"][
                "serviceAccount"
            ],
            "spark.kubernetes.authenticate.executor.serviceAccountName": app["executor"][
                "serviceAccount"
            ],
            "spark.driver.cores": str(app["driver"]["cores"]),
            "spark.driver.memory": app["driver"]["memory"],
            "spark.driver.memoryOverhead": app["driver"]["memoryOverhead"],
            "spark.executor.cores": str(app["executor"]["cores"]),
            "spark.executor.memory": app["executor"]["memory"],
            "spark.executor.memoryOverhead": app["executor"]["memoryOverhead"],
            "spark.kubernetes.executor.deleteOnTermination": str(
                app["executor"]["deleteOnTermination"]
            ).lower(),
            **app.get("sparkConf", {}),
            **{f"spark.hadoop.{k}": v for k, v in app.get("hadoopConf", {}).items()},
        }
        if "instances" in app["executor"]:
            expected["spark.executor.instances"] = str(app["executor"]["instances"])
        if app.get("imagePullSecrets"):
            expected["spark.kubernetes.container.image.pullSecrets"] = ",".join(
                app["imagePullSecrets"]
            )
        wrong = {k: (v, props.get(k)) for k, v in expected.items() if props.get(k) != v}
        assert not wrong, f"{name}: {wrong}"
        # The driver is reached by its pod IP: no cluster DNS needed for executors, and no
        # driver Service (which Spark 4 creates by a server-side apply 1.20 refuses); the
        # chart's NetworkPolicies replace Spark's own, so the Role needs no rights on them.
        assert props["spark.kubernetes.executor.useDriverPodIP"] == "true"
        assert props["spark.kubernetes.driver.pod.excludedFeatureSteps"] == (
            "org.apache.spark.deploy.k8s.features.DriverServiceFeatureStep,"
            "org.apache.spark.deploy.k8s.features.NetworkPolicyFeatureStep"
        )
        assert props["spark.kubernetes.submission.waitAppCompletion"] == "true"


def test_dynamic_allocation_tracks_shuffle_files_without_the_operator(
    submit: dict[str, Rendered],
) -> None:
    props = submit["submit-dynamic"].spark_properties()
    assert props["spark.dynamicAllocation.enabled"] == "true"
    assert props["spark.dynamicAllocation.shuffleTracking.enabled"] == "true"
    assert props["spark.dynamicAllocation.shuffleTracking.timeout"] == "60000ms"
    assert "spark.executor.instances" not in props


@pytest.mark.parametrize(
    "name", ["submit-chat", "submit-classic", "submit-smoke", "submit-api-key"]
)
def test_executor_template_carries_what_the_webhook_would_add(
    submit: dict[str, Rendered], operator: dict[str, Rendered], name: str
) -> None:
    app = operator[name].app_spec()
    template = submit[name].pod_template("executor")
    spec = template["spec"]
    containers = {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}
    assert set(containers) == {"spark-kubernetes-executor", "vllm"}
    assert containers["vllm"] == vllm_container(app), "the sidecar differs between the paths"
    native = "initContainers" in app["executor"]
    assert ("vllm" in {c["name"] for c in spec.get("initContainers", [])}) == native
    executor = app["executor"]
    assert spec["securityContext"] == executor["podSecurityContext"]
    spark = containers["spark-kubernetes-executor"]
    assert spark["securityContext"] == executor["securityContext"]
    assert spark.get("env", []) == executor.get("env", [])
    assert spec.get("tolerations", []) == executor.get("tolerations", [])
    assert spec["automountServiceAccountToken"] is False
    volumes = [v for v in app["volumes"] if v["name"] != "job-spec"]
    assert spec["volumes"] == volumes
    labels = template["metadata"]["labels"]
    assert labels.items() >= executor["labels"].items()


@pytest.mark.parametrize("name", ["submit-chat", "submit-smoke"])
def test_driver_template_mounts_the_job_spec_like_the_operator_path(
    submit: dict[str, Rendered], operator: dict[str, Rendered], name: str
) -> None:
    app = operator[name].app_spec()
    spec = submit[name].pod_template("driver")["spec"]
    (spark,) = spec["containers"]
    assert spark["name"] == "spark-kubernetes-driver"
    assert spark["volumeMounts"] == app["driver"]["volumeMounts"]
    assert spark["securityContext"] == app["driver"]["securityContext"]
    assert spark.get("env", []) == app["driver"].get("env", [])
    assert spec["securityContext"] == app["driver"]["podSecurityContext"]
    declared = {v["name"]: v for v in app["volumes"]}
    assert spec["volumes"] == [declared["job-spec"], declared["tmp"]]


def test_submitter_runs_spark_submit_locked_down_under_the_drivers_account(
    submit: dict[str, Rendered],
) -> None:
    rendered = submit["submit-smoke"]
    job = rendered.one("Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "smoke-driver"
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["args"][:3] == [
        "submit",
        "--properties-file",
        "/etc/spark-vllm/submit/spark.properties",
    ]
    assert container["args"][3:] == [
        "local:///opt/spark-vllm/jobs/batch_infer.py",
        "/etc/spark-vllm/job.yaml",
    ]
    context = container["securityContext"]
    assert (
        context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    )
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SPARK_VLLM_DRIVER_POD"] == "smoke-driver"
    assert "SPARK_VLLM_API_SERVER" not in env  # the kubernetes Service, by default
    assert job["spec"]["backoffLimit"] == 0


def test_restart_policy_on_failure_becomes_the_jobs_retries(submit: dict[str, Rendered]) -> None:
    job = submit["submit-dynamic"].one("Job")
    assert job["spec"]["backoffLimit"] == 2


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("schedule.cron", "0 3 * * *", "schedule.cron needs the Spark Operator"),
        ("volcano.enabled", True, "volcano.enabled needs the Spark Operator"),
        ("restartPolicy.type", "Always", "restartPolicy.type Always has no operator-less form"),
    ],
)
def test_what_needs_the_operator_is_refused_not_dropped(
    helm: str, key: str, value: Any, message: str
) -> None:
    case = Case("chat.yaml", (("operator.enabled", False), (key, value)))
    result = run_helm(helm, "template", "t", str(CHART), *case.helm_args())
    assert result.returncode != 0
    assert message in result.stderr


def test_native_sidecar_is_refused_below_1_29_without_the_operator_too(helm: str) -> None:
    case = Case("chat.yaml", (("operator.enabled", False),))
    result = run_helm(
        helm, "template", "t", str(CHART), *case.helm_args(), "--kube-version", "1.20.2"
    )
    assert result.returncode != 0
    assert "set sidecar.mode=classic" in result.stderr


@pytest.mark.parametrize("name", sorted(SUBMIT_CASES))
def test_every_pod_of_the_path_runs_locked_down(submit: dict[str, Rendered], name: str) -> None:
    """The pods Spark builds from the templates, and the spark-submit pod, as the operator
    path's pods: non-root, no privilege escalation, no capabilities, read-only roots."""
    rendered = submit[name]
    props = rendered.spark_properties()
    pods = [
        spark_pod(rendered.pod_template(r), props, r, f"{name}-{r}") for r in ("driver", "executor")
    ]
    job = rendered.one("Job")
    pods.append(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "submit"},
            "spec": job["spec"]["template"]["spec"],
        }
    )
    for pod in pods:
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
        context = pod["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == 185
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in containers_of(pod):
            c = container["securityContext"]
            assert c["allowPrivilegeEscalation"] is False, container["name"]
            assert c["capabilities"] == {"drop": ["ALL"]}, container["name"]
            assert c["readOnlyRootFilesystem"] is True, container["name"]
            assert "/tmp" in {m["mountPath"] for m in container.get("volumeMounts", [])}


def test_nothing_may_connect_to_the_submitter(submit: dict[str, Rendered]) -> None:
    rendered = submit["submit-chat"]
    (policy,) = [
        p for p in rendered.of_kind("NetworkPolicy") if p["metadata"]["name"].endswith("-submitter")
    ]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    template = rendered.one("Job")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= template.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert "ingress" not in policy["spec"]
