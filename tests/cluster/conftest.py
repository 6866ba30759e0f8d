"""Fixtures of the cluster tier: one real one-node Kubernetes v1.20.2 per test session
(scripts/k8s-node/), the CPU image and the tiny model of the image tier, the operator's
CRDs, and the chart installed with helm.

The node runs pods on the same Docker engine that builds the image, so the image tier's
`spark-vllm:test-<digest>` is on the node without any registry. The Spark Operator's
controller cannot run here (no registry for its image, its Go dependencies unpackaged): the
operator path is checked up to the API server accepting its objects, and the operator's
webhook stays modelled by the bundle tier; jobs run through the operator-less path.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.image.conftest import image, model_root  # noqa: F401  (shared fixtures)
from tests.image.pod import docker_engine_problem

from .kube import ROOT, Cluster, wait_for

NODE_SCRIPT = ROOT / "scripts" / "k8s-node" / "node.sh"
CRDS = Path(__file__).with_name("crds")
# A fixed folder, so that a node left behind by a killed session is stopped by the next one.
NODE_DIR = Path(os.environ.get("K8S_NODE_DIR", "/tmp/spark-vllm-k8s-node"))


@pytest.fixture(scope="session", autouse=True)
def docker_engine() -> None:
    """The one reason this tier may skip: no Docker engine on the machine."""
    problem = docker_engine_problem()
    if problem:
        pytest.skip(f"cluster tests need Docker: {problem}")


# Package scope: one node for the session's cluster tests, stopped as soon as they are done
# so that the tiers after them get the machine's two cores back.
@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The node, up and Ready; stopped (its pods and mounts removed) after the tier.
    Building Kubernetes on first use takes about 9 minutes; later sessions reuse the build."""
    if os.geteuid() != 0:
        pytest.fail("the cluster tier runs a kubelet, which needs root", pytrace=False)
    env = {**os.environ, "K8S_NODE_DIR": str(NODE_DIR)}
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(NODE_SCRIPT), "up"], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"the node did not start:\n{proc.stderr[-5000:]}", pytrace=False)
    values = dict(
        line.split("=", 1) for line in (NODE_DIR / "env").read_text().splitlines() if "=" in line
    )
    print(
        f"one-node Kubernetes {values['K8S_VERSION']} Ready after {time.monotonic() - start:.0f}s"
    )
    try:
        yield Cluster(
            kubeconfig=values["KUBECONFIG"],
            api_server=values["K8S_API_SERVER"],
            node_dir=NODE_DIR,
            node_name=values["K8S_NODE_NAME"],
        )
    finally:
        logs = tmp_path_factory.mktemp("k8s-node-logs")
        for log in (NODE_DIR / "logs").glob("*.log"):
            shutil.copy(log, logs / log.name)
        subprocess.run(["bash", str(NODE_SCRIPT), "down"], env=env, check=False)


def crds_for_1_20(text: str) -> str:
    """The operator's CRDs (chart 2.5.2) as Kubernetes 1.20 accepts them.

    controller-gen writes `default: ""` under string fields whose Go type has a default
    marker; 1.20's structural-schema validation reads that empty default as null and refuses
    the CRD ("default: Invalid value: "null": in body must be of type string"). Later API
    servers accept it. Dropping the default changes nothing the chart relies on."""
    return re.sub(r'(?m)^\s*default: ""\n', "", text)


@pytest.fixture(scope="package")
def operator_crds(cluster: Cluster) -> list[str]:
    """SparkApplication and ScheduledSparkApplication CRDs, pinned (tests/cluster/crds),
    created and Established."""
    names = []
    for path in sorted(CRDS.glob("*.yaml")):
        # create, not apply: a client-side apply would store the whole 800 KB CRD in an
        # annotation, over the 256 KB limit.
        cluster.kubectl("create", "-f", "-", stdin=crds_for_1_20(path.read_text()))
        names.append(path.name.split("_", 1)[1].removesuffix(".yaml") + ".sparkoperator.k8s.io")
    for name in names:
        # Polled, not `kubectl wait --for=condition=Established`: kubectl 1.20's wait fails at
        # once ("status.conditions accessor error: <nil>") when it reads the CRD before the API
        # server has written any condition, which a CI run saw on a loaded machine.
        wait_for(f"CRD {name} Established", functools.partial(_established, cluster, name), 60)
    return names


def _established(cluster: Cluster, name: str) -> bool:
    crd = cluster.find("crd", name, "default") or {}
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


@pytest.fixture(scope="package")
def namespace(cluster: Cluster) -> str:
    """A namespace for the jobs, once its default ServiceAccount (and token) exists."""
    name = "spark-jobs"
    cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 60
    while not cluster.find("serviceaccount", "default", name):
        assert time.monotonic() < deadline, "the namespace's default ServiceAccount never came"
        time.sleep(1)
    return name
