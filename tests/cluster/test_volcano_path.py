"""Volcano for real: the chart's `volcano.enabled` path on the node, with Volcano's own
scheduler and controller manager (built from its Go module, scripts/volcano/) and the
Spark Operator started with its batch scheduler on. The operator makes the job's PodGroup
from the chart's `batchSchedulerOptions` (the chart adds up the GPUs, sidecars and the CPU
the pods request, which the operator's own sum leaves out or misreads), and Volcano places
the job's pods as one gang, within its Queue's capability."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from .jobs import Job, chat_job, make_job, questions, until
from .kube import Cluster, Obj, Operator
from .test_operator_path import operator_report

pytestmark = pytest.mark.cluster

# The queue the first job's release creates: one GPU at most for all its PodGroups. Its CPU
# and memory are the node's (2 cores; more memory than two jobs ask), so that only the GPU
# can hold a job back.
QUEUE = "vc-one-gpu"
CAPABILITY = {"cpu": "2", "memory": "20Gi", "nvidia.com/gpu": "1"}
# A job of little CPU: beside the first job (1.1 cores requested) it fits the node's two.
SMALL_CPU = {
    "sidecar": {"cpu": "100m"},
    "sparkConf": {
        "spark.kubernetes.driver.request.cores": "100m",
        "spark.kubernetes.executor.request.cores": "100m",
    },
}


def podgroup(job: Job) -> Obj | None:
    """The PodGroup the operator made for the job's SparkApplication (spark-<name>-pg)."""
    return job.cluster.find("podgroup", f"spark-{job.name}-pg", job.namespace)


def phase(group: Obj | None) -> str | None:
    return ((group or {}).get("status") or {}).get("phase")


def bound_pods(job: Job) -> list[str]:
    """The job's pods that a scheduler has put on the node."""
    return [
        p["metadata"]["name"]
        for p in job.cluster.pods(job.namespace, f"app.kubernetes.io/instance={job.name}")
        if p["spec"].get("nodeName")
    ]


def podgroup_events(job: Job) -> list[str]:
    """What Volcano said about the job's PodGroup (its events' messages)."""
    events = job.cluster.get(
        "events", "-n", job.namespace,
        "--field-selector", f"involvedObject.kind=PodGroup,involvedObject.name=spark-{job.name}-pg",
    )["items"]  # fmt: skip
    return [e.get("message", "") for e in events]


def set_node_gpus(cluster: Cluster, count: int) -> None:
    patch = [{"op": "replace", "path": "/status/capacity/nvidia.com~1gpu", "value": str(count)}]
    cluster.kubectl(
        "patch", "node", cluster.node_name, "--subresource=status", "--type=json",
        "-p", json.dumps(patch),
    )  # fmt: skip


def holds_whole(job: Job, seconds: int) -> None:
    """For SECONDS, the job's PodGroup stays Pending and none of its pods is bound."""
    for _ in range(seconds):
        assert phase(podgroup(job)) in (None, "Pending"), podgroup(job)
        assert not bound_pods(job), f"{bound_pods(job)} bound while the gang may not start"
        time.sleep(1)


def delete(job: Job) -> None:
    job.uninstall()
    job.cluster.kubectl(
        "delete", "sparkapplication", job.name, "-n", job.namespace, "--ignore-not-found",
        check=False,
    )  # fmt: skip


