"""The HTTP trigger on the real node: a release of the chart with trigger.enabled, its pod
serving `spark-vllm trigger` from the image, reached at its pod IP as a client in the
cluster would reach its Service.

Operator-less: a missing or wrong token is 401, a bad spec is 400 naming the key path, a
good spec is accepted and reported completed with its summary, one row per input; DELETE
removes the run's objects. Operator path: the run is a SparkApplication that the real
operator runs to COMPLETED, which GET follows to its counts and DELETE removes."""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .jobs import Job, chat_job, make_job, questions, until
from .kube import Cluster, Operator
from .test_cli_path import cli

pytestmark = pytest.mark.cluster


def install_trigger(
    cluster: Cluster,
    namespace: str,
    name: str,
    tmp: Path,
    image: str,
    model_root: Path,
    rows: int,
    operator: bool = False,
) -> tuple[Job, str, str]:
    """The trigger release (its values without job:), its token Secret; (job, URL, token)."""
    token = secrets.token_hex(16)
    cluster.kubectl(
        "create", "secret", "generic", f"{name}-token", "-n", namespace,
        f"--from-literal=token={token}",
    )  # fmt: skip
    job = make_job(
        cluster, namespace, name, tmp, image, model_root, rows, chat_job(),
        extra={"trigger": {"enabled": True, "tokenSecret": {"name": f"{name}-token"},
                           "allowedPaths": ["/data/"]}},
    )  # fmt: skip
    values = yaml.safe_load(job.values_file.read_text())
    del values["job"]
    values["operator"] = {"enabled": operator}
    job.values_file.write_text(yaml.safe_dump(values))
    cluster.helm(
        "install", name, "charts/spark-vllm", "-n", namespace, "-f", str(job.values_file),
        "--skip-crds", "--server-side=false",
    )  # fmt: skip

    def ready_ip() -> str | None:
        pods = cluster.pods(
            namespace, f"app.kubernetes.io/instance={name},app.kubernetes.io/component=trigger"
        )
        for pod in pods:
            statuses = pod["status"].get("containerStatuses") or []
            if statuses and all(s.get("ready") for s in statuses):
                return str(pod["status"]["podIP"])
        return None

    try:
        ip = until(f"trigger {name} Ready", ready_ip, timeout=240, every=2)
    except AssertionError:
        print(trigger_logs(cluster, namespace, name))
        raise
    return job, f"http://{ip}:8080", token


def trigger_logs(cluster: Cluster, namespace: str, name: str) -> str:
    selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/component=trigger"
    out = []
    for args in (("--previous",), ()):
        out.append(
            cluster.kubectl(
                "logs", "-n", namespace, "-l", selector, "--tail=60", *args, check=False
            ).stdout
        )
    out.append(cluster.kubectl("describe", "pods", "-n", namespace, "-l", selector,
                               check=False).stdout[-3000:])  # fmt: skip
    return "\n".join(out)


def run_objects(cluster: Cluster, namespace: str, run: str, kinds: str) -> list[str]:
    out = cluster.kubectl(
        "get", kinds, "-n", namespace, "-l", f"spark-vllm.io/run={run}", "-o", "name"
    )
    return out.stdout.split()


