"""The trigger release (trigger.enabled): what the chart renders for the service itself, and
what the trigger renders for each job it takes (`trigger.Runs.render`, the real helm, the
values the chart hands the trigger). The cluster tier runs both in real pods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from spark_vllm.cluster.trigger import RUN_KINDS, RunError, Runs, check_rendered

from .render import CHART, NAMESPACE, Case, Rendered, render, run_helm

pytestmark = pytest.mark.bundle

KUBERNETES_VERSION = "1.33"
# chat.yaml's values with its job left out, as a trigger release takes them.
TRIGGER = (
    ("job", None),
    ("trigger.enabled", True),
    ("trigger.tokenSecret.name", "trigger-token"),
)
PATHS = {"operator": (), "submit": (("operator.enabled", False),)}
SPEC = {
    "input": {"format": "jsonl", "path": "/data/input/questions.jsonl", "id_column": "id"},
    "output": {"format": "parquet", "path": "/data/output"},
    "task": "chat",
    "prompt": {"template": "{{ question }}"},
}


def trigger_release(helm: str, path: str, *more: tuple[str, Any]) -> Rendered:
    return render(helm, "jobs", Case("chat.yaml", (*TRIGGER, *PATHS[path], *more)))


def runs_of(helm: str, release: Rendered, tmp: Path, kube_version: str = "v1.33.0") -> Runs:
    """The trigger's own renderer over the values ConfigMap the chart gave it."""
    (config,) = [
        c for c in release.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-trigger")
    ]
    values = tmp / "values.yaml"
    values.write_text(config["data"]["values.yaml"])
    return Runs("jobs", NAMESPACE, CHART, values, helm, None, None, kube_version)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_trigger_release_runs_no_job_of_its_own(helm: str, path: str) -> None:
    release = trigger_release(helm, path)
    kinds = sorted(d["kind"] for d in release.docs)
    for kind in ("SparkApplication", "Job", "Pod"):
        assert kind not in kinds, kind
    # no job's policies: only the trigger's own (test_trigger_network)
    policies = [p["metadata"]["name"] for p in release.of_kind("NetworkPolicy")]
    assert policies == ["chat-demo-trigger"], policies
    (config,) = release.of_kind("ConfigMap")  # the values of its runs, and nothing else
    assert config["metadata"]["name"] == "chat-demo-trigger"
    assert kinds.count("Deployment") == 1 and kinds.count("Service") == 1
    for doc in release.docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_trigger_pod_is_locked_down_and_takes_its_token_from_the_secret(helm: str) -> None:
    release = trigger_release(helm, "submit")
    pod = release.one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    token = {v["name"]: v for v in pod["volumes"]}["token"]
    assert token["secret"] == {
        "secretName": "trigger-token",
        "items": [{"key": "token", "path": "token"}],
    }
    args = container["args"]
    assert args[:2] == ["spark-vllm", "trigger"]
    assert args[args.index("--token-file") + 1] == "/var/run/secrets/spark-vllm-trigger/token"
    assert "token" not in yaml.safe_dump(container.get("env", [])).lower()
    assert container["readinessProbe"] == {"tcpSocket": {"port": "http"}, "periodSeconds": 5}
    assert "--allow-env" not in args
    allowed = trigger_release(helm, "submit", ("trigger.allowedEnv", ["LAKE_DB_PASSWORD"]))
    (container,) = allowed.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["args"][-4:-2] == ["--allow-env", "LAKE_DB_PASSWORD"]


def test_the_trigger_takes_its_reach_from_the_values(helm: str) -> None:
    """What a posted spec may set, where it may read and write, and how many runs at once:
    none, nowhere and 4 by default."""
    (container,) = trigger_release(helm, "submit").one("Deployment")["spec"]["template"]["spec"][
        "containers"
    ]
    args = container["args"]
    assert "--allow-path" not in args and "--allow-spark-conf" not in args
    assert args[-2:] == ["--max-running", "4"]
    release = trigger_release(
        helm, "submit",
        ("trigger.allowedPaths", ["/data/", "s3a://lake/jobs/"]),
        ("trigger.allowedSparkConf", ["spark.sql."]),
        ("trigger.maxRunning", 0),
    )  # fmt: skip
    (container,) = release.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["args"][-8:] == [
        "--allow-spark-conf", "spark.sql.",
        "--allow-path", "/data/",
        "--allow-path", "s3a://lake/jobs/",
        "--max-running", "0",
    ]  # fmt: skip
    result = run_helm(
        helm, "template", "t", str(CHART),
        *Case("chat.yaml", (*TRIGGER, ("trigger.allowedSparkConf", ["fs.s3a.key"]))).helm_args(),
    )  # fmt: skip
    assert result.returncode != 0 and "allowedSparkConf" in result.stderr


