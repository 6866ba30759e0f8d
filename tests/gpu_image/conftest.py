"""Fixtures of the GPU image tier: the GPU image of the working tree, built from the GPU
wheelhouse with no registry (scripts/build-image.sh gpu). No GPU is needed: the tests
check what runs without one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

# The image tier's autouse fixture: the one reason to skip is no Docker engine.
from tests.image.conftest import docker_engine  # noqa: F401
from tests.image.pod import ROOT, docker, image_exists, inputs_digest

REPOSITORY = "spark-vllm"
# A first build holds the wheelhouse (4 GB), the venv stage (15 GB) and the image (10 GB,
# mostly a copy of the venv); with the venv stage kept from before, the image alone.
MIN_FREE_GIB = 30
MIN_FREE_GIB_CACHED = 12


@pytest.fixture(scope="session")
def gpu_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The GPU image with the RAPIDS Accelerator jar (fetched by the build script with Maven,
    or RAPIDS_JAR), tagged by a digest of its build inputs (pyproject.toml's version set pins
    the jar's sha256): an unchanged tree reuses the image built before. Prints its size and
    build time."""
    name = f"{REPOSITORY}:gpu-test-{inputs_digest()}"
    if image_exists(name):
        return name
    root = docker("info", "--format", "{{.DockerRootDir}}").strip()
    free = shutil.disk_usage(root).free / 2**30
    need = MIN_FREE_GIB_CACHED if image_exists("spark-vllm-venv:gpu") else MIN_FREE_GIB
    if free < need:
        pytest.fail(f"building the GPU image needs about {need} GiB free under {root}, "
                    f"found {free:.1f} GiB: remove unused images (docker image prune)")  # fmt: skip
    env = {**os.environ, "IMAGE": name, "PYTHON": sys.executable}
    env.pop("RAPIDS", None)
    log = tmp_path_factory.mktemp("build") / "build.log"
    start = time.monotonic()
    with log.open("w") as fh:
        proc = subprocess.run(
            ["bash", str(ROOT / "scripts" / "build-image.sh"), "gpu"],
            cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"building {name} failed; end of {log}:\n{log.read_text()[-4000:]}")
    size = int(docker("image", "inspect", "--format", "{{.Size}}", name))
    print(f"\nbuilt {name} in {time.monotonic() - start:.0f} s, {size / 1e9:.1f} GB")
    for old in docker("images", "--format", "{{.Repository}}:{{.Tag}}", REPOSITORY).split():
        if old.split(":")[-1].startswith("gpu-test-") and old != name:
            docker("rmi", old, check=False)
    return name
