"""The GPU image without a GPU: what can run here does (the version set, CUDA builds of
torch and vLLM importable, vLLM's server CLI, Spark's driver and executor roles, the GPU
discovery script), and the RAPIDS plugin's shim for the image's Spark."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.image.pod import docker
from tests.image.test_image import (
    test_executor_role_starts_the_kubernetes_executor_backend as _executor_role_check,
)
from tests.versions import VERSIONS

pytestmark = pytest.mark.gpu_image


def run(image: str, *args: str, volumes: tuple[str, ...] = (), env: tuple[str, ...] = ()) -> str:
    """`docker run` as the chart runs pods: read-only root, a writable /tmp."""
    options = [a for v in volumes for a in ("-v", v)] + [a for e in env for a in ("-e", e)]
    proc = subprocess.run(
        ["docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp:rw,exec,mode=1777",
         *options, image, *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout


def test_gpu_image_carries_the_version_set(gpu_image: str) -> None:
    inspect = docker("image", "inspect", "--format", "{{json .Config.Labels}}", gpu_image)
    labels = json.loads(inspect)
    assert labels["io.github.spark-vllm.variant"] == "gpu"
    assert labels["io.github.spark-vllm.spark-version"] == VERSIONS["spark"]
    assert labels["io.github.spark-vllm.vllm-version"] == VERSIONS["vllm"]
    assert labels["io.github.spark-vllm.rapids-version"] == VERSIONS["rapids"]
    out = run(gpu_image, "bash", "-c", '"$SPARK_HOME/bin/spark-submit" --version 2>&1')
    assert f"version {VERSIONS['spark']}" in out


def test_torch_and_vllm_are_the_cuda_builds(gpu_image: str) -> None:
    out = run(gpu_image, "python", "-c",
              "import torch, vllm; print(torch.__version__); print(torch.version.cuda); "
              "print(vllm.__version__)")  # fmt: skip
    torch_version, cuda, vllm_version = out.split()[-3:]
    public, _, local = torch_version.partition("+")
    assert public == VERSIONS["torch"]
    assert local == "cu" + VERSIONS["cuda"].replace(".", "")  # e.g. cu130, not cpu
    assert cuda.startswith(VERSIONS["cuda"])
    assert vllm_version == VERSIONS["vllm"]


def test_vllm_server_cli_runs(gpu_image: str) -> None:
    """The sidecar's command parses its arguments. vLLM builds its options' defaults for a
    device and finds none without a GPU, so the check names the CPU as the target: the
    arguments are the same."""
    out = run(gpu_image, "python", "-m", "vllm.entrypoints.openai.api_server", "--help",
              env=("VLLM_TARGET_DEVICE=cpu",))  # fmt: skip
    assert "--model" in out


@pytest.mark.parametrize(("indexes", "addresses"), [("0", ["0"]), ("0\n1\n2", ["0", "1", "2"])])
def test_gpu_discovery_script_prints_spark_resource_json(
    gpu_image: str, tmp_path: Path, indexes: str, addresses: list[str]
) -> None:
    """Spark's discovery contract, with a stand-in for `nvidia-smi` (the NVIDIA container
    toolkit mounts the real one into GPU pods; there is no GPU here). The stand-in answers
    only the query the script must make."""
    stub = tmp_path / "bin"
    stub.mkdir()
    smi = stub / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'want="--query-gpu=index --format=csv,noheader"\n'
        '[ "$*" = "$want" ] || { echo "unexpected: $*" >&2; exit 9; }\n'
        f"printf '{indexes}\\n'\n"
    )
    smi.chmod(0o755)
    out = run(gpu_image, "bash", "-c", "PATH=/stub:$PATH /opt/spark-vllm/getGpusResources.sh",
              volumes=(f"{stub}:/stub:ro",))  # fmt: skip
    assert json.loads(out) == {"name": "gpu", "addresses": addresses}


def test_driver_role_runs_a_spark_application(gpu_image: str, tmp_path: Path) -> None:
    """The `driver` role as Spark on Kubernetes starts it: spark-submit in client mode,
    here with a local master, running PySpark in the image's Python."""
    app = tmp_path / "app.py"
    app.write_text(
        "from pyspark.sql import SparkSession\n"
        "spark = SparkSession.builder.getOrCreate()\n"
        "print('rows', spark.range(1000).selectExpr('sum(id)').first()[0])\n"
        "spark.stop()\n"
    )
    os.chmod(tmp_path, 0o755)
    out = run(gpu_image, "driver", "--master", "local[1]",
              "/app/app.py", volumes=(f"{tmp_path}:/app:ro",),
              env=("SPARK_DRIVER_BIND_ADDRESS=127.0.0.1",))  # fmt: skip
    assert "rows 499500" in out


def test_executor_role_starts_the_kubernetes_executor_backend(gpu_image: str) -> None:
    _executor_role_check(gpu_image)


def test_rapids_plugin_finds_its_shim_for_the_image_spark(gpu_image: str) -> None:
    """The plugin's Spark version check runs before any GPU is touched: its shim loader
    must find a shim for the image's Spark."""
    script = (
        "from pyspark.sql import SparkSession\n"
        "spark = (SparkSession.builder.master('local[1]')"
        ".config('spark.driver.extraClassPath', '/opt/spark-vllm/jars/rapids-4-spark.jar')"
        ".getOrCreate())\n"
        "loader = spark._jvm.com.nvidia.spark.rapids.ShimLoader\n"
        "print('shim', loader.getShimVersion().toString())\n"
    )
    out = run(gpu_image, "python", "-c", script)
    assert f"shim {VERSIONS['spark']}" in out