@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_runs_driver_is_told_which_guarded_spark_conf_its_spec_may_set(
    helm: str, path: str, tmp_path: Path
) -> None:
    for allowed, value in (((), "[]"), (("spark.executor.memory", "spark.sql."),
                                        '["spark.executor.memory","spark.sql."]')):  # fmt: skip
        release = trigger_release(helm, path, ("jobSparkConfAllowed", list(allowed)))
        objects = runs_of(helm, release, tmp_path).render("jobs-0a1b2c3d", SPEC)
        if path == "operator":
            (app,) = [o for o in objects if o["kind"] == "SparkApplication"]
            env = app["spec"]["driver"]["env"]
        else:  # the driver's pod template, in the spark-submit ConfigMap
            (template,) = [
                yaml.safe_load(o["data"]["driver-template.yaml"])
                for o in objects
                if "driver-template.yaml" in o.get("data", {})
            ]
            env = template["spec"]["containers"][0]["env"]
        assert {"name": "SPARK_VLLM_JOB_SPARK_CONF_ALLOWED", "value": value} in env


# Strings YAML takes for line breaks (U+2028, U+2029), each followed by what would be a key
# of the ConfigMap, or of the spec, were the break taken as one.
BREAKOUTS = [
    "x\u2028y",
    "a\u2028  evil.yaml: boom\u2029task: embedding",
    "a\u2029\u2028spark:\u2028  master: local[1]",
]


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("text", BREAKOUTS)
def test_a_line_separator_in_a_posted_string_stays_inside_the_job_configmap(
    helm: str, path: str, text: str, tmp_path: Path
) -> None:
    """Today's configmap.yaml renders the spec with toYaml inside a block scalar: go-yaml
    writes U+2028 raw in a quoted string, YAML readers take it for a line break, and the
    block ends there (helm fails, or the rest becomes keys of the ConfigMap)."""
    value = text
    spec = {**SPEC, "prompt": {"template": value}, "sampling_column": value}
    runs = runs_of(helm, trigger_release(helm, path), tmp_path)
    objects = runs.render("jobs-0a1b2c3d", spec)
    check_rendered(spec, objects)  # the trigger's own read-back check
    (config,) = [o for o in objects if "job.yaml" in o.get("data", {})]
    assert set(config["data"]) == {"job.yaml"}
    mounted = yaml.safe_load(config["data"]["job.yaml"])
    assert mounted["prompt"]["template"] == value and mounted["sampling_column"] == value
    assert "spark" not in mounted and mounted["task"] == "chat"


@pytest.mark.parametrize("path", sorted(PATHS))
def test_the_trigger_role_creates_only_a_jobs_objects_in_its_namespace(
    helm: str, path: str
) -> None:
    release = trigger_release(helm, path)
    (role,) = [r for r in release.of_kind("Role") if r["metadata"]["name"].endswith("-trigger")]
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    app = ("sparkoperator.k8s.io", "sparkapplications") if path == "operator" else ("batch", "jobs")
    assert granted == {
        ("", "configmaps"): {"create", "get", "list", "delete"},
        ("", "pods"): {"get", "list", "delete"},
        ("", "pods/log"): {"get"},
        app: {"create", "get", "list", "delete"},
        ("networking.k8s.io", "networkpolicies"): {"create", "list", "delete"},
    }
    assert not release.of_kind("ClusterRole")


def test_trigger_needs_a_token_secret_and_refuses_a_schedule(helm: str) -> None:
    result = run_helm(
        helm, "template", "t", str(CHART),
        *Case("chat.yaml", (("job", None), ("trigger.enabled", True))).helm_args(),
    )  # fmt: skip
    assert result.returncode != 0
    assert "trigger.enabled needs trigger.tokenSecret.name" in result.stderr
    # chat.yaml keeps its job: refused, not silently dropped.
    result = run_helm(helm, "template", "t", str(CHART),
                      *Case("chat.yaml", TRIGGER[1:]).helm_args())  # fmt: skip
    assert result.returncode != 0
    assert "trigger.enabled with a job: value" in result.stderr
    # What every run would meet is refused at install, not on every POST.
    result = run_helm(
        helm, "template", "t", str(CHART), "--kube-version", "v1.33.0",
        *Case("chat.yaml", (*TRIGGER, ("operator.enabled", False),
                            ("volcano.enabled", True))).helm_args(),
    )  # fmt: skip
    assert result.returncode != 0
    assert "volcano.enabled needs the Spark Operator" in result.stderr
    result = run_helm(
        helm, "template", "t", str(CHART), "--kube-version", "v1.20.2",
        *Case("chat.yaml", TRIGGER).helm_args(),
    )  # fmt: skip
    assert result.returncode != 0
    assert "native sidecars need Kubernetes 1.29 or later" in result.stderr
    result = run_helm(helm, "template", "t", str(CHART), "-f", "examples/values/scheduled.yaml",
                      "--set-json", "job=null", "--set", "trigger.enabled=true",
                      "--set", "trigger.tokenSecret.name=t")  # fmt: skip
    assert result.returncode != 0
    assert "trigger.enabled with schedule.cron" in result.stderr
    result = run_helm(
        helm, "template", "t", str(CHART),
        *Case("chat.yaml", (*TRIGGER, ("trigger.port", 0))).helm_args(),
    )  # fmt: skip
    assert result.returncode != 0 and "/trigger/port" in result.stderr
    result = run_helm(
        helm, "template", "t", str(CHART),
        *Case("chat.yaml", (*TRIGGER, ("job", None), ("notebook.enabled", True),
                            ("notebook.tokenSecret.name", "nb"))).helm_args(),
    )  # fmt: skip
    assert result.returncode != 0
    assert "a release is a trigger or a notebook, not both" in result.stderr, result.stderr