def test_trigger_refuses_bad_requests_and_runs_a_good_spec_to_its_summary(
    cluster: Cluster, namespace: str, image: str, model_root: Path, tmp_path: Path
) -> None:
    rows = 12
    name = "trig"
    job, url, token = install_trigger(cluster, namespace, name, tmp_path, image, model_root, rows)
    auth = {"Authorization": f"Bearer {token}"}
    spec = chat_job()
    who = f"system:serviceaccount:{namespace}:{name}-trigger"
    for verb, resource in (("create", "configmaps"), ("create", "jobs"), ("get", "pods/log")):
        assert cluster.can_i(verb, resource, namespace, who), (verb, resource)
    for verb, resource in (
        ("get", "secrets"), ("create", "pods"), ("create", "roles"), ("create", "rolebindings"),
        ("create", "serviceaccounts"), ("create", "sparkapplications"), ("create", "deployments"),
    ):  # fmt: skip
        assert not cluster.can_i(verb, resource, namespace, who), (verb, resource)
    run = ""
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.post("/jobs", json=spec).status_code == 401
            wrong = {"Authorization": f"Bearer {token[:-1]}x"}
            assert http.post("/jobs", json=spec, headers=wrong).status_code == 401
            assert http.get("/jobs", headers=wrong).status_code == 401
            bad = {**spec, "sampling": {"max_tokens": "lots"}}
            response = http.post("/jobs", json=bad, headers=auth)
            assert response.status_code == 400, response.text
            assert "sampling.max_tokens" in response.json()["detail"]
            # Issue 27's attacks against the trigger in the cluster: a posted spec may not
            # mount a Secret into its executors, point the driver's client elsewhere, or read
            # outside trigger.allowedPaths (the pod's token file); each is 403, naming it.
            secret_key = "spark.kubernetes.executor.secrets.spark-vllm-metrics"
            attacks = {
                secret_key: {**spec, "spark": {"conf": {secret_key: "/mnt/s"}}},
                "spark.master": {**spec, "spark": {"master": "local[1]"}},
                "input.path": {
                    **spec,
                    "input": {**spec["input"], "format": "csv",
                              "path": "/var/run/secrets/kubernetes.io/serviceaccount/token"},
                },
            }  # fmt: skip
            for field, attack in attacks.items():
                response = http.post("/jobs", json=attack, headers=auth)
                assert response.status_code == 403, (field, response.text)
                assert field in response.json()["detail"], response.text
            # Nothing was created for the refused requests.
            assert http.get("/jobs", headers=auth).json() == {"jobs": []}

            response = http.post("/jobs", json=spec, headers=auth)
            assert response.status_code == 202, response.text
            run = response.json()["id"]
            assert run.startswith(f"{name}-")
            assert http.get("/jobs", headers=auth).json() == {"jobs": [run]}

            def ended() -> dict[str, Any] | None:
                report: dict[str, Any] = http.get(f"/jobs/{run}", headers=auth).json()
                return report if report["state"] in ("succeeded", "failed") else None

            report = until(f"run {run} ended", ended, timeout=900, every=5)
            assert report["state"] == "succeeded", report
            assert report["exit_code"] == 0
            assert report["counts"]["rows"] == str(rows)
            assert report["counts"]["succeeded"] == str(rows)
            assert report["summary"][0].startswith("spark-vllm summary (run ")
            print("\n".join(report["summary"]))
            (out,) = job.rows_by_run().values()
            assert sorted(r["id"] for r in out) == sorted(q["id"] for q in questions(rows))
            assert all(r["error"] is None for r in out)

            # `spark-vllm list` shows the trigger release as such, and its run as a job.
            listed = cli(cluster, "list", "-n", namespace)
            assert re.search(rf"^{name}\s+trigger\s+-\s+0$", listed.stdout, re.M), listed.stdout
            assert re.search(rf"^{run}\s+Complete\s+Succeeded\s+0$", listed.stdout, re.M), (
                listed.stdout
            )
            response = http.delete(f"/jobs/{run}", headers=auth)
            assert response.status_code == 202
            assert run_objects(cluster, namespace, run, "configmaps,jobs,networkpolicies") == []
            assert http.get(f"/jobs/{run}", headers=auth).status_code == 404
    except BaseException:
        print(job.report())
        print(trigger_logs(cluster, namespace, name))
        raise
    finally:
        cluster.helm("uninstall", name, "-n", namespace, "--wait", check=False)
        if run:
            cluster.kubectl(
                "delete", "pod", f"{run}-driver", "-n", namespace, "--wait=false", check=False
            )


def test_trigger_on_the_operator_path_runs_a_spark_application_to_its_end(
    cluster: Cluster,
    spark_operator: Operator,
    namespace: str,
    image: str,
    model_root: Path,
    tmp_path: Path,
) -> None:
    """A POST on the operator path creates a SparkApplication; the real operator runs it and
    the trigger's GET follows it to the end, with the run's counts from the driver."""
    rows = 4
    name = "trig-op"
    job, url, token = install_trigger(
        cluster, namespace, name, tmp_path, image, model_root, rows, operator=True
    )
    auth = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            response = http.post("/jobs", json=chat_job(), headers=auth)
            assert response.status_code == 202, response.text
            run = response.json()["id"]
            app = cluster.get("sparkapplication", run, "-n", namespace)
            assert app["spec"]["driver"]["serviceAccount"] == f"{name}-driver"
            volumes = {v["name"]: v for v in app["spec"]["volumes"]}
            assert any(v.get("configMap", {}).get("name") == f"{run}-job" for v in volumes.values())
            assert run_objects(cluster, namespace, run, "configmaps") == [f"configmap/{run}-job"]

            def ended() -> dict[str, Any] | None:
                report: dict[str, Any] = http.get(f"/jobs/{run}", headers=auth).json()
                # The driver's phase first, then the operator's state a moment later.
                application = report.get("application")
                done = application in ("COMPLETED", "FAILED", "SUBMISSION_FAILED", "gone")
                # The counts come from the driver's log, read once the driver ended: a GET
                # in between may have its phase and not yet its log.
                read = "counts" in report or report["state"] != "succeeded"
                return report if done and report["state"] != "running" and read else None

            report = until(f"run {run} ended", ended, timeout=900, every=5)
            assert report["application"] == "COMPLETED", report
            assert report["state"] == "succeeded", report
            assert report["counts"]["succeeded"] == str(rows), report
            (out,) = job.rows_by_run().values()
            assert sorted(r["id"] for r in out) == sorted(q["id"] for q in questions(rows))
            assert http.delete(f"/jobs/{run}", headers=auth).status_code == 202
            deadline = time.monotonic() + 60
            while run_objects(cluster, namespace, run, "sparkapplications,configmaps"):
                assert time.monotonic() < deadline, "the run's objects outlived DELETE"
                time.sleep(1)
    except BaseException:
        print(trigger_logs(cluster, namespace, name))
        raise
    finally:
        cluster.helm("uninstall", name, "-n", namespace, "--wait", check=False)
