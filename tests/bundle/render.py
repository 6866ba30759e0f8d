"""Render the chart with the real helm binary, and rebuild the pods the Spark Operator makes.

Everything the bundle tests share that is not a fixture: where the repository's files are,
how tools are found, the values cases every test sees, a model of the operator's
mutating webhook (v2.5) that turns a SparkApplication into the driver and executor pods, and
strict validators from the pinned CustomResourceDefinitions in crds/.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "spark-vllm"
PLATFORM_CHART = ROOT / "charts" / "spark-vllm-platform"
EXAMPLES = ROOT / "examples" / "values"
MANIFESTS = ROOT / "manifests"
TOOLS_BIN = ROOT / "build" / "tools" / "bin"
TOOLS_VENV_BIN = ROOT / "build" / "tools" / "venv" / "bin"
CRDS = Path(__file__).resolve().with_name("crds")
NAMESPACE = "spark-jobs"

Doc = dict[str, Any]


def find_tool(name: str, env: str, candidates: list[Path], how_to_get: str) -> str:
    """The tool from $env, else the first executable candidate, else PATH; fail if none."""
    if os.environ.get(env):
        return os.environ[env]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    on_path = shutil.which(name)
    if on_path:
        return on_path
    pytest.fail(
        f"{name} not found (${env}, {', '.join(map(str, candidates))}, PATH): {how_to_get}",
        pytrace=False,
    )


def helm_binary() -> str:
    return find_tool(
        "helm",
        "HELM",
        [TOOLS_BIN / "helm"],
        "run scripts/get-helm.sh to put it in build/tools/bin, or set HELM",
    )


def venv_tool(name: str, env: str) -> str:
    return find_tool(
        name,
        env,
        [TOOLS_VENV_BIN / name],
        "create the tools venv: python3 -m venv build/tools/venv && "
        "build/tools/venv/bin/pip install -r requirements/bundle-tools.txt",
    )


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, cwd=ROOT, check=False)


@dataclass(frozen=True)
class Case:
    """One way of installing the chart: an example values file plus overrides."""

    values_file: str
    overrides: tuple[tuple[str, Any], ...] = ()

    def helm_args(self) -> list[str]:
        args = ["-f", str(EXAMPLES / self.values_file)]
        for key, value in self.overrides:
            args += ["--set-json", f"{key}={json.dumps(value)}"]
        return args


# metrics.enabled and the Secret it needs: PodMonitors, the dashboard, the metrics proxy.
METRICS: tuple[tuple[str, Any], ...] = (
    ("metrics.enabled", True),
    ("metrics.tokenSecret.name", "spark-vllm-metrics"),
)

CASES: dict[str, Case] = {
    "chat": Case("chat.yaml"),
    "scheduled": Case("scheduled.yaml"),
    "embedding": Case("embedding.yaml"),
    "classic-sidecar": Case("chat.yaml", (("sidecar.mode", "classic"),)),
    "volcano": Case("chat.yaml", (("volcano.enabled", True),)),
    "pvc-created": Case(
        "chat.yaml", (("model.cache.pvc.create", True), ("model.cache.pvc.claimName", ""))
    ),
    "hostpath-cache": Case("chat.yaml", (("model.cache.type", "hostPath"),)),
    "hf-download": Case(
        "chat.yaml",
        (
            ("model.path", ""),
            ("model.id", "Qwen/Qwen2.5-7B-Instruct"),
            ("model.offline", False),
            ("model.cache.type", "emptyDir"),
            ("model.cache.readOnly", False),
            ("model.hfToken.secretName", "huggingface"),
        ),
    ),
    "tensor-parallel-2": Case("chat.yaml", (("sidecar.gpu.count", 2), ("volcano.enabled", True))),
    "cpu-only": Case("chat.yaml", (("sidecar.gpu.count", 0), ("volcano.enabled", True))),
    "dynamic-allocation": Case(
        "chat.yaml",
        (
            ("dynamicAllocation.enabled", True),
            ("dynamicAllocation.initialExecutors", 3),
            ("dynamicAllocation.minExecutors", 2),
            ("dynamicAllocation.maxExecutors", 6),
            ("volcano.enabled", True),
        ),
    ),
    "rapids": Case("chat.yaml", (("rapids.enabled", True), ("volcano.enabled", True))),
    "smoke": Case("smoke.yaml"),
    "smoke-volcano": Case("smoke.yaml", (("volcano.enabled", True),)),
    "api-server": Case("smoke.yaml", (("submitter.apiServer", "https://10.0.0.1:6443"),)),
    "api-key": Case(
        "chat.yaml",
        (("sidecar.apiKey.enabled", True), ("sidecar.apiKey.secretName", "vllm-api-key")),
    ),
    "metrics": Case("chat.yaml", METRICS),
    "metrics-classic": Case("chat.yaml", (*METRICS, ("sidecar.mode", "classic"))),
}


# The operator-less path (operator.enabled false): a Job running spark-submit with pod
# templates. Kept apart from CASES, whose tests read the SparkApplication.
SUBMIT_CASES: dict[str, Case] = {
    "submit-chat": Case("chat.yaml", (("operator.enabled", False),)),
    "submit-classic": Case("chat.yaml", (("operator.enabled", False), ("sidecar.mode", "classic"))),
    "submit-smoke": Case("smoke.yaml", (("operator.enabled", False), ("sidecar.mode", "classic"))),
    "submit-api-key": Case(
        "chat.yaml",
        (
            ("operator.enabled", False),
            ("sidecar.apiKey.enabled", True),
            ("sidecar.apiKey.secretName", "vllm-api-key"),
            ("hadoopConf", {"fs.s3a.path.style.access": "true"}),
            ("image.pullSecrets", ["registry-a", "registry-b"]),
        ),
    ),
    "submit-dynamic": Case(
        "chat.yaml",
        (
            ("operator.enabled", False),
            ("dynamicAllocation.enabled", True),
            ("dynamicAllocation.shuffleTrackingTimeout", 60000),
            ("restartPolicy.type", "OnFailure"),
        ),
    ),
    "submit-metrics": Case("chat.yaml", (("operator.enabled", False), *METRICS)),
    "submit-metrics-classic": Case(
        "chat.yaml", (("operator.enabled", False), *METRICS, ("sidecar.mode", "classic"))
    ),
}


# Notebook mode (notebook.enabled): JupyterLab whose kernels are Spark drivers in client mode.
# "notebook-from-job" is a job's values file turned into a notebook (`--set job=null`).
NOTEBOOK_CASES: dict[str, Case] = {
    "notebook": Case("notebook.yaml"),
    "notebook-from-job": Case(
        "chat.yaml",
        (
            ("job", None),
            ("notebook.enabled", True),
            ("notebook.tokenSecret.name", "nb-token"),
            ("operator.enabled", False),
        ),
    ),
    "notebook-service-api-key": Case(
        "notebook.yaml",
        (
            ("notebook.driverHost", "service"),
            ("notebook.workspace.existingClaim", ""),
            ("sidecar.mode", "classic"),
            ("sidecar.apiKey.enabled", True),
            ("sidecar.apiKey.secretName", "vllm-api-key"),
            ("submitter.apiServer", "https://10.0.0.1:6443"),
        ),
    ),
}


@dataclass
class Rendered:
    """The documents `helm template` printed for one case."""

    name: str
    docs: list[Doc]

    def of_kind(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> Doc:
        found = self.of_kind(kind)
        assert len(found) == 1, f"{self.name}: expected one {kind}, found {len(found)}"
        return found[0]

    def job_spec(self) -> Doc:
        """The job spec the chart mounts into the driver (job.yaml of its ConfigMap)."""
        (config,) = [c for c in self.of_kind("ConfigMap") if "job.yaml" in c.get("data", {})]
        spec: Doc = yaml.safe_load(config["data"]["job.yaml"])
        return spec

    def submit_files(self, suffix: str = "-submit") -> dict[str, str]:
        """The operator-less path's ConfigMap: spark.properties and the two pod templates
        (suffix "-notebook": the notebook's, spark.properties and the executor template)."""
        (config,) = [d for d in self.of_kind("ConfigMap") if d["metadata"]["name"].endswith(suffix)]
        files: dict[str, str] = config["data"]
        return files

    def spark_properties(self, suffix: str = "-submit") -> dict[str, str]:
        lines = self.submit_files(suffix)["spark.properties"].splitlines()
        return dict(line.split("=", 1) for line in lines if line)

    def pod_template(self, role: str, suffix: str = "-submit") -> Doc:
        template: Doc = yaml.safe_load(self.submit_files(suffix)[f"{role}-template.yaml"])
        return template

    def app_spec(self) -> Doc:
        """The SparkApplication spec, or the template of the ScheduledSparkApplication."""
        apps = self.of_kind("SparkApplication")
        if apps:
            return apps[0]["spec"]
        return self.one("ScheduledSparkApplication")["spec"]["template"]


def render(helm: str, release: str, case: Case, *extra: str) -> Rendered:
    result = run_helm(
        helm, "template", release, str(CHART), "--namespace", NAMESPACE, *case.helm_args(), *extra
    )
    assert result.returncode == 0, f"helm template {release} failed:\n{result.stderr}"
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    return Rendered(release, docs)


def load_docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


# --- the Spark Operator's mutating webhook, as far as these tests need it --------------------
# Spark creates the bare pods (one container, named below); the webhook then adds, from the
# SparkApplication: the volumes that the Spark container's volumeMounts name (and only those),
# those mounts on the Spark container, init containers, sidecars, env, ports (on the Spark
# container), tolerations, node selector, the pod and container security contexts, and
# executor.gpu on the Spark container.

SPARK_CONTAINER = {"driver": "spark-kubernetes-driver", "executor": "spark-kubernetes-executor"}


def _spark_memory_mi(value: str) -> int:
    assert value.endswith("m"), f"Spark memory {value!r} is not in MiB ('<n>m')"
    return int(value[:-1])


def operator_pod(app_spec: Doc, role: str, app_name: str) -> Doc:
    """The driver or executor pod as it reaches the API server after the webhook."""
    part = app_spec[role]
    declared = {v["name"]: v for v in app_spec.get("volumes", [])}
    memory = _spark_memory_mi(part["memory"]) + _spark_memory_mi(part["memoryOverhead"])
    container: Doc = {
        "name": SPARK_CONTAINER[role],
        "image": app_spec["image"],
        "imagePullPolicy": app_spec.get("imagePullPolicy", "IfNotPresent"),
        "resources": {
            "requests": {"cpu": str(part["cores"]), "memory": f"{memory}Mi"},
            "limits": {"memory": f"{memory}Mi"},
        },
        "volumeMounts": [],
    }
    volumes: list[Doc] = []
    for mount in part.get("volumeMounts", []):
        if mount["name"] in declared and all(v["name"] != mount["name"] for v in volumes):
            volumes.append(declared[mount["name"]])
        container["volumeMounts"].append(mount)
    if part.get("env"):
        container["env"] = part["env"]
    if part.get("ports"):
        container["ports"] = part["ports"]
    if part.get("securityContext"):
        container["securityContext"] = part["securityContext"]
    if part.get("gpu"):
        container["resources"]["limits"][part["gpu"]["name"]] = str(part["gpu"]["quantity"])
    spec: Doc = {
        "restartPolicy": "Never",
        "containers": [container, *part.get("sidecars", [])],
        "volumes": volumes,
    }
    if part.get("initContainers"):
        spec["initContainers"] = part["initContainers"]
    if part.get("serviceAccount"):
        spec["serviceAccountName"] = part["serviceAccount"]
    for key in ("tolerations", "nodeSelector"):
        if part.get(key):
            spec[key] = part[key]
    if part.get("podSecurityContext"):
        spec["securityContext"] = part["podSecurityContext"]
    if app_spec.get("imagePullSecrets"):
        spec["imagePullSecrets"] = [{"name": n} for n in app_spec["imagePullSecrets"]]
    labels = {
        "spark-role": role,
        "sparkoperator.k8s.io/app-name": app_name,
        **part.get("labels", {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{app_name}-{role}", "namespace": NAMESPACE, "labels": labels},
        "spec": spec,
    }


def spark_pod(template: Doc, props: dict[str, str], role: str, name: str) -> Doc:
    """A pod Spark builds from the chart's pod template and spark.properties, as far as these
    tests need it: the Spark container gets the image, the pull policy and its resources
    (cores as the request; memory plus overhead as request and limit), the pod its name,
    ServiceAccount and restartPolicy Never."""
    pod: Doc = json.loads(json.dumps(template))
    spark = next(c for c in pod["spec"]["containers"] if c["name"] == SPARK_CONTAINER[role])
    memory = _spark_memory_mi(props[f"spark.{role}.memory"]) + _spark_memory_mi(
        props[f"spark.{role}.memoryOverhead"]
    )
    cpu = props.get(f"spark.kubernetes.{role}.request.cores", props[f"spark.{role}.cores"])
    spark["image"] = props["spark.kubernetes.container.image"]
    spark["imagePullPolicy"] = props["spark.kubernetes.container.image.pullPolicy"]
    spark["resources"] = {
        "requests": {"cpu": cpu, "memory": f"{memory}Mi"},
        "limits": {"memory": f"{memory}Mi"},
    }
    pod["metadata"].update(name=name, namespace=NAMESPACE)
    pod["spec"]["serviceAccountName"] = props[
        f"spark.kubernetes.authenticate.{role}.serviceAccountName"
    ]
    pod["spec"]["restartPolicy"] = "Never"
    return pod


def containers_of(pod: Doc) -> list[Doc]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def vllm_container(app_spec: Doc) -> Doc:
    executor = app_spec["executor"]
    found = [
        c
        for c in [*executor.get("initContainers", []), *executor.get("sidecars", [])]
        if c["name"] == "vllm"
    ]
    assert len(found) == 1, "expected exactly one vllm container on the executor"
    return found[0]


# --- the pinned CRDs (crds/README.md), strict ----------------------------------------------
# The API server prunes fields a structural schema does not list, silently: a misspelled
# field of a custom resource is dropped, not refused. These validators refuse it instead.

_SCHEMA_MAPS = {"properties", "patternProperties", "definitions"}
_SCHEMA_LISTS = {"allOf", "anyOf", "oneOf"}
_SCHEMAS = {"items", "additionalProperties", "not"}


def strict_schema(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on every object schema that lists
    `properties`, says nothing about further keys, and does not keep unknown fields
    (`x-kubernetes-preserve-unknown-fields`)."""
    if not isinstance(schema, dict):
        return schema
    out: Doc = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [strict_schema(sub) for sub in value]
        elif key in _SCHEMAS:
            out[key] = strict_schema(value)
        else:
            out[key] = value
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_validator(crd_file: str, api_version: str) -> jsonschema.Draft7Validator:
    """A strict validator for the custom resources of `api_version` ("group/version") that
    the CRD in crds/`crd_file` defines."""
    crd = yaml.safe_load((CRDS / crd_file).read_text(encoding="utf-8"))
    group, _, version = api_version.partition("/")
    assert crd["spec"]["group"] == group, f"{crd_file} defines {crd['spec']['group']}"
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = strict_schema(served["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@functools.cache
def pod_monitor_validator() -> jsonschema.Draft7Validator:
    return crd_validator("monitoring.coreos.com_podmonitors.yaml", "monitoring.coreos.com/v1")
