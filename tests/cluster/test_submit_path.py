"""The example chat job in real pods through the chart's operator-less path: a Job runs
spark-submit, the driver pod creates executor pods, each carries the vLLM sidecar on its
loopback, and the output lands on the node's disk with one row per input id; and `helm test`
against the real cluster.

vLLM on CPU takes minutes to start, so the tier starts few: here, one clean job (one
executor). The faults at pod level (vLLM killed, executor and driver deleted) are taken by
the chart's default path, the operator's (test_operator_faults.py)."""

from __future__ import annotations

import json
import re
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SERVED_NAME

from .jobs import Job, chat_job, make_job, questions, until
from .kube import Cluster, Obj, pod_containers

pytestmark = pytest.mark.cluster

# Run inside the executor's Spark container: wait until the sidecar answers on the pod's
# loopback, print what it serves, then show that the pod's own address gets no answer.
LOOPBACK_PROBE = """
import json, os, socket, time, urllib.request
deadline = time.time() + 900
while True:
    try:
        body = urllib.request.urlopen("http://127.0.0.1:8000/v1/models", timeout=5).read()
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(2)
ip = os.environ["SPARK_EXECUTOR_POD_IP"]
try:
    socket.create_connection((ip, 8000), timeout=5).close()
    outside = "answered"
except OSError as error:
    outside = type(error).__name__
print(json.dumps({"models": json.loads(body), "pod_ip": ip, "pod_ip_8000": outside}))
"""


def loopback_probe(job: Job, pod: str) -> dict[str, Any]:
    proc = job.cluster.kubectl(
        "exec", pod, "-n", job.namespace, "-c", "spark-kubernetes-executor", "--",
        "python3", "-c", LOOPBACK_PROBE, timeout=960,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def scrape(url: str, token: str | None) -> tuple[int, str]:
    """GET a metrics endpoint as Prometheus does: (status, text)."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def driver_metrics(job: Job, token: str) -> tuple[int, str]:
    """The driver's /metrics once it shows a row done (it serves them while the run sends)."""

    def rows_done() -> tuple[int, str] | None:
        driver = job.cluster.find("pod", job.driver, job.namespace)
        ip = (driver or {}).get("status", {}).get("podIP")
        if not ip:
            return None
        try:
            status, text = scrape(f"http://{ip}:9464/metrics", token)
        except OSError:
            return None  # not listening yet
        done = re.search(r'^spark_vllm_rows_total\{outcome="succeeded"\} (\S+)$', text, re.M)
        return (status, text) if done and float(done.group(1)) > 0 else None

    found: tuple[int, str] = until("the driver's metrics with a row done", rows_done, 600, 0.5)
    return found


def first_executor(job: Job, not_named: set[str] | None = None) -> Obj | None:
    running = [
        p
        for p in job.executors()
        if p["metadata"]["name"] not in (not_named or set())
        and p["status"].get("phase") == "Running"
        and "deletionTimestamp" not in p["metadata"]
    ]
    return running[0] if running else None


@pytest.fixture(scope="module")
def clean_job(
    cluster: Cluster,
    namespace: str,
    image: str,
    model_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Job, dict[str, Any]]]:
    """The example chat job over 60 questions, with the chart's metrics on, run once to the
    end; what was seen meanwhile (the executor's metrics proxy and the driver's metrics,
    scraped from the node as Prometheus would, pods' addresses being on its bridge)."""
    token = secrets.token_urlsafe(24)
    cluster.kubectl(
        "create", "secret", "generic", "chat-k8s-metrics", "-n", namespace,
        f"--from-literal=token={token}",
    )  # fmt: skip
    metrics = {
        "enabled": True,
        "tokenSecret": {"name": "chat-k8s-metrics", "key": "token"},
        "podMonitor": {"enabled": False},  # no prometheus-operator CRDs on this node
    }
    job = make_job(
        cluster, namespace, "chat-k8s", tmp_path_factory.mktemp("clean"), image, model_root,
        # few requests at once: the run sends for long enough to scrape the driver meanwhile
        rows=60, job=chat_job(concurrency={"mode": "fixed", "per_executor": 2}),
        extra={"metrics": metrics},
    )  # fmt: skip
    job.install()
    try:
        executor = until("a running executor pod", lambda: first_executor(job), 600)
        seen: dict[str, Any] = {"executor": executor}
        seen["probe"] = loopback_probe(job, executor["metadata"]["name"])
        ip = executor["status"]["podIP"]
        seen["sidecar_metrics"] = scrape(f"http://{ip}:9400/metrics", token)
        seen["sidecar_metrics_no_token"] = scrape(f"http://{ip}:9400/metrics", None)
        seen["driver_metrics"] = driver_metrics(job, token)
        seen["status"] = job.wait_finished(900)
        seen["driver"] = cluster.find("pod", job.driver, namespace)
        seen["driver_log"] = job.logs(job.driver)
        yield job, seen
    finally:
        job.uninstall()


