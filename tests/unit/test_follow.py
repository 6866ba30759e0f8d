"""The follow loop's state machine (operate._Follow), fed the kubernetes client's own pod
models as a watch delivers them: what it prints and the exit code it ends with. The cluster
tier follows real jobs (tests/cluster/test_cli_path.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes.client import (
    V1Container,
    V1ContainerState,
    V1ContainerStateTerminated,
    V1ContainerStatus,
    V1ObjectMeta,
    V1Pod,
    V1PodCondition,
    V1PodSpec,
    V1PodStatus,
)

from spark_vllm.cluster import operate
from spark_vllm.cluster.operate import DRIVER_CONTAINER, NOT_SEEN, Kube, _Follow

pytestmark = pytest.mark.unit


def pod(name: str, role: str, phase: str, code: int | None = None, deleting: bool = False) -> V1Pod:
    labels = {"app.kubernetes.io/instance": "job"}
    if role == "submitter":
        labels["app.kubernetes.io/component"] = "submitter"
    else:
        labels["spark-role"] = role
    statuses = None
    if code is not None:
        terminated = V1ContainerStateTerminated(exit_code=code)
        statuses = [
            V1ContainerStatus(
                name=DRIVER_CONTAINER, image="i", image_id="", ready=False, restart_count=0,
                state=V1ContainerState(terminated=terminated),
            )
        ]  # fmt: skip
    return V1Pod(
        metadata=V1ObjectMeta(
            name=name, labels=labels, deletion_timestamp=datetime.now(UTC) if deleting else None
        ),
        status=V1PodStatus(phase=phase, container_statuses=statuses),
    )


def follower() -> _Follow:
    # No API behind it: the driver's log stream and the submitter's log read fail quietly,
    # as they do when a pod has gone.
    return _Follow(Kube(core=None, batch=None), "job", "jobs")


def said(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line.removeprefix("spark-vllm: ") for line in capsys.readouterr().out.splitlines()]


def test_a_job_seen_from_pending_to_success_ends_with_the_drivers_code(capsys: Any) -> None:
    state = follower()
    events = [
        ("ADDED", pod("job-driver", "driver", "Pending")),
        ("MODIFIED", pod("job-driver", "driver", "Running")),
        ("ADDED", pod("exec-1", "executor", "Pending")),
        ("MODIFIED", pod("exec-1", "executor", "Running")),
        ("ADDED", pod("exec-2", "executor", "Running")),
        ("MODIFIED", pod("exec-2", "executor", "Running", deleting=True)),
        ("DELETED", pod("exec-2", "executor", "Running")),
        ("MODIFIED", pod("job-driver", "driver", "Running")),  # no change: nothing printed
    ]
    assert [state.see(kind, p) for kind, p in events] == [None] * len(events)
    assert state.see("MODIFIED", pod("job-driver", "driver", "Succeeded", code=0)) == 0
    assert said(capsys) == [
        "driver job-driver pending",
        "driver job-driver running",
        "executors up 1",
        "executors up 2",
        "executors up 1",
        "driver job-driver succeeded",
        "completed",
    ]


@pytest.mark.parametrize("code", [1, 2, 3])
def test_a_driver_that_exits_non_zero_gives_its_code(capsys: Any, code: int) -> None:
    state = follower()
    assert state.see("ADDED", pod("job-driver", "driver", "Failed", code=code)) == code
    assert said(capsys)[-1] == f"failed: the driver exited with code {code}"


def test_a_driver_deleted_before_it_ended_is_a_cancel(capsys: Any) -> None:
    state = follower()
    assert state.see("ADDED", pod("job-driver", "driver", "Pending")) is None
    assert state.see("DELETED", pod("job-driver", "driver", "Pending")) == 1
    assert said(capsys)[-1] == (
        "failed: the driver pod job-driver was deleted (cancelled) before it ended"
    )
    # A running driver being deleted shows Running until it goes: not yet an end.
    state = follower()
    assert state.see("MODIFIED", pod("job-driver", "driver", "Running", deleting=True)) is None


def test_submitter_failures_end_the_follow_only_past_the_jobs_retries(capsys: Any) -> None:
    state = follower()
    state.backoff_limit = 1
    assert state.see("MODIFIED", pod("submit-a", "submitter", "Failed")) is None
    assert state.see("MODIFIED", pod("submit-a", "submitter", "Failed")) is None  # same pod
    assert state.see("MODIFIED", pod("submit-b", "submitter", "Failed")) == 1
    assert said(capsys)[-2:] == [
        "failed: the submitter Job failed before a driver existed; its pod submit-b said:",
        "(its log could not be read)",
    ]
    # Once a driver exists, its end decides, not the submitter's.
    state = follower()
    state.see("ADDED", pod("job-driver", "driver", "Running"))
    assert state.see("MODIFIED", pod("submit-a", "submitter", "Failed")) is None


def app(state: str | None, error: str = "") -> dict[str, Any]:
    status = {"applicationState": {"state": state, "errorMessage": error}} if state else {}
    return {"metadata": {"name": "job"}, "status": status}


def test_the_applications_states_are_printed_once_each(capsys: Any) -> None:
    state = follower()
    for seen in (app(None), app(None), app("SUBMITTED"), app("SUBMITTED"), app("RUNNING")):
        assert state.see_application(seen) is None
    assert said(capsys) == [
        f"application {NOT_SEEN}",
        "application submitted",
        "application running",
    ]


@pytest.mark.parametrize("failed", ["SUBMISSION_FAILED", "FAILED"])
def test_an_application_failed_before_any_driver_ends_the_follow(capsys: Any, failed: str) -> None:
    state = follower()
    assert state.see_application(app(failed, "spark-submit: no such image")) == 1
    assert said(capsys)[-1] == (
        f"failed: the Spark Operator reports {failed}: spark-submit: no such image"
    )


def test_after_a_driver_ran_its_own_end_decides_not_the_application(capsys: Any) -> None:
    state = follower()
    state.see("ADDED", pod("job-driver", "driver", "Running"))
    assert state.see_application(app("FAILED", "driver failed")) is None
    assert state.see_application(None) is None


def test_an_application_deleted_before_a_driver_ran_is_a_cancel(capsys: Any) -> None:
    state = follower()
    assert state.see_application(app("SUBMITTED")) is None
    assert state.see_application(None) == 1
    assert said(capsys)[-1] == (
        "failed: the SparkApplication was deleted (cancelled) before a driver ran"
    )


# The shape of a failed submission's errorMessage as the real operator v2.5.2 wrote it in the
# cluster tier (shortened: the real one is ~95 lines of spark-submit's output).
SUBMIT_FAILURE = """failed to submit spark application: failed to run spark-submit: failed to run \
spark-submit: WARNING: Using incubator modules: jdk.incubator.vector
26/12/06 23:10:19 WARN NativeCodeLoader: Unable to load native-hadoop library
26/12/06 23:10:22 ERROR Client: Please check "kubectl auth can-i create pod" first.
Exception in thread "main" io.fabric8.kubernetes.client.KubernetesClientException: Failure \
executing: POST at: https://10.0.0.1:6443/api/v1/namespaces/jobs/pods. Message: pods \
"op-driver" is forbidden: error looking up service account jobs/nobody: serviceaccount \
"nobody" not found. Received status: Status(apiVersion=v1, code=403, details=StatusDetails())
\tat io.fabric8.kubernetes.client.dsl.internal.OperationSupport.requestFailure(...)
Caused by: io.fabric8.kubernetes.client.KubernetesClientException: Failure executing: POST"""


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            SUBMIT_FAILURE,
            "failed to submit spark application: failed to run spark-submit: failed to run "
            'spark-submit: pods "op-driver" is forbidden: error looking up service account '
            'jobs/nobody: serviceaccount "nobody" not found',
        ),
        ("driver container failed with ExitCode: 1", "driver container failed with ExitCode: 1"),
        (
            'spark-submit failed\nException in thread "main" java.lang.IllegalStateException: x',
            'spark-submit failed: Exception in thread "main" java.lang.IllegalStateException: x',
        ),
        ("two lines\nno exception at all", "two lines"),
        ("", ""),
    ],
)
def test_app_error_is_one_line_with_the_api_servers_words(message: str, expected: str) -> None:
    app = {"status": {"applicationState": {"state": "FAILED", "errorMessage": message}}}
    assert operate.app_error(app) == expected


# The scheduler's words as Kubernetes 1.20 wrote them for an executor asking 3 GPUs of a node
# advertising 2 (tests/cluster/test_operator_path.py sees the real one).
NO_GPU = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."


def waiting(name: str, role: str, message: str | None, scheduled: str = "False") -> V1Pod:
    """A Pending pod whose PodScheduled condition says `message` (None: no condition yet)."""
    p = pod(name, role, "Pending")
    if message is not None:
        p.status.conditions = [
            V1PodCondition(
                type="PodScheduled", status=scheduled, reason="Unschedulable", message=message
            )
        ]
    return p


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (waiting("e", "executor", NO_GPU), NO_GPU),
        (waiting("e", "executor", ""), "Unschedulable"),
        (waiting("e", "executor", None), None),  # the scheduler has not tried yet
        (waiting("e", "executor", "placed", scheduled="True"), None),
        (pod("e", "executor", "Running"), None),
    ],
)
def test_unschedulable_is_the_schedulers_reason_for_a_pending_pod(
    p: V1Pod, expected: str | None
) -> None:
    assert operate.unschedulable(p) == expected


def test_a_pod_no_node_takes_is_said_once_with_the_schedulers_reason(capsys: Any) -> None:
    state = follower()
    for _ in range(3):  # the watch sees the pod again at each restart and on each change
        assert state.see("MODIFIED", waiting("job-exec-1", "executor", NO_GPU)) is None
    later = "0/1 nodes are available: 1 Insufficient memory."
    assert state.see("MODIFIED", waiting("job-exec-1", "executor", later)) is None
    assert state.see("DELETED", waiting("job-exec-1", "executor", later)) is None
    assert said(capsys) == [
        f"executor job-exec-1 is not scheduled: {NO_GPU}",
        f"executor job-exec-1 is not scheduled: {later}",
    ]


class _Runs:
    """The CustomObjectsApi's list call, answering with a scheduled release's runs."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def list_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        assert kwargs["label_selector"] == "app.kubernetes.io/instance=nightly"
        return {"items": self.items}