@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_run_is_the_charts_job_under_the_runs_name_and_the_releases_accounts(
    helm: str, path: str, tmp_path: Path
) -> None:
    release = trigger_release(helm, path)
    runs = runs_of(helm, release, tmp_path)
    objects = runs.render("jobs-0a1b2c3d", SPEC)
    allowed = set(RUN_KINDS)
    assert {(o["apiVersion"], o["kind"]) for o in objects} <= allowed
    names = {o["kind"]: o["metadata"]["name"] for o in objects}
    assert names["ConfigMap"].startswith("jobs-0a1b2c3d-")
    for obj in objects:
        assert obj["metadata"]["name"].startswith("jobs-0a1b2c3d")
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "jobs-0a1b2c3d"
    job_config = next(o for o in objects if "job.yaml" in o.get("data", {}))
    mounted = yaml.safe_load(job_config["data"]["job.yaml"])
    assert mounted["input"] == SPEC["input"]
    assert mounted["endpoint"]["base_url"] == "http://127.0.0.1:8000/v1"  # the chart's filling
    # The release's accounts, which its Role and the driver Role cover; no new ones.
    (driver_sa,) = [
        s["metadata"]["name"]
        for s in release.of_kind("ServiceAccount")
        if s["metadata"]["name"].endswith("-driver")
    ]
    if path == "operator":
        (app,) = [o for o in objects if o["kind"] == "SparkApplication"]
        assert app["spec"]["driver"]["serviceAccount"] == driver_sa
    else:
        (job,) = [o for o in objects if o["kind"] == "Job"]
        assert job["spec"]["template"]["spec"]["serviceAccountName"] == driver_sa


def test_the_charts_refusal_of_a_spec_is_the_runs_400(helm: str, tmp_path: Path) -> None:
    runs = runs_of(helm, trigger_release(helm, "submit"), tmp_path, kube_version="v1.20.2")
    with pytest.raises(RunError) as refused:
        runs.render("jobs-0a1b2c3d", SPEC)  # chat.yaml's native sidecar on 1.20
    assert refused.value.status == 400
    assert str(refused.value).startswith("native sidecars need Kubernetes 1.29 or later")
    runs = runs_of(
        helm, trigger_release(helm, "submit", ("restartPolicy.type", "OnFailure")), tmp_path
    )
    with pytest.raises(RunError) as refused:
        runs.render("jobs-0a1b2c3d", {**SPEC, "budget": {"max_rows": 3}})
    assert refused.value.status == 400
    assert "job.budget with restartPolicy.type OnFailure" in str(refused.value)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_installing_a_trigger_prints_how_to_reach_it(helm: str, path: str) -> None:
    """helm install renders NOTES.txt, which `helm template` skips; it must not ask for a
    job spec the trigger release does not have."""
    case = Case("chat.yaml", (*TRIGGER, *PATHS[path]))
    result = run_helm(helm, "install", "--dry-run=client", "jobs", str(CHART), *case.helm_args())
    assert result.returncode == 0, result.stderr
    notes = result.stdout[result.stdout.index("NOTES:") :]
    assert 'spark-vllm trigger "chat-demo-trigger" takes job specs over HTTP' in notes
    assert "port-forward svc/chat-demo-trigger 8080:8080" in notes
    assert "Output:" not in notes  # no job of its own


def test_installing_a_trigger_without_allowed_paths_warns_that_every_spec_is_refused(
    helm: str,
) -> None:
    """allowedPaths is empty by default, and then every POST is 403: helm says so at install."""
    for allowed, warned in (([], True), (["s3a://bucket/jobs/"], False)):
        case = Case("chat.yaml", (*TRIGGER, ("trigger.allowedPaths", allowed)))
        result = run_helm(
            helm, "install", "--dry-run=client", "jobs", str(CHART), *case.helm_args()
        )
        assert result.returncode == 0, result.stderr
        notes = result.stdout[result.stdout.index("NOTES:") :]
        assert ("trigger.allowedPaths is empty: every posted spec is refused" in notes) is warned
