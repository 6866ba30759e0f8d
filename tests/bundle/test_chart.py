"""The chart lints, renders every case, refuses bad values, and says why."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from .render import (
    CASES,
    CHART,
    EXAMPLES,
    NOTEBOOK_CASES,
    Case,
    Rendered,
    render,
    run_helm,
    vllm_container,
)

pytestmark = pytest.mark.bundle


@pytest.mark.parametrize("values", ["", "chat.yaml", "scheduled.yaml"])
def test_helm_lint_passes(helm: str, values: str) -> None:
    args = ["lint", "--strict", str(CHART)] if values else ["lint", str(CHART)]
    if values:
        args += ["-f", str(EXAMPLES / values)]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_example_values_file_is_a_case() -> None:
    used = {case.values_file for case in (*CASES.values(), *NOTEBOOK_CASES.values())}
    assert used == {p.name for p in EXAMPLES.glob("*.yaml")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_renders_the_objects_it_asks_for(rendered: dict[str, Rendered], name: str) -> None:
    result = rendered[name]
    kinds = sorted(d["kind"] for d in result.docs)
    scheduled = dict(CASES[name].overrides).get("schedule.cron") or name == "scheduled"
    assert kinds.count("ScheduledSparkApplication" if scheduled else "SparkApplication") == 1
    assert kinds.count("SparkApplication") + kinds.count("ScheduledSparkApplication") == 1
    dashboard = bool(dict(CASES[name].overrides).get("metrics.enabled"))
    assert kinds.count("ConfigMap") == 1 + dashboard  # the job spec (and Grafana's dashboard)
    assert "NetworkPolicy" in kinds
    assert "Pod" in kinds  # the helm test hook
    for doc in result.docs:
        labels = doc["metadata"]["labels"]
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
        ):
            assert key in labels, f"{doc['kind']} {doc['metadata']['name']} lacks {key}"


def test_optional_objects_follow_their_switches(rendered: dict[str, Rendered]) -> None:
    assert rendered["pvc-created"].one("PersistentVolumeClaim")["metadata"]["name"] == (
        "chat-demo-model-cache"
    )
    assert not rendered["chat"].of_kind("PersistentVolumeClaim")
    assert rendered["scheduled"].one("Queue")["metadata"]["name"] == "batch-llm"
    assert not rendered["volcano"].of_kind("Queue")  # createQueue stays off
    assert rendered["chat"].one("Role") and rendered["chat"].one("RoleBinding")
    # rbac.create false: the namespace's shared manifests/rbac.yaml serves this job
    assert not rendered["scheduled"].of_kind("Role")
    assert not rendered["scheduled"].of_kind("ServiceAccount")


def test_driver_role_is_namespaced_and_limited_to_what_spark_needs(
    rendered: dict[str, Rendered],
) -> None:
    role = rendered["chat"].one("Role")
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {"pods", "services", "configmaps", "persistentvolumeclaims"}
    assert all(rule["apiGroups"] == [""] for rule in role["rules"])
    assert not rendered["chat"].of_kind("ClusterRole")
    binding = rendered["chat"].one("RoleBinding")
    assert binding["subjects"][0]["name"] == rendered["chat"].app_spec()["driver"]["serviceAccount"]


def test_job_spec_configmap_is_mounted_and_passed_to_the_job(rendered: dict[str, Rendered]) -> None:
    result = rendered["chat"]
    spec = result.app_spec()
    configmap = result.one("ConfigMap")
    volume = next(v for v in spec["volumes"] if v.get("configMap"))
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    mount = next(m for m in spec["driver"]["volumeMounts"] if m["name"] == volume["name"])
    assert spec["arguments"][0] == f"{mount['mountPath']}/job.yaml"
    assert spec["mainApplicationFile"] == "local:///opt/spark-vllm/jobs/batch_infer.py"


def test_job_spec_gets_the_sidecar_endpoint_unless_the_user_set_one(
    helm: str, rendered: dict[str, Rendered]
) -> None:
    job = yaml.safe_load(rendered["chat"].one("ConfigMap")["data"]["job.yaml"])
    assert job["endpoint"] == {
        "base_url": "http://127.0.0.1:8000/v1",
        "model": "qwen2.5-7b-instruct",
    }
    job = yaml.safe_load(rendered["api-key"].one("ConfigMap")["data"]["job.yaml"])
    assert job["endpoint"]["api_key_env"] == "VLLM_API_KEY"
    custom = Case("chat.yaml", (("job.endpoint", {"model": "other", "base_url": "http://x/v1"}),))
    result = run_helm(
        helm,
        "template",
        "t",
        str(CHART),
        *custom.helm_args(),
        "--show-only",
        "templates/configmap.yaml",
    )
    assert result.returncode == 0, result.stderr
    job = yaml.safe_load(yaml.safe_load(result.stdout)["data"]["job.yaml"])
    assert job["endpoint"] == {"model": "other", "base_url": "http://x/v1"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_job_spec_passes_the_jobs_own_validation(
    rendered: dict[str, Rendered], name: str
) -> None:
    from spark_vllm.spec import spec_from_dict

    spec = spec_from_dict(rendered[name].job_spec())
    args = vllm_container(rendered[name].app_spec())["args"]
    assert spec.endpoint.model == args[args.index("--served-model-name") + 1]
    assert spec.endpoint.base_url == f"http://127.0.0.1:{args[args.index('--port') + 1]}/v1"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ((("sidecar.vlm", {"dtype": "auto"}),), "additional properties 'vlm' not allowed"),
        ((("executor.cores", "two"),), "got string, want integer"),
        ((("executor.memoryMi", "4g"),), "got string, want integer"),
        ((("sidecar.mode", "sidecar"),), "sidecar/mode"),
        ((("model.cache.type", "s3"),), "model/cache/type"),
    ],
)
def test_schema_refuses_unknown_keys_and_wrong_types(
    helm: str, overrides: tuple[tuple[str, object], ...], message: str
) -> None:
    result = run_helm(helm, "template", "t", str(CHART), *Case("chat.yaml", overrides).helm_args())
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_default_values_refuse_to_render_without_a_job(helm: str) -> None:
    result = run_helm(helm, "template", "t", str(CHART), "--set", "model.id=some/model")
    assert result.returncode != 0
    assert "job.input is required" in result.stderr


def test_model_source_is_required(helm: str) -> None:
    case = Case("chat.yaml", (("model.path", ""),))
    result = run_helm(helm, "template", "t", str(CHART), *case.helm_args())
    assert result.returncode != 0
    assert "set model.id" in result.stderr


def test_native_sidecar_is_refused_below_kubernetes_1_29(helm: str) -> None:
    chat = Case("chat.yaml").helm_args()
    old = run_helm(helm, "template", "t", str(CHART), *chat, "--kube-version", "1.28.9")
    assert old.returncode != 0
    assert "sidecar.mode=classic" in old.stderr
    classic = Case("chat.yaml", (("sidecar.mode", "classic"),)).helm_args()
    assert (
        run_helm(helm, "template", "t", str(CHART), *classic, "--kube-version", "1.28.9").returncode
        == 0
    )


def test_values_file_documents_every_value() -> None:
    """Every leaf of values.yaml has a comment line above it, or sits in a commented block."""
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    previous = ""
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        indent = len(line) - len(line.lstrip())
        is_key = not text.startswith(("#", "- ")) and ":" in text
        if is_key:
            while stack and stack[-1][0] >= indent:
                stack.pop()
            documented = previous.startswith("#") or any(doc for _, doc in stack)
            following = next((ln for ln in lines[number:] if ln.strip()), "")
            opens_block = text.endswith(":") and (
                len(following) - len(following.lstrip()) > indent
                and not following.strip().startswith("- ")
            )
            assert opens_block or documented, f"values.yaml:{number}: {text!r} has no comment"
            stack.append((indent, previous.startswith("#")))
        previous = text
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("restart", ["OnFailure", "Always"])
def test_a_budget_with_resubmissions_is_refused(helm: str, restart: str) -> None:
    """A run that stops at its budget exits 3: resubmitted, it would spend a new budget."""

    def template(*overrides: tuple[str, object]) -> subprocess.CompletedProcess[str]:
        case = Case("chat.yaml", (("job.budget", {"max_rows": 100}), *overrides))
        return run_helm(helm, "template", "t", str(CHART), *case.helm_args())

    refused = template(("restartPolicy.type", restart))
    assert refused.returncode != 0
    assert f"job.budget with restartPolicy.type {restart}" in refused.stderr, refused.stderr
    assert template().returncode == 0, "the default restartPolicy, Never, takes a budget"


@pytest.mark.parametrize(
    ("value", "flags"),
    [
        (None, []),  # vLLM's default (the example is an embedding job: pooling, off)
        (True, ["--enable-prefix-caching"]),
        (False, ["--no-enable-prefix-caching"]),
    ],
)
def test_prefix_caching_is_vllms_default_unless_set(
    helm: str, value: bool | None, flags: list[str]
) -> None:
    case = Case("embedding.yaml", (("sidecar.vllm.prefixCaching", value),))
    args = vllm_container(render(helm, "prefix", case).app_spec())["args"]
    assert [a for a in args if "prefix-caching" in a] == flags


def test_service_account_annotations_go_on_both_accounts(helm: str) -> None:
    """Cloud IAM bindings (IRSA, Workload Identity) are ServiceAccount annotations; the
    driver and the executors both reach the lake. A `with` block once ended in the wrong
    place and any annotation broke the rendering."""
    iam = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/lake"}
    result = render(helm, "sa", Case("chat.yaml", (("serviceAccount.annotations", iam),)))
    accounts = {
        a["metadata"]["labels"]["app.kubernetes.io/component"]: a
        for a in result.of_kind("ServiceAccount")
    }
    assert sorted(accounts) == ["driver", "executor"]
    for account in accounts.values():
        assert account["metadata"]["annotations"] == iam
    assert accounts["driver"]["automountServiceAccountToken"] is True
    assert accounts["executor"]["automountServiceAccountToken"] is False