def test_driver_pod_creates_executor_pods_that_carry_the_sidecar(
    clean_job: tuple[Job, dict[str, Any]],
) -> None:
    job, seen = clean_job
    executor, driver = seen["executor"], seen["driver"]
    assert driver is not None, job.report()
    owners = executor["metadata"].get("ownerReferences", [])
    assert [(o["kind"], o["name"]) for o in owners] == [("Pod", job.driver)]
    spec = executor["spec"]
    containers = pod_containers(executor)
    assert sorted(containers) == ["spark-kubernetes-executor", "vllm", "vllm-metrics"]
    # The chart's default: vLLM and its metrics proxy are native sidecars.
    assert containers["vllm"].get("restartPolicy") == "Always"
    # The pod template's settings survived Spark's own: no API token, locked down.
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == f"{job.name}-executor"
    assert not any(
        "serviceaccount" in str(m) for c in containers.values() for m in c.get("volumeMounts", [])
    )
    assert spec["securityContext"]["runAsUser"] == 185
    for container in containers.values():
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert executor["metadata"]["labels"]["app.kubernetes.io/component"] == "executor"


def test_sidecar_answers_on_the_executors_loopback_only(
    clean_job: tuple[Job, dict[str, Any]],
) -> None:
    _, seen = clean_job
    probe = seen["probe"]
    assert [m["id"] for m in probe["models"]["data"]] == [SERVED_NAME]
    assert probe["pod_ip"] == seen["executor"]["status"]["podIP"]
    assert probe["pod_ip_8000"] == "ConnectionRefusedError", probe


def test_metrics_reach_a_pod_port_only_with_the_token(
    clean_job: tuple[Job, dict[str, Any]],
) -> None:
    """vLLM's API stays on the executor's loopback (above); its /metrics reaches the pod's
    address through the chart's metrics proxy, and the driver serves the job's metrics
    mid-run, both to the bearer token from the Secret only."""
    _, seen = clean_job
    status, text = seen["sidecar_metrics"]
    assert status == 200, text[:500]
    assert "# TYPE vllm:num_requests_running gauge" in text
    assert seen["sidecar_metrics_no_token"][0] == 401
    status, text = seen["driver_metrics"]
    assert status == 200
    assert "# TYPE spark_vllm_rows_total counter" in text
    assert "spark_vllm_rows_to_send 60.0" in text
    proxy = pod_containers(seen["executor"])["vllm-metrics"]
    assert [p["containerPort"] for p in proxy["ports"]] == [9400]


def test_job_succeeds_with_one_row_per_input_id(clean_job: tuple[Job, dict[str, Any]]) -> None:
    job, seen = clean_job
    assert seen["status"] == "Complete", job.report()
    assert seen["driver"]["status"]["phase"] == "Succeeded"
    runs = job.rows_by_run()
    assert len(runs) == 1
    (rows,) = runs.values()
    assert sorted(r["id"] for r in rows) == sorted(q["id"] for q in questions(60))
    failed = [r for r in rows if r["error"] is not None]
    assert not failed, failed[:3]
    assert all(r["completion_tokens"] > 0 for r in rows)
    # The executors reported their counts to the driver's progress endpoint, pod to pod.
    assert "spark-vllm progress: 60/60 rows (100.0 %), 60 succeeded" in seen["driver_log"], seen[
        "driver_log"
    ][-3000:]


def test_helm_test_validates_the_job_spec_in_the_cluster(
    cluster: Cluster, clean_job: tuple[Job, dict[str, Any]]
) -> None:
    job, _ = clean_job
    proc = cluster.helm("test", job.name, "-n", job.namespace, "--logs", timeout=600)
    assert "Phase:          Succeeded" in proc.stdout, proc.stdout
