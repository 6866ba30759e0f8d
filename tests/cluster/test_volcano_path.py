"""Volcano for real: the chart's `volcano.enabled` path on the node, with Volcano's own
scheduler and controller manager (built from its Go module, scripts/volcano/) and the
Spark Operator started with its batch scheduler on. The operator makes the job's PodGroup
from the chart's `batchSchedulerOptions` (the chart adds up the GPUs and sidecars that the
operator's own sum leaves out), and Volcano places the job's pods as one gang."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from .jobs import Job, chat_job, make_job, questions, until
from .kube import Cluster, Obj, Operator
from .test_operator_path import operator_report

pytestmark = pytest.mark.cluster


def podgroup(job: Job) -> Obj | None:
    """The PodGroup the operator made for the job's SparkApplication (spark-<name>-pg)."""
    return job.cluster.find("podgroup", f"spark-{job.name}-pg", job.namespace)


def set_node_gpus(cluster: Cluster, count: int) -> None:
    patch = [{"op": "replace", "path": "/status/capacity/nvidia.com~1gpu", "value": str(count)}]
    cluster.kubectl(
        "patch", "node", cluster.node_name, "--subresource=status", "--type=json",
        "-p", json.dumps(patch),
    )  # fmt: skip


def test_volcano_runs_a_gang_and_holds_one_that_does_not_fit_until_it_does(
    cluster: Cluster,
    spark_operator: Operator,
    node_gpus: int,
    namespace: str,
    image: str,
    model_root: Path,
    tmp_path: Path,
) -> None:
    """1. A chat job with `volcano.enabled`: its driver goes to Volcano's scheduler, its
    PodGroup asks for the sidecar's GPU (minResources), is seen Running, and the
    application ends COMPLETED with one row per input id.
    2. A job whose two executors need two GPUs each, on a node that advertises
    `node_gpus` (2): its PodGroup stays Pending and none of its pods is bound, the driver
    included (the gang waits whole); when the node advertises four, Volcano starts it."""
    rows = 12

    def volcano_job(name: str, executors: int, gpus: int) -> Job:
        """A chat job on the operator path with volcano.enabled: EXECUTORS executors whose
        sidecars ask GPUS each."""
        job = make_job(
            cluster, namespace, name, tmp_path / name, image, model_root, rows,
            chat_job(partitions=2),
            extra={"operator": {"enabled": True}, "volcano": {"enabled": True}},
        )  # fmt: skip
        job.set_gpus(gpus)
        values = yaml.safe_load(job.values_file.read_text())
        values["executor"]["instances"] = executors
        job.values_file.write_text(yaml.safe_dump(values))
        job.install()
        return job

    job = volcano_job("vc-chat", executors=1, gpus=1)
    seen: dict[str, Any] = {"phases": []}

    def ended() -> str | None:
        group = podgroup(job)
        if group:
            seen["podgroup"] = group
            phase = (group.get("status") or {}).get("phase")
            if phase and phase not in seen["phases"]:
                seen["phases"].append(phase)
        driver = cluster.find("pod", job.driver, namespace)
        if driver:
            seen["driver"] = driver
        app = cluster.find("sparkapplication", job.name, namespace) or {}
        state = ((app.get("status") or {}).get("applicationState") or {}).get("state")
        return state if state in ("COMPLETED", "FAILED", "SUBMISSION_FAILED") else None

    try:
        state = until("the Volcano job's end", ended, 900, every=2)
        assert state == "COMPLETED", operator_report(cluster, spark_operator, job)
        assert seen["driver"]["spec"]["schedulerName"] == "volcano", seen["driver"]["spec"]
        spec = seen["podgroup"]["spec"]
        assert spec["queue"] == "default", spec
        assert spec["minResources"]["nvidia.com/gpu"] == "1", spec
        assert "Running" in seen["phases"], seen["phases"]
        (answers,) = job.rows_by_run().values()
        assert sorted(r["id"] for r in answers) == sorted(q["id"] for q in questions(rows))
        assert not [r for r in answers if r["error"] is not None]
    finally:
        job.uninstall()
        cluster.kubectl(
            "delete", "sparkapplication", job.name, "-n", namespace, "--ignore-not-found",
            check=False,
        )  # fmt: skip

    big = volcano_job("vc-big", executors=2, gpus=2)
    try:
        group = until("the big job's PodGroup", lambda: podgroup(big), 300, every=2)
        assert group["spec"]["minResources"]["nvidia.com/gpu"] == "4", group["spec"]
        # Given time to be placed, nothing of it is: the gang waits whole.
        for _ in range(30):
            group = podgroup(big) or {}
            assert (group.get("status") or {}).get("phase") in (None, "Pending"), group
            bound = [
                p["metadata"]["name"]
                for p in cluster.pods(namespace, f"app.kubernetes.io/instance={big.name}")
                if p["spec"].get("nodeName")
            ]
            assert not bound, f"{bound} bound while the gang does not fit"
            until("a second", lambda: True, 1)
        set_node_gpus(cluster, 2 * node_gpus)

        def driver_bound() -> str | None:
            driver = cluster.find("pod", big.driver, namespace) or {}
            return (driver.get("spec") or {}).get("nodeName")

        until("the big job's driver bound once the node has room", driver_bound, 300, every=2)
    finally:
        set_node_gpus(cluster, node_gpus)
        big.uninstall()
        cluster.kubectl(
            "delete", "sparkapplication", big.name, "-n", namespace, "--ignore-not-found",
            check=False,
        )  # fmt: skip