def test_volcano_runs_a_gang_in_its_queue_and_holds_what_does_not_fit(
    cluster: Cluster,
    spark_operator: Operator,
    node_gpus: int,
    namespace: str,
    image: str,
    model_root: Path,
    tmp_path: Path,
) -> None:
    """1. A chat job with `volcano.enabled`, in a Queue its release creates with a capability
    of one GPU: its driver goes to Volcano's scheduler, its PodGroup asks for the sidecar's GPU
    and the CPU its pods request (minResources), is seen Running, and the application ends
    COMPLETED with one row per input id.
    2. Meanwhile a second one-GPU job in the same queue (little CPU, so that only the queue's
    GPU can stop it) waits whole, Volcano saying the queue's quota is insufficient, although
    the node has a second GPU free; once the first has ended, its driver is bound.
    3. A job whose two executors need two GPUs each, on a node that advertises `node_gpus` (2):
    its PodGroup stays Pending and none of its pods is bound, the driver included (the gang
    waits whole); when the node advertises four, Volcano starts it."""
    rows = 12

    def volcano_job(
        name: str, executors: int, gpus: int, volcano: dict[str, Any], **extra: Any
    ) -> Job:
        """A chat job on the operator path with volcano.enabled: EXECUTORS executors whose
        sidecars ask GPUS each; EXTRA values are merged one level deep."""
        job = make_job(
            cluster, namespace, name, tmp_path / name, image, model_root, rows,
            chat_job(partitions=2),
            extra={"operator": {"enabled": True}, "volcano": {"enabled": True, **volcano}},
        )  # fmt: skip
        job.set_gpus(gpus)
        values = yaml.safe_load(job.values_file.read_text())
        values["executor"]["instances"] = executors
        for key, value in extra.items():
            values[key] = {**values.get(key, {}), **value}
        job.values_file.write_text(yaml.safe_dump(values))
        job.install()
        return job

    in_queue = {"queue": QUEUE}
    job = volcano_job(
        "vc-chat", 1, 1, {**in_queue, "createQueue": {"enabled": True, "capability": CAPABILITY}}
    )
    seen: dict[str, Any] = {"phases": []}

    def state() -> str | None:
        group = podgroup(job)
        if group:
            seen["podgroup"] = group
            if phase(group) and phase(group) not in seen["phases"]:
                seen["phases"].append(phase(group))
        driver = cluster.find("pod", job.driver, namespace)
        if driver:
            seen["driver"] = driver
        app = cluster.find("sparkapplication", job.name, namespace) or {}
        return ((app.get("status") or {}).get("applicationState") or {}).get("state")

    def ended() -> str | None:
        now = state()
        return now if now in ("COMPLETED", "FAILED", "SUBMISSION_FAILED") else None

    second = None
    try:
        until(
            "the first job's PodGroup Running",
            lambda: "Running" in seen["phases"] or ended(),
            600,
            every=2,
        )
        assert cluster.get("queue", QUEUE)["spec"]["capability"] == CAPABILITY
        second = volcano_job("vc-second", 1, 1, in_queue, **SMALL_CPU)
        group = until("the second job's PodGroup", lambda: podgroup(second), 300, every=2)
        assert group["spec"]["minResources"] == {
            "cpu": "300m", "memory": "7680Mi", "nvidia.com/gpu": "1",
        }, group["spec"]  # fmt: skip
        until(
            "Volcano's word on the second job",
            lambda: any("queue resource quota insufficient" in m for m in podgroup_events(second)),
            120, every=2,
        )  # fmt: skip
        if state() not in ("COMPLETED", "FAILED", "SUBMISSION_FAILED"):
            holds_whole(second, 10)

        final = until("the first Volcano job's end", ended, 900, every=2)
        assert final == "COMPLETED", operator_report(cluster, spark_operator, job)
        assert seen["driver"]["spec"]["schedulerName"] == "volcano", seen["driver"]["spec"]
        spec = seen["podgroup"]["spec"]
        assert spec["queue"] == QUEUE, spec
        # driver 300m + executor 300m + sidecar 500m (tests/cluster/jobs.py); 1536 + 6144 Mi
        assert spec["minResources"] == {
            "cpu": "1100m", "memory": "7680Mi", "nvidia.com/gpu": "1",
        }, spec  # fmt: skip
        assert "Running" in seen["phases"], seen["phases"]
        (answers,) = job.rows_by_run().values()
        assert sorted(r["id"] for r in answers) == sorted(q["id"] for q in questions(rows))
        assert not [r for r in answers if r["error"] is not None]

        def second_driver_bound() -> str | None:
            driver = cluster.find("pod", second.driver, namespace) or {}
            return (driver.get("spec") or {}).get("nodeName")

        until(
            "the second job's driver bound once the first has ended",
            second_driver_bound,
            300,
            every=2,
        )
    finally:
        # The second job first: the first one's release owns the Queue.
        if second is not None:
            delete(second)
        delete(job)

    big = volcano_job("vc-big", 2, 2, {})
    try:
        group = until("the big job's PodGroup", lambda: podgroup(big), 300, every=2)
        assert group["spec"]["queue"] == "default", group["spec"]
        # driver 300m + 2 x (executor 300m + sidecar 500m): fits the node's two cores
        assert group["spec"]["minResources"]["cpu"] == "1900m", group["spec"]
        assert group["spec"]["minResources"]["nvidia.com/gpu"] == "4", group["spec"]
        # Given time to be placed, nothing of it is: the gang waits whole.
        holds_whole(big, 30)
        set_node_gpus(cluster, 2 * node_gpus)

        def driver_bound() -> str | None:
            driver = cluster.find("pod", big.driver, namespace) or {}
            return (driver.get("spec") or {}).get("nodeName")

        until("the big job's driver bound once the node has room", driver_bound, 300, every=2)
    finally:
        set_node_gpus(cluster, node_gpus)
        delete(big)
