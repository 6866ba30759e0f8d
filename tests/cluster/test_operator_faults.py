"""The operator path when the cluster does not go along, against the real Spark Operator v2.5.2
in the node (built from its Go module, run by the platform chart): a scheduled run that no
node can take, the schedule's next tick while that run still waits, the webhook down when a
job is installed (none of these gets as far as a vLLM server), and one job that takes the
faults of its controller, its driver, its sidecar and its executor in turn."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from .jobs import CHART, chat_job, make_job, questions, rendered_application, until
from .kube import (
    Cluster,
    Obj,
    Operator,
    container_ready,
    pod_containers,
    restart_count,
    wait_for,
)
from .test_cli_path import cli
from .test_operator_path import operator_report
from .test_submit_path import first_executor, loopback_probe

pytestmark = pytest.mark.cluster

SCHEDULED_LABEL = "sparkoperator.k8s.io/scheduled-app-name"


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_scheduled_run_fires_on_its_tick_waits_for_gpus_and_forbid_holds_the_next(
    cluster: Cluster,
    spark_operator: Operator,
    node_gpus: int,
    namespace: str,
    image: str,
    model_root: Path,
    tmp_path: Path,
) -> None:
    """`schedule.cron` every minute with `concurrencyPolicy: Forbid` and a sidecar asking
    one GPU more than the node has: the operator starts a run on the first tick; its driver
    runs and asks for an executor, which stays Pending with the scheduler's reason — on the
    pod, in the operator's executorState and in `spark-vllm status`; the next tick passes
    while that run waits, and no second run starts."""
    job = make_job(
        cluster, namespace, "op-nightly", tmp_path, image, model_root, 4, chat_job(),
        extra={
            "operator": {"enabled": True},
            "schedule": {"cron": "* * * * *", "concurrencyPolicy": "Forbid"},
        },
    )  # fmt: skip
    job.set_gpus(node_gpus + 1)
    job.install()

    def runs() -> list[Obj]:
        found = cluster.get(
            "sparkapplication", "-n", namespace, "-l", f"{SCHEDULED_LABEL}=op-nightly"
        )
        items: list[Obj] = found["items"]
        return items

    try:
        scheduled = wait_for(
            "the schedule's first run",
            lambda: (
                s
                if (s := cluster.find("scheduledsparkapplication", job.name, namespace))
                and (s.get("status") or {}).get("lastRunName")
                else None
            ),
            150,
        )
        run = scheduled["status"]["lastRunName"]
        first_tick = _time(scheduled["status"]["lastRun"])
        assert first_tick.second == 0, scheduled["status"]  # on the minute, as the cron says

        def waiting_executor() -> Obj | None:
            for pod in job.executors():
                for condition in pod["status"].get("conditions", []):
                    if condition["type"] == "PodScheduled" and condition["status"] == "False":
                        return pod
            return None

        executor = wait_for("an executor the scheduler cannot place", waiting_executor, 300)
        name = executor["metadata"]["name"]
        (reason,) = [
            c["message"] for c in executor["status"]["conditions"] if c["type"] == "PodScheduled"
        ]
        # The 1.35 scheduler goes on after this with what else it tried ("no new claims to
        # deallocate, preemption: 0/1 nodes are available: 1 Preemption is not helpful for
        # scheduling.").
        assert reason.startswith("0/1 nodes are available: 1 Insufficient nvidia.com/gpu."), reason

        # The operator reports it: the run is RUNNING (its driver is), the executor PENDING.
        def reported() -> Obj | None:
            app = cluster.find("sparkapplication", run, namespace) or {}
            status = app.get("status") or {}
            return status if (status.get("executorState") or {}).get(name) == "PENDING" else None

        status = wait_for("the operator's executorState", reported, 120)
        assert status["applicationState"]["state"] == "RUNNING", status
        shown = cli(cluster, "status", job.name, "-n", namespace)
        assert shown.returncode == 0, shown.stderr
        print(shown.stdout)
        assert f"{name} is not scheduled: {reason}" in shown.stdout, shown.stdout
        assert f"application {run}: RUNNING" in shown.stdout, shown.stdout

        # The next tick comes while the run waits: Forbid starts no second run.
        next_tick = first_tick.timestamp() + 60
        time.sleep(max(0.0, next_tick + 20 - time.time()))
        assert [a["metadata"]["name"] for a in runs()] == [run]
        scheduled = cluster.find("scheduledsparkapplication", job.name, namespace) or {}
        assert scheduled["status"]["lastRunName"] == run, scheduled["status"]
        assert job.executors()[0]["status"]["phase"] == "Pending"
    finally:
        job.uninstall()


def test_with_the_webhook_down_helm_install_is_refused_and_nothing_runs(
    cluster: Cluster,
    spark_operator: Operator,
    namespace: str,
    image: str,
    model_root: Path,
    tmp_path: Path,
) -> None:
    """The platform chart's `webhook.failurePolicy: Fail`: while the webhook cannot be
    reached the API server refuses the SparkApplication, so `helm install` fails with the
    API server's words and no job runs without its vLLM sidecar. The webhook back, the same
    application passes the API server again (a server-side dry run)."""
    job = make_job(
        cluster, namespace, "op-nowebhook", tmp_path, image, model_root, 4, chat_job(),
        extra={"operator": {"enabled": True}},
    )  # fmt: skip
    webhook, ns = spark_operator.webhook, spark_operator.namespace
    application = yaml.safe_dump(
        rendered_application(cluster, job.name, namespace, "-f", str(job.values_file))
    )

    def dry_run() -> Any:
        return cluster.kubectl(
            "create", "--dry-run=server", "-n", namespace, "-f", "-", stdin=application,
            check=False,
        )  # fmt: skip

    cluster.kubectl("scale", f"deploy/{webhook}", "-n", ns, "--replicas=0")
    try:
        wait_for(
            "the webhook's pods gone",
            lambda: not cluster.pods(ns, "app.kubernetes.io/component=webhook"),
            120,
        )
        installed = cluster.helm(
            "install", job.name, CHART, "-n", namespace, "-f", str(job.values_file),
            "--server-side=false", check=False,
        )  # fmt: skip
        assert installed.returncode != 0, installed.stdout
        print(installed.stderr)
        assert "failed calling webhook" in installed.stderr, installed.stderr
        assert "sparkoperator.k8s.io" in installed.stderr, installed.stderr
        assert cluster.find("sparkapplication", job.name, namespace) is None
        assert not cluster.pods(namespace, f"app.kubernetes.io/instance={job.name}")
    finally:
        job.uninstall()
        cluster.kubectl("scale", f"deploy/{webhook}", "-n", ns, "--replicas=1")
        cluster.kubectl("rollout", "status", f"deploy/{webhook}", "-n", ns, "--timeout=180s")
    # Its certificate may be new: wait until the API server can call it again.
    wait_for("the webhook answering", lambda: dry_run().returncode == 0, 120)


# --- faults during a job -----------------------------------------------------------------

FAULT_ROWS = 240


def test_controller_driver_vllm_and_executor_faults_end_with_every_id_once(
    cluster: Cluster,
    spark_operator: Operator,
    namespace: str,
    image: str,
    model_root: Path,
    tmp_path: Path,
) -> None:
    """One SparkApplication with `restartPolicy: OnFailure` takes four faults in turn, each
    while tasks are left to do:
    1. the operator's controller is killed: the job goes on without it, the Deployment
       starts a new one, and the status catches up (the application ends COMPLETED);
    2. the driver pod is deleted: the new controller resubmits the application, as its
       restartPolicy says, and the new run resumes;
    3. in that run, the vLLM server process is killed inside the sidecar container: the
       container exits and the kubelet starts the native sidecar again; the executor's task
       waits for it;
    4. the executor pod is deleted: Spark's driver asks for a new one, which the webhook
       gives its vLLM sidecar again.
    The driver goes second, while most of the job is left: the resubmitted run then has
    tasks for the last two faults however fast this machine is (deleting it last raced the
    job's end). Each id has exactly one successful row over all runs, and the resubmitted
    run sends nothing for the ids that had succeeded before it."""
    spec = chat_job(
        # Slow enough to leave tasks for every fault: many small tasks, few requests at once.
        partitions=16,
        sampling={"max_tokens": 48, "temperature": 0.0, "ignore_eos": True},
        concurrency={"mode": "fixed", "per_executor": 4},
    )
    restart = {
        "type": "OnFailure",
        "onFailureRetries": 1,
        "onFailureRetryInterval": 5,
        "onSubmissionFailureRetries": 1,
        "onSubmissionFailureRetryInterval": 5,
    }
    job = make_job(
        cluster, namespace, "op-faults", tmp_path, image, model_root, FAULT_ROWS, spec,
        extra={"operator": {"enabled": True}, "restartPolicy": restart},
    )  # fmt: skip
    job.install()

    def status() -> Obj:
        app = cluster.find("sparkapplication", job.name, namespace) or {}
        found: Obj = app.get("status") or {}
        return found

    def state() -> str | None:
        return (status().get("applicationState") or {}).get("state")

    def tasks_left(step: str) -> None:
        # Per run: the resubmitted run commits its 16 tasks again (those whose ids all
        # succeeded before in a moment), so a count over all runs passes 16 with tasks left.
        left = 16 - job.committed_tasks_of_newest_run()
        assert left > 0, f"the job ended before {step}:\n{job.report()}"

    try:
        until("a running executor pod", lambda: first_executor(job), 600)
        until("2 committed tasks", lambda: job.committed_tasks() >= 2, 600)

        # 1. The controller killed: the job does not need it to go on.
        ns, selector = spark_operator.namespace, "app.kubernetes.io/component=controller"
        killed = {p["metadata"]["name"] for p in cluster.pods(ns, selector)}
        cluster.kubectl("delete", "pod", *killed, "-n", ns, "--grace-period=0", "--force")
        done = job.committed_tasks()
        until(
            "a task committed after the controller died", lambda: job.committed_tasks() > done, 600
        )

        # 2. The driver pod deleted mid-job: the new controller resubmits the application.
        tasks_left("its driver was deleted")
        first_driver = (cluster.find("pod", job.driver, namespace) or {})["metadata"]["uid"]
        old_executors = {p["metadata"]["name"] for p in job.executors()}
        cluster.kubectl("delete", "pod", job.driver, "-n", namespace)
        until(
            "the old executors gone with their driver",
            lambda: not old_executors & {p["metadata"]["name"] for p in job.executors()},
            300,
        )
        succeeded_before = set(job.successes())
        assert 0 < len(succeeded_before) < FAULT_ROWS

        def resubmitted() -> str | None:
            driver = cluster.find("pod", job.driver, namespace)
            return (
                driver["metadata"]["uid"]
                if driver and driver["metadata"]["uid"] != first_driver
                else None
            )

        until("the resubmitted driver", resubmitted, 300)
        assert not killed & {p["metadata"]["name"] for p in cluster.pods(ns, selector)}

        # 3. vLLM killed inside the sidecar container of the new run's executor (the child
        # of tini is the server): tini exits with it, and the kubelet starts the native
        # sidecar again (restartPolicy Always) while the executor's tasks wait.
        executor = until("the new run's executor", lambda: first_executor(job, old_executors), 600)
        name = executor["metadata"]["name"]
        loopback_probe(job, name)
        tasks_left("its vLLM was killed")
        before = restart_count(cluster.find("pod", name, namespace) or {}, "vllm")
        cluster.kubectl(
            "exec", name, "-n", namespace, "-c", "vllm", "--",
            "sh", "-c", 'pkill -KILL -P "$(pgrep -x tini)"',
        )  # fmt: skip
        killed_at = time.monotonic()
        done = job.committed_tasks()
        until(
            "the kubelet's restart of the vLLM sidecar",
            lambda: restart_count(cluster.find("pod", name, namespace) or {}, "vllm") > before,
            120,
        )
        loopback_probe(job, name)  # answers again
        print(f"vLLM answered again {time.monotonic() - killed_at:.0f} s after the kill")
        engines = cluster.kubectl(
            "exec", name, "-n", namespace, "-c", "vllm", "--",
            "pgrep", "-c", "-f", "^VLLM::EngineCore",
        ).stdout.strip()  # fmt: skip
        assert engines == "1", f"{engines} vLLM engines in the sidecar: the killed one's lives on"
        until("a task committed after the restart", lambda: job.committed_tasks() > done, 600)
        pod = cluster.find("pod", name, namespace)
        assert pod is not None and container_ready(pod, "spark-kubernetes-executor"), job.report()

        # 4. The executor pod deleted: the driver replaces it, the webhook mutates it.
        tasks_left("its executor was deleted")
        cluster.kubectl("delete", "pod", name, "-n", namespace, "--wait=false")
        replacement = until(
            "a new executor pod", lambda: first_executor(job, old_executors | {name}), 600
        )
        containers = pod_containers(replacement)
        assert sorted(containers) == ["spark-kubernetes-executor", "vllm"], containers.keys()
        assert containers["vllm"].get("restartPolicy") == "Always", containers["vllm"]
        loopback_probe(job, replacement["metadata"]["name"])
        done = job.committed_tasks()
        until("a task committed by the new executor", lambda: job.committed_tasks() > done, 600)

        until(
            "the application's end",
            lambda: s if (s := state()) in ("COMPLETED", "FAILED") else None,
            1500,
            every=3,
        )
        final = status()
        assert final["applicationState"]["state"] == "COMPLETED", operator_report(
            cluster, spark_operator, job
        )
        assert final.get("executionAttempts") == 2, final
        summary = job.logs(job.driver)
    except BaseException:
        print(operator_report(cluster, spark_operator, job))
        raise
    finally:
        job.uninstall()
        cluster.kubectl(
            "delete", "sparkapplication", job.name, "-n", namespace, "--ignore-not-found",
            check=False,
        )  # fmt: skip

    runs = job.rows_by_run()
    ids = {q["id"] for q in questions(FAULT_ROWS)}
    counts = job.successes()
    assert set(counts) == ids, f"ids without a success: {sorted(ids - set(counts))[:10]}"
    assert max(counts.values()) == 1, (
        f"successes redone: {[i for i, n in counts.items() if n > 1][:10]}"
    )
    last_run = max(runs)
    redone = succeeded_before & {r["id"] for r in runs[last_run]}
    assert not redone, f"the resubmitted run sent ids that had succeeded: {sorted(redone)[:10]}"
    skipped = re.search(r"skipped\s+(\d+)", summary)
    assert skipped and int(skipped.group(1)) == len(succeeded_before), summary[-3000:]
