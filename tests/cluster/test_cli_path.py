"""`spark-vllm submit`, `status`, `logs`, `list` and `cancel` against the real node: the
command itself runs (`python -m spark_vllm.cli`) with the node's kubeconfig and the real
helm, as a user would.

On the operator-less path: one job cancelled after its first committed task and submitted
again, which resumes, followed to its summary and read with `status`, `logs` and `list`. On the
operator path: a SparkApplication the real operator fails to submit, followed to its
failure, read with `status` and `list`, and removed with `cancel`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .jobs import Job, chat_job, make_job, questions, until
from .kube import ROOT, TOOLS_BIN, Cluster, Operator

pytestmark = pytest.mark.cluster


def cli_env(cluster: Cluster) -> dict[str, str]:
    return {
        **os.environ,
        "KUBECONFIG": cluster.kubeconfig,
        "HELM": os.environ.get("HELM") or str(TOOLS_BIN / "helm"),
        "PYTHONUNBUFFERED": "1",
    }


def cli(cluster: Cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spark_vllm.cli", *args],
        capture_output=True,
        text=True,
        env=cli_env(cluster),
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def start_follower(cluster: Cluster, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`spark-vllm ARGS` in the background, its output into `log`: a pipe nobody reads would
    fill with the driver's log and stall it."""
    with log.open("w") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "spark_vllm.cli", *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=cli_env(cluster),
            cwd=ROOT,
        )


def prepare(
    cluster: Cluster,
    namespace: str,
    name: str,
    tmp: Path,
    image: str,
    model_root: Path,
    rows: int,
    job: dict[str, Any],
) -> tuple[Job, Path]:
    """The job's data folder, its chart values (no job: key) and its spec file NAME.yaml,
    as a user keeps them; `submit` names the release after the spec file."""
    job_ = make_job(cluster, namespace, name, tmp, image, model_root, rows, job)
    chart_values = yaml.safe_load(job_.values_file.read_text())
    spec = chart_values.pop("job")
    job_.values_file.write_text(yaml.safe_dump(chart_values))
    spec_file = tmp / f"{name}.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    return job_, spec_file


RESUME_ROWS = 128


def test_cancel_stops_a_running_job_then_a_second_submit_resumes_and_follows_it_to_its_summary(
    cluster: Cluster, namespace: str, image: str, model_root: Path, tmp_path: Path
) -> None:
    """A job submitted in the background, read with `logs` and `list` while it starts,
    cancelled after its first committed task; the same spec submitted again resumes: the
    follower prints the job's state changes and progress, the driver's summary, and `status`,
    `logs` and `list` read the finished job."""
    spec = chat_job(
        # Many small tasks, one request at a time: slow enough to cancel between tasks.
        partitions=16,
        sampling={"max_tokens": 64, "temperature": 0.0, "ignore_eos": True},
        concurrency={"mode": "fixed", "per_executor": 1},
    )
    job, spec_file = prepare(
        cluster, namespace, "cli-resume", tmp_path, image, model_root, RESUME_ROWS, spec
    )
    submit = ["submit", str(spec_file), "-n", namespace, "--values", str(job.values_file)]
    followed = tmp_path / "follower.log"
    follower = start_follower(cluster, [*submit, "--timeout", "1200"], followed)
    try:
        # What `logs` and `list` show is checked while the job starts, so that the cancel
        # follows the first committed task at once: a CI run once saw all 16 tasks commit
        # during these checks, and nothing was left to resume.
        def shown(*args: str, pattern: str) -> bool:
            run = cli(cluster, *args)
            return run.returncode == 0 and re.search(pattern, run.stdout, re.M) is not None

        sidecar = ("logs", "cli-resume", "-n", namespace, "--sidecar")
        until(
            "vLLM's start in the sidecar's log",
            lambda: shown(*sidecar, pattern=r"startup complete|Uvicorn running"),
            900,
        )
        executor = ("logs", "cli-resume", "-n", namespace, "--executor", "0")
        until(
            "the executor's backend in its log",
            lambda: shown(*executor, pattern="ExecutorBackend"),
            300,
        )
        listing = ("list", "-n", namespace)
        until(
            "the job listed as running",
            lambda: shown(*listing, pattern=r"^cli-resume\s+Running\s+Running\s+1$"),
            300,
        )
        until("the first committed task", lambda: job.committed_tasks() >= 1, 900, every=0.2)

        cancelled = cli(cluster, "cancel", "cli-resume", "-n", namespace, timeout=300)
        assert cancelled.returncode == 0, cancelled.stderr
        assert "spark-vllm: cancelled cli-resume" in cancelled.stdout
        follower.wait(timeout=120)
        assert follower.returncode == 1, followed.read_text()[-3000:]
        assert "spark-vllm: failed: the driver pod cli-resume-driver was deleted" in (
            followed.read_text()
        )
        assert not cluster.pods(namespace, "app.kubernetes.io/instance=cli-resume")
        assert cluster.find("job", "cli-resume-submit", namespace) is None
        succeeded_before = set(job.successes())
        assert 0 < len(succeeded_before) < RESUME_ROWS, job.committed_tasks()

        # Again, followed in the foreground to its end; more requests at once (not part of
        # what a resume compares) to finish sooner.
        more = ["--set", "concurrency.per_executor=16"]
        again = cli(cluster, *submit, *more, "--timeout", "1200", timeout=1260)
        out = again.stdout
        assert again.returncode == 0, f"{out[-5000:]}\n{again.stderr[-3000:]}\n{job.report()}"
        for change in (
            "spark-vllm: submitted cli-resume",
            "spark-vllm: driver cli-resume-driver running",
            "spark-vllm: executors up 1",
            "spark-vllm: completed",
        ):
            assert change in out, f"{change!r} not in:\n{out[-5000:]}"
        assert out.index("driver cli-resume-driver running") < out.index("spark-vllm: completed")
        left = RESUME_ROWS - len(succeeded_before)
        assert f"spark-vllm progress: {left}/{left} rows" in out, out[-5000:]
        assert re.search(r"^spark-vllm summary \(run \S+\)$", out, re.M), out[-3000:]
        print("\n".join(line for line in out.splitlines() if line.startswith(("spark-vllm", "  "))))

        # The submitter Job's spark-submit exits after the driver, and the Job controller
        # marks it Complete a moment later: `status` may run in between.
        status = until(
            "status showing the submitter Job Complete",
            lambda: (
                run
                if "job cli-resume-submit: Complete"
                in (run := cli(cluster, "status", "cli-resume", "-n", namespace)).stdout
                else None
            ),
            120,
        )
        assert status.returncode == 0, status.stderr
        assert re.search(r"^driver\s+cli-resume-driver\s+Succeeded", status.stdout, re.M)
        assert "driver exit code: 0" in status.stdout
        assert re.search(rf"^  succeeded     {left}$", status.stdout, re.M), status.stdout
        logs = cli(cluster, "logs", "cli-resume", "-n", namespace)
        assert logs.returncode == 0, logs.stderr
        assert "spark-vllm summary" in logs.stdout
        listed = cli(cluster, "list", "-n", namespace)
        assert listed.returncode == 0, listed.stderr
        assert re.search(r"^cli-resume\s+Complete\s+Succeeded\s+0$", listed.stdout, re.M), (
            listed.stdout
        )
    except BaseException:
        print(job.report())
        raise
    finally:
        if follower.poll() is None:
            follower.kill()
        cli(cluster, "cancel", "cli-resume", "-n", namespace, timeout=300)

    skipped = re.search(r"^  skipped\s+(\d+)", out, re.M)
    assert skipped and int(skipped.group(1)) == len(succeeded_before), out[-3000:]
    counts = job.successes()
    ids = {q["id"] for q in questions(RESUME_ROWS)}
    assert set(counts) == ids, f"ids without a success: {sorted(ids - set(counts))[:10]}"
    assert max(counts.values()) == 1, f"redone: {[i for i, n in counts.items() if n > 1][:10]}"
    last_run = max(job.rows_by_run())
    redone = succeeded_before & {r["id"] for r in job.rows_by_run()[last_run]}
    assert not redone, f"the second submit sent ids that had succeeded: {sorted(redone)[:10]}"


