"""Fixtures of the image tier: the CPU image, the chart rendered for it, a tiny model, and
the vLLM sidecar started from the chart's own container spec."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import chart_model_values

from .pod import (
    ROOT,
    Obj,
    PodVolumes,
    docker,
    docker_engine_problem,
    image_exists,
    inputs_digest,
    logs,
    run_args,
    wait_for_probe,
)

REPOSITORY = "spark-vllm"
MODEL_DIR = "tiny-llama"
# The venv stage and the image are about 5 and 4 GB; a rebuild holds old and new at once.
MIN_FREE_GIB = 16


@pytest.fixture(scope="session", autouse=True)
def docker_engine() -> None:
    """The one reason this tier may skip: no Docker engine on the machine."""
    problem = docker_engine_problem()
    if problem:
        pytest.skip(f"image tests need Docker: {problem}")


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The CPU image of the working tree, tagged by a digest of its build inputs: an
    unchanged tree reuses the image built before."""
    tag = f"test-{inputs_digest()}"
    name = f"{REPOSITORY}:{tag}"
    if image_exists(name):
        return name
    root = docker("info", "--format", "{{.DockerRootDir}}").strip()
    free = shutil.disk_usage(root).free / 2**30
    if free < MIN_FREE_GIB:
        pytest.fail(
            f"building the image needs about {MIN_FREE_GIB} GiB free under {root}, "
            f"found {free:.1f} GiB: remove unused images (docker image prune)"
        )
    log = tmp_path_factory.mktemp("build") / "build.log"
    with log.open("w") as fh:
        proc = subprocess.run(
            ["bash", str(ROOT / "scripts" / "build-image.sh"), "cpu"],
            cwd=ROOT,
            env={**os.environ, "IMAGE": name, "PYTHON": sys.executable},
            stdout=fh,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if proc.returncode != 0:
        pytest.fail(f"building {name} failed; end of {log}:\n{log.read_text()[-4000:]}")
    # Older test images of this repository only hold their small top layers now.
    for old in docker("images", "--format", "{{.Repository}}:{{.Tag}}", REPOSITORY).split():
        if old.split(":")[-1].startswith("test-") and old != name:
            docker("rmi", old, check=False)
    return name


def helm_binary() -> str:
    candidates = [os.environ.get("HELM"), str(ROOT / "build/tools/bin/helm"), shutil.which("helm")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    subprocess.run(["bash", str(ROOT / "scripts" / "get-helm.sh")], check=True, cwd=ROOT)
    return str(ROOT / "build/tools/bin/helm")


@pytest.fixture(scope="session")
def model_root(image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the tiny model, made by the image's own Python (which also
    proves transformers imports there)."""
    root = tmp_path_factory.mktemp("models")
    root.chmod(0o777)
    docker(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp:rw,exec,mode=1777",
        "-v", f"{ROOT / 'scripts'}:/scripts:ro", "-v", f"{root}:/models",
        image, "python", "/scripts/make_tiny_model.py", f"/models/{MODEL_DIR}",
    )  # fmt: skip
    return root


@dataclass
class Rendered:
    app: Obj  # the SparkApplication's spec
    job_yaml: str  # the job spec the chart puts in its ConfigMap

    @property
    def sidecar(self) -> Obj:
        executor = self.app["executor"]
        containers = executor.get("initContainers", []) + executor.get("sidecars", [])
        return next(c for c in containers if c["name"] == "vllm")


@pytest.fixture(scope="session")
def rendered(image: str, model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """`helm template charts/spark-vllm` for the CPU image, the tiny model in a hostPath
    cache and the example chat job (its endpoint left to the chart to fill in)."""
    job = yaml.safe_load((ROOT / "examples/jobs/chat.yaml").read_text())
    job.pop("endpoint", None)
    repository, tag = image.split(":")
    values: dict[str, Any] = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "job": job,
        "model": chart_model_values(model_root, MODEL_DIR),
        "sidecar": {
            "gpu": {"count": 0},
            "cpu": 2,
            "memoryMi": 16384,
            "shmSizeMi": 1024,
            "startupTimeoutSeconds": 600,
            "vllm": {"gpuMemoryUtilization": None, "maxModelLen": 512},
            "env": [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"}],
        },
    }
    values_file = tmp_path_factory.mktemp("chart") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    proc = subprocess.run(
        [helm_binary(), "template", "image-test", str(ROOT / "charts/spark-vllm"),
         "-f", str(values_file)],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    app = next(d for d in docs if d["kind"] == "SparkApplication")
    config = next(d for d in docs if d["kind"] == "ConfigMap" and "job.yaml" in d.get("data", {}))
    return Rendered(app=app["spec"], job_yaml=config["data"]["job.yaml"])


def pod_volumes(rendered: Rendered, model_root: Path) -> PodVolumes:
    hostpaths = {
        v["name"]: Path(v["hostPath"]["path"]) for v in rendered.app["volumes"] if "hostPath" in v
    }
    assert hostpaths, "the chart rendered no hostPath volume for the model cache"
    assert all(path == model_root for path in hostpaths.values())
    return PodVolumes(rendered.app["volumes"], dict(hostpaths))


# Module scope: the sidecar stops when the image tests end, before the integration
# tier starts its own vLLM on the same two cores.
@pytest.fixture(scope="module")
def sidecar(
    image: str, rendered: Rendered, model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The vLLM sidecar, started from the chart's container spec, once its startupProbe
    passes; yields the container's name (its network namespace is the pod's). Its log is
    kept in the session's temporary directory."""
    spec = rendered.sidecar
    assert spec["image"] == image
    name = f"spark-vllm-sidecar-{uuid.uuid4().hex[:8]}"
    volumes = pod_volumes(rendered, model_root)
    docker(*run_args(spec, image, volumes, name))
    try:
        try:
            took = wait_for_probe(name, spec["startupProbe"])
        except AssertionError as exc:
            pytest.fail(f"{exc}\n--- sidecar log ---\n{logs(name)[-6000:]}")
        print(f"sidecar ready after {took:.0f}s")
        yield name
    finally:
        (tmp_path_factory.mktemp("sidecar") / "vllm.log").write_text(logs(name))
        docker("rm", "--force", name, check=False)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
