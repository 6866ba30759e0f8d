"""Notebook mode (notebook.enabled): JupyterLab in the project's image whose kernels are Spark
drivers in client mode. The release runs no batch job; the kernels get the operator-less
submitter's Spark properties (in client mode) and the very same executor pod template, so the
two cannot drift apart; the token comes from a Secret by name, as a file; everything runs
locked down. The cluster tier runs the example notebook in a real notebook pod."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import nbformat
import pytest
import yaml

from .render import (
    CHART,
    NOTEBOOK_CASES,
    ROOT,
    Case,
    Doc,
    Rendered,
    render,
    run_helm,
)

pytestmark = pytest.mark.bundle

KUBERNETES_VERSION = "1.33"
# chat.yaml's job spec: a whole one, which the submitter needs to render at all.
CHAT_JOB = yaml.safe_load((ROOT / "examples" / "values" / "chat.yaml").read_text())["job"]
EXAMPLE_NOTEBOOKS = sorted((ROOT / "examples" / "notebooks").glob("*.ipynb"))
# What only cluster mode reads: the notebook's properties leave them out.
CLUSTER_MODE_ONLY = {
    "spark.kubernetes.driver.podTemplateFile",
    "spark.kubernetes.driver.podTemplateContainerName",
    "spark.kubernetes.submission.waitAppCompletion",
    "spark.kubernetes.executor.useDriverPodIP",
    "spark.kubernetes.driver.pod.excludedFeatureSteps",
    "spark.kubernetes.authenticate.driver.serviceAccountName",
    "spark.driver.memoryOverhead",
}


@pytest.fixture(scope="module")
def notebook(helm: str) -> dict[str, Rendered]:
    return {name: render(helm, name, case) for name, case in NOTEBOOK_CASES.items()}


def container(rendered: Rendered) -> Doc:
    (found,) = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert found["name"] == "notebook"
    return found


def env(rendered: Rendered) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(rendered)["env"]}


@pytest.mark.parametrize("name", sorted(NOTEBOOK_CASES))
def test_renders_jupyterlab_and_no_batch_job(notebook: dict[str, Rendered], name: str) -> None:
    kinds = sorted(d["kind"] for d in notebook[name].docs)
    for batch in ("SparkApplication", "ScheduledSparkApplication", "Job", "Pod"):
        assert batch not in kinds, f"{name} renders a {batch}"
    assert kinds.count("Deployment") == 1 and kinds.count("Service") == 1
    # only the notebook's Spark files: no job spec ConfigMap, no submitter's files
    (config,) = notebook[name].of_kind("ConfigMap")
    assert config["metadata"]["name"].endswith("-notebook")
    assert set(config["data"]) == {"spark.properties", "executor-template.yaml"}
    for doc in notebook[name].docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(NOTEBOOK_CASES))
def test_the_token_comes_from_the_secret_by_name_only(
    notebook: dict[str, Rendered], name: str
) -> None:
    """A file mounted from the Secret, not an environment variable (a kernel inherits the
    server's environment, and a process listing or crash dump may show it)."""
    values = dict(NOTEBOOK_CASES[name].overrides)
    secret = values.get("notebook.tokenSecret.name", "spark-vllm-notebook")
    variables = env(notebook[name])
    assert "JUPYTER_TOKEN" not in variables
    refs = [
        v["secretKeyRef"]["name"]
        for v in variables.values()
        if isinstance(v, dict) and "secretKeyRef" in v
    ]
    assert secret not in refs
    path = variables["JUPYTER_TOKEN_FILE"]
    (mount,) = [
        m
        for m in container(notebook[name])["volumeMounts"]
        if path.startswith(m["mountPath"] + "/")
    ]
    assert mount["readOnly"] is True
    pod = notebook[name].one("Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == secret
    assert volume["secret"]["items"] == [{"key": "token", "path": path.rsplit("/", 1)[1]}]
    assert volume["secret"]["defaultMode"] == 0o440  # the pod's fsGroup, nobody else
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    text = json.dumps(notebook[name].docs)
    assert "ServerApp.token" not in text and "IdentityProvider.token" not in text
    assert all(d["kind"] != "Secret" for d in notebook[name].docs)


@pytest.mark.parametrize("name", sorted(NOTEBOOK_CASES))
def test_the_notebook_pod_runs_locked_down_as_the_driver(
    notebook: dict[str, Rendered], name: str
) -> None:
    rendered = notebook[name]
    spec = rendered.one("Deployment")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 185
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container(rendered)["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert "/tmp" in {m["mountPath"] for m in container(rendered)["volumeMounts"]}
    # The kernels' drivers manage their executors: the driver's ServiceAccount and Role
    # (the release's own, or, as in examples/values/notebook.yaml, manifests/rbac.yaml's).
    bindings = rendered.of_kind("RoleBinding")
    if bindings:
        (binding,) = bindings
        assert binding["subjects"][0]["name"] == spec["serviceAccountName"]
    else:
        assert spec["serviceAccountName"] == "spark-vllm-driver"  # manifests/rbac.yaml's
    assert spec["automountServiceAccountToken"] is True
    assert container(rendered)["args"][0] == "notebook"


@pytest.mark.parametrize("name", sorted(NOTEBOOK_CASES))
def test_kernels_get_the_submitters_spark_properties_in_client_mode(
    helm: str, notebook: dict[str, Rendered], name: str
) -> None:
    """The same values without notebook.enabled (and with the job of chat.yaml), on the
    operator-less path: the properties agree but for client mode, the executor template is
    the same text."""
    case = NOTEBOOK_CASES[name]
    kept = tuple((k, v) for k, v in case.overrides if k.split(".")[0] not in ("job", "notebook"))
    job = ("--set-json", f"job={json.dumps(CHAT_JOB)}")
    submit = render(
        helm, name, Case(case.values_file, (*kept, ("operator.enabled", False))), *job,
        "--set", "notebook.enabled=false",
    )  # fmt: skip
    mine = notebook[name].spark_properties("-notebook")
    theirs = submit.spark_properties()
    assert mine["spark.submit.deployMode"] == "client"
    assert set(theirs) - set(mine) == CLUSTER_MODE_ONLY
    assert {k: v for k, v in theirs.items() if k in mine} == {
        k: v for k, v in mine.items() if k in theirs
    }
    assert (
        notebook[name].submit_files("-notebook")["executor-template.yaml"]
        == submit.submit_files()["executor-template.yaml"]
    )
    template = notebook[name].pod_template("executor", "-notebook")
    assert "vllm" in {c["name"] for c in template["spec"].get("initContainers", [])} | {
        c["name"] for c in template["spec"]["containers"]
    }


@pytest.mark.parametrize("name", sorted(NOTEBOOK_CASES))
def test_executors_reach_the_driver_on_fixed_ports(
    notebook: dict[str, Rendered], name: str
) -> None:
    rendered = notebook[name]
    props = rendered.spark_properties("-notebook")
    service = rendered.one("Service")
    assert service["spec"]["clusterIP"] == "None"
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports["spark-driver"] == int(props["spark.driver.port"])
    assert ports["spark-block-mgr"] == int(props["spark.driver.blockManager.port"])
    assert ports["spark-ui"] == int(props["spark.ui.port"])
    container_ports = {p["name"]: p["containerPort"] for p in container(rendered)["ports"]}
    assert container_ports == ports
    host = env(rendered).get("SPARK_VLLM_DRIVER_HOST")
    if dict(NOTEBOOK_CASES[name].overrides).get("notebook.driverHost") == "service":
        assert host == f"{service['metadata']['name']}.spark-jobs.svc"
    else:
        assert host is None  # the pod's own IP (docker/notebook.py)
    pod_labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    (executors,) = [
        p for p in rendered.of_kind("NetworkPolicy") if p["metadata"]["name"].endswith("-executors")
    ]
    allowed = [f["podSelector"]["matchLabels"] for f in executors["spec"]["ingress"][0]["from"]]
    assert any(labels.items() <= pod_labels.items() for labels in allowed), allowed


def test_the_notebook_is_told_the_model_and_the_api_key_variable(
    notebook: dict[str, Rendered],
) -> None:
    plain = env(notebook["notebook"])
    assert plain["SPARK_VLLM_MODEL"] == "qwen2.5-7b-instruct"
    assert plain["SPARK_VLLM_BASE_URL"] == "http://127.0.0.1:8000/v1"
    assert "SPARK_VLLM_API_KEY_ENV" not in plain
    keyed = env(notebook["notebook-service-api-key"])
    assert keyed["SPARK_VLLM_API_KEY_ENV"] == "VLLM_API_KEY"
    assert keyed["SPARK_VLLM_API_SERVER"] == "https://10.0.0.1:6443"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ((("notebook.tokenSecret.name", ""),), "notebook.tokenSecret.name is required"),
        ((("job", CHAT_JOB),), "job is set, but notebook.enabled runs no batch"),
        ((("schedule.cron", "0 * * * *"),), "schedule.cron"),
        ((("volcano.enabled", True),), "volcano.enabled"),
        (
            (("metrics.enabled", True), ("metrics.tokenSecret.name", "m")),
            "metrics.enabled is not available with notebook.enabled",
        ),
        ((("notebook.tokn", "x"),), "at '/notebook': additional properties 'tokn' not allowed"),
        ((("notebook.driverHost", "dns"),), "/notebook/driverHost"),
        ((("notebook.port", "8888"),), "/notebook/port"),
        ((("notebook.cpu", "lots"),), "/notebook/cpu"),
    ],
)
def test_what_notebook_mode_cannot_do_is_refused_naming_the_key(
    helm: str, overrides: tuple[tuple[str, object], ...], message: str
) -> None:
    case = Case("notebook.yaml", overrides)
    result = run_helm(helm, "template", "t", str(CHART), *case.helm_args())
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("path", EXAMPLE_NOTEBOOKS, ids=lambda p: p.name)
def test_example_notebooks_are_valid_and_kept_without_outputs(path: Any) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), path.name
    source = "\n".join(c.source for c in code)
    assert "SparkSession.builder.getOrCreate()" in source
    assert "spark.stop()" in source  # gives the executors (and GPUs) back
