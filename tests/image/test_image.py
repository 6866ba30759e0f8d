"""The real CPU image, run pod-like: the vLLM sidecar from the chart's own container spec,
and the Spark roles beside it in the sidecar's network namespace (one pod, one loopback)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from tests.conftest import SERVED_NAME
from tests.versions import VERSIONS

from .conftest import Rendered, pod_volumes, read_jsonl
from .pod import ROOT, Obj, PodVolumes, docker, logs, run_args

pytestmark = pytest.mark.image

INPUT = ROOT / "examples/data/questions.jsonl"


def run_to_end(args: list[str], name: str, timeout: float = 600) -> tuple[int, str]:
    """Run a detached `docker run`, wait for it to exit; its exit code and log."""
    docker(*args)
    try:
        code = int(docker("wait", name, timeout=timeout).strip())
        return code, logs(name)
    finally:
        docker("rm", "--force", name, check=False)


def spark_pod_volumes(
    rendered: Rendered, model_root: Path, tmp_path: Path
) -> tuple[PodVolumes, list[dict[str, object]], Path]:
    """The executor pod's volumes plus the job spec (the chart's ConfigMap), the input
    and an output directory; the mounts a Spark container gets; the output directory."""
    job_dir = tmp_path / "job-spec"
    job_dir.mkdir()
    (job_dir / "job.yaml").write_text(rendered.job_yaml)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the containers write as uid 185
    volumes = pod_volumes(rendered, model_root)
    volumes.volumes += [{"name": "input"}, {"name": "output"}]
    volumes.host_dirs.update({"job-spec": job_dir, "input": INPUT.parent, "output": out})
    driver_mounts = rendered.app["driver"]["volumeMounts"]
    job_mount = next(m for m in driver_mounts if m["name"] == "job-spec")
    mounts = [
        *rendered.app["executor"]["volumeMounts"],
        job_mount,
        {"name": "input", "mountPath": "/data", "readOnly": True},
        {"name": "output", "mountPath": "/out"},
    ]
    return volumes, mounts, out


def spark_container(rendered: Rendered, mounts: list[dict[str, object]], args: list[str]) -> Obj:
    executor = rendered.app["executor"]
    return {
        "securityContext": executor["securityContext"],
        "env": executor.get("env", []),
        "volumeMounts": mounts,
        "args": args,  # no command: the image's entrypoint runs, as in Spark's pods
    }


def job_overrides(job_path: str, *more: str) -> list[str]:
    sets = [f"input.path=/data/{INPUT.name}", "output.path=/out/chat", *more]
    return [job_path, *(a for s in sets for a in ("--set", s))]


def assert_one_row_per_input(out: Path, delta: bool = False) -> None:
    expected = sorted(row["id"] for row in read_jsonl(INPUT))
    if delta:
        table = DeltaTable(str(out / "chat")).to_pyarrow_table()
    else:
        table = pq.read_table(out / "chat")
    rows = table.to_pylist()
    assert sorted(row["id"] for row in rows) == expected
    failed = [row for row in rows if row["error"] is not None]
    assert not failed, f"{len(failed)} rows failed, e.g. {failed[0]}"


def test_sidecar_serves_the_model_under_the_served_name(sidecar: str) -> None:
    out = docker(
        "exec", sidecar, "python3", "-c",
        "import urllib.request; print(urllib.request.urlopen("
        "'http://127.0.0.1:8000/v1/models', timeout=5).read().decode())",
    )  # fmt: skip
    assert [m["id"] for m in json.loads(out)["data"]] == [SERVED_NAME]


def test_job_in_executor_container_writes_one_row_per_input(
    image: str, rendered: Rendered, model_root: Path, sidecar: str, tmp_path: Path
) -> None:
    volumes, mounts, out = spark_pod_volumes(rendered, model_root, tmp_path)
    job_path = rendered.app["arguments"][0]
    container = spark_container(rendered, mounts, ["spark-vllm", "run", *job_overrides(job_path)])
    name = f"spark-vllm-job-{uuid.uuid4().hex[:8]}"
    code, log = run_to_end(run_args(container, image, volumes, name, f"container:{sidecar}"), name)
    assert code == 0, log[-6000:]
    assert_one_row_per_input(out)


def test_driver_role_submits_the_main_application_file(
    image: str, rendered: Rendered, model_root: Path, sidecar: str, tmp_path: Path
) -> None:
    """The `driver` role as Spark on Kubernetes starts it (spark-submit in client mode of
    the chart's mainApplicationFile and arguments), with a local master for the cluster.
    Into a Delta table: the image carries the connector on Spark's class path, so a
    spark-submit of the job needs no --jars; another engine (delta-rs) reads the table."""
    volumes, mounts, out = spark_pod_volumes(rendered, model_root, tmp_path)
    app = rendered.app
    args = ["driver", "--master", "local[2]", app["mainApplicationFile"]]
    args += job_overrides(app["arguments"][0], "output.format=delta")
    container = spark_container(rendered, mounts, args)
    # Spark sets the bind address to the pod IP in its driver pods.
    bind = {"name": "SPARK_DRIVER_BIND_ADDRESS", "value": "127.0.0.1"}
    container["env"] = [*container["env"], bind]
    name = f"spark-vllm-driver-{uuid.uuid4().hex[:8]}"
    code, log = run_to_end(run_args(container, image, volumes, name, f"container:{sidecar}"), name)
    assert code == 0, log[-6000:]
    assert_one_row_per_input(out, delta=True)
    writes = [c for c in DeltaTable(str(out / "chat")).history() if c["operation"] == "WRITE"]
    assert [str(c["userMetadata"]).split(" ")[:2] for c in writes] == [["spark-vllm", "run"]]


def test_executor_role_starts_the_kubernetes_executor_backend(image: str) -> None:
    """The `executor` role turns Spark's SPARK_* variables into the executor JVM; with no
    driver to talk to, it must at least get as far as trying to reach it."""
    env = {
        "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@127.0.0.1:7078",
        "SPARK_EXECUTOR_ID": "1",
        "SPARK_EXECUTOR_CORES": "1",
        "SPARK_EXECUTOR_MEMORY": "512m",
        "SPARK_APPLICATION_ID": "spark-image-test",
        "SPARK_EXECUTOR_POD_IP": "127.0.0.1",
        "SPARK_EXECUTOR_POD_NAME": "image-test-exec-1",
        "SPARK_RESOURCE_PROFILE_ID": "0",
        "SPARK_JAVA_OPT_0": "-Dspark.executor.test.marker=yes",
    }
    env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    proc = subprocess.run(
        ["docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp:rw,exec,mode=1777",
         *env_args, image, "executor"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert "KubernetesExecutorBackend" in log, log[-4000:]
    assert "127.0.0.1:7078" in log, log[-4000:]
    assert "ClassNotFoundException" not in log, log[-4000:]


def test_executor_role_names_a_missing_spark_variable(image: str) -> None:
    proc = subprocess.run(
        ["docker", "run", "--rm", image, "executor"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 64
    assert "SPARK_DRIVER_URL" in proc.stderr


def test_image_runs_as_non_root_uid_185_with_spark_home_and_java(image: str) -> None:
    script = 'id -u; "$SPARK_HOME/bin/spark-submit" --version 2>&1 | grep -o "version [0-9.]*"'
    out = docker("run", "--rm", image, "bash", "-c", script)
    uid, version = out.split("\n")[:2]
    assert uid == "185"
    assert version == f"version {VERSIONS['spark']}"


def test_image_labels_name_its_version_set(image: str) -> None:
    labels = json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}", image))
    assert labels["io.github.spark-vllm.variant"] == "cpu"
    assert labels["io.github.spark-vllm.spark-version"] == VERSIONS["spark"]
    assert labels["io.github.spark-vllm.vllm-version"] == VERSIONS["vllm"]
    assert labels["io.github.spark-vllm.rapids-version"] == ""  # the CPU image has none