def test_on_the_operator_path_submit_follows_the_spark_application_and_cancel_removes_it(
    cluster: Cluster,
    spark_operator: Operator,
    namespace: str,
    image: str,
    model_root: Path,
    tmp_path: Path,
) -> None:
    """The values' operator.enabled (the chart's default) makes `submit` install a
    SparkApplication, which the real operator runs. Here it cannot: the values name a
    driver ServiceAccount that does not exist, so the API server refuses the driver pod the
    operator's spark-submit creates, and the operator reports SUBMISSION_FAILED with
    spark-submit's error; the follower ends on it with the operator's message, and `status`,
    `list` and `cancel` follow the real controller."""
    job, spec = prepare(cluster, namespace, "cli-op", tmp_path, image, model_root, 4, chat_job())
    values = yaml.safe_load(job.values_file.read_text())
    values["operator"] = {"enabled": True}
    values["serviceAccount"] = {
        "create": False, "name": "no-such-account", "executorName": "no-such-executor"
    }  # fmt: skip
    job.values_file.write_text(yaml.safe_dump(values))
    followed = tmp_path / "follower.log"
    command = ["submit", str(spec), "-n", namespace, "--values", str(job.values_file)]
    follower = start_follower(cluster, [*command, "--timeout", "300"], followed)
    try:
        app = until(
            "the SparkApplication",
            lambda: cluster.find("sparkapplication", "cli-op", namespace),
            120,
        )
        assert app["spec"]["driver"]["labels"]["app.kubernetes.io/instance"] == "cli-op"
        assert cluster.find("job", "cli-op-submit", namespace) is None
        follower.wait(timeout=300)
        out = followed.read_text()
        assert follower.returncode == 1, out[-3000:]
        assert "spark-vllm: submitted cli-op (helm release in namespace" in out
        assert "a SparkApplication)" in out
        failed = re.search(
            r"^spark-vllm: failed: the Spark Operator reports (SUBMISSION_FAILED|FAILED): (.*)$",
            out,
            re.M,
        )
        assert failed, out[-3000:]
        state, message = failed.groups()
        assert 'serviceaccount "no-such-account" not found' in message, message

        status = cli(cluster, "status", "cli-op", "-n", namespace)
        assert f"application cli-op: {state} (" in status.stdout, status.stdout
        assert "no-such-account" in status.stdout
        listed = cli(cluster, "list", "-n", namespace)
        assert re.search(rf"^cli-op\s+{state}\s+-\s+0$", listed.stdout, re.M), listed.stdout
        cancelled = cli(cluster, "cancel", "cli-op", "-n", namespace, timeout=300)
        assert cancelled.returncode == 0, cancelled.stderr
        assert cluster.find("sparkapplication", "cli-op", namespace) is None
        assert "cli-op" not in cli(cluster, "list", "-n", namespace).stdout
    finally:
        if follower.poll() is None:
            follower.kill()
        cli(cluster, "cancel", "cli-op", "-n", namespace, timeout=300)
