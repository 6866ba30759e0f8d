"""Fixtures of the cluster tier: one real one-node Kubernetes v1.35.8 per test session
(scripts/k8s-node/, built from Go modules, cri-dockerd as its runtime), the CPU image and
the tiny model of the image tier, Volcano's scheduler and controller manager
(scripts/volcano/), the Spark Operator v2.5.2 built from its Go module
(scripts/spark-operator/) with its own CRDs, run in the node by the platform chart, and the
job chart installed with helm.

The node runs pods on the same Docker engine that builds the images, so the image tier's
`spark-vllm:test-<digest>` and the operator's image made from it are on the node without
any registry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.image.conftest import image, model_root  # noqa: F401  (shared fixtures)
from tests.image.pod import docker_engine_problem

from .kube import ROOT, Cluster, Operator, wait_for

NODE_SCRIPT = ROOT / "scripts" / "k8s-node" / "node.sh"
OPERATOR_SCRIPTS = ROOT / "scripts" / "spark-operator"
VOLCANO_SCRIPT = ROOT / "scripts" / "volcano" / "run.sh"
OPERATOR_NAMESPACE = "spark-operator"
PLATFORM_RELEASE = "platform"
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
    Building the node's parts on first use takes about 20 minutes (Kubernetes, cri-dockerd,
    etcd); later sessions reuse the build."""
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


def _install(cluster: Cluster, what: str, **env: str) -> str:
    """scripts/spark-operator/install.sh WHAT against the node; its last line of output."""
    proc = subprocess.run(
        ["bash", str(OPERATOR_SCRIPTS / "install.sh"), what],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "KUBECONFIG": cluster.kubeconfig, **env},
    )
    if proc.returncode != 0:
        pytest.fail(f"install.sh {what} failed:\n{proc.stderr[-5000:]}", pytrace=False)
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.fixture(scope="package")
def operator_crds(cluster: Cluster) -> None:
    """The Spark Operator's CRDs (SparkApplication, ScheduledSparkApplication, SparkConnect)
    from its Go module v2.5.2 (downloaded by scripts/spark-operator/build.sh --crds-only in
    seconds; no build), created and Established."""
    _install(cluster, "crds")


@pytest.fixture(scope="package")
def volcano(cluster: Cluster) -> Iterator[None]:
    """Volcano v1.14.1's scheduler and controller manager, built from its Go module
    (scripts/volcano/build.sh, cached) and run beside the node's control plane
    (scripts/volcano/run.sh) with its CRDs; Ready once the default Queue is Open. Before the
    operator: it manages PodGroups only if their CRD exists when it starts."""
    env = {**os.environ, "KUBECONFIG": cluster.kubeconfig, "K8S_NODE_DIR": str(cluster.node_dir)}
    proc = subprocess.run(
        ["bash", str(VOLCANO_SCRIPT), "up"], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"Volcano did not start:\n{proc.stderr[-5000:]}", pytrace=False)
    yield
    subprocess.run(["bash", str(VOLCANO_SCRIPT), "down"], env=env, check=False)


@pytest.fixture(scope="package")
def spark_operator(
    cluster: Cluster,
    operator_crds: None,
    volcano: None,
    namespace: str,
    image: str,  # noqa: F811  (the image tier's fixture)
) -> Iterator[Operator]:
    """The operator's controller and webhook in the node, as `make cluster-up` installs
    them: the platform chart, with the operator's image made from the CPU image plus the
    binary. Ready once both Deployments are and the webhook has put its CA into both
    configurations."""
    operator_image = _install(
        cluster,
        "operator",
        BASE_IMAGE=image,
        JOB_NAMESPACE=namespace,
        OPERATOR_NAMESPACE=OPERATOR_NAMESPACE,
        # No kube-proxy on this node: the kubernetes Service's address routes nowhere.
        API_SERVER=cluster.api_server,
    )
    name = f"{PLATFORM_RELEASE}-spark-operator"
    yield Operator(OPERATOR_NAMESPACE, f"{name}-controller", f"{name}-webhook", operator_image)
    # The webhooks refuse Spark's pods (failurePolicy Fail) once the webhook is gone.
    cluster.helm("uninstall", PLATFORM_RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", check=False)


@pytest.fixture(scope="package")
def node_gpus(cluster: Cluster) -> int:
    """The node advertises two `nvidia.com/gpu` (a JSON patch of its status' capacity, the
    way clusters without a device plugin are tested), so the chart's GPU requests are
    scheduled and admitted for real; nothing runs on a GPU (vLLM is the CPU build)."""
    count = 2
    patch = [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": str(count)}]
    cluster.kubectl(
        "patch", "node", cluster.node_name, "--subresource=status", "--type=json",
        "-p", json.dumps(patch),
    )  # fmt: skip

    def advertised() -> bool:
        node = cluster.find("node", cluster.node_name, "default") or {}
        return (node.get("status") or {}).get("allocatable", {}).get("nvidia.com/gpu") == str(count)

    wait_for("the node's GPUs allocatable", advertised, 60)
    return count


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