def test_a_scheduled_releases_application_is_its_newest_run() -> None:
    def run(name: str, created: str, kind: str = "SparkApplication") -> dict[str, Any]:
        return {"kind": kind, "metadata": {"name": name, "creationTimestamp": created}}

    items = [
        run("nightly-1765072800", "2026-12-07T02:00:00Z"),
        run("nightly-1765159200", "2026-12-08T02:00:00Z"),
        run("nightly-1765000000", "2026-12-06T05:46:40Z"),
        run("nightly", "2026-12-09T00:00:00Z", kind="ScheduledSparkApplication"),
    ]
    kube = Kube(core=None, batch=None, custom=_Runs(items))
    found = kube.application("nightly", "jobs")
    assert found is not None and found["metadata"]["name"] == "nightly-1765159200"
    assert Kube(core=None, batch=None, custom=_Runs([])).application("nightly", "jobs") is None


def test_ready_counts_a_pending_pods_containers_from_its_spec() -> None:
    p = waiting("job-exec-1", "executor", NO_GPU)
    p.spec = V1PodSpec(
        containers=[V1Container(name="spark-kubernetes-executor"), V1Container(name="vllm")]
    )
    assert operate.ready(p) == "0/2"  # no container statuses before a node takes it
    p.status.container_statuses = [
        V1ContainerStatus(name=n, image="i", image_id="", ready=n == "vllm", restart_count=0)
        for n in ("spark-kubernetes-executor", "vllm")
    ]
    assert operate.ready(p) == "1/2"
    assert operate.ready(pod("job-driver", "driver", "Running")) == "0/0"  # no spec, no statuses
