"""Fault tests: the job ends with every input id exactly once, whatever breaks on the way.

Real Spark and the real vLLM server; the fault-injecting proxy only adds what a real
server cannot be made to do on cue (resets, 503/429 bursts).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from spark_vllm import run_job, spec_from_dict
from spark_vllm.storage import delta
from tests.conftest import sample_rows
from tests.integration.faultproxy import FaultProxy, Faults
from tests.integration.jobs import (
    assert_one_row_per_input,
    latest_rows,
    read_rows,
    run_commits,
    spec_doc,
    table_rows,
)

pytestmark = pytest.mark.integration


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def start_job(spark, doc: dict) -> tuple[threading.Thread, dict[str, object]]:
    """run_job on a thread of its own, so the test can break things meanwhile; the dict
    gets its `summary` or its `error` when it ends."""
    done: dict[str, object] = {}

    def job() -> None:
        try:
            done["summary"] = run_job(spark, spec_from_dict(doc))
        except BaseException as exc:
            done["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    return thread, done


@pytest.mark.parametrize("status", [503, 429])
def test_resets_and_bursts_are_retried_and_nothing_is_lost(spark, vllm_server, tmp_path, status):
    rows = sample_rows(120)
    faults = Faults(reset_rate=0.08, burst_status=status, burst_every=30, burst_length=6, seed=3)
    with FaultProxy(vllm_server, faults) as proxy:
        doc = spec_doc(
            tmp_path,
            proxy.base_url,
            rows,
            retries={"attempts": 8, "backoff_initial_s": 0.05, "backoff_max_s": 0.5},
        )
        summary = run_job(spark, spec_from_dict(doc))
    assert proxy.resets > 0 and proxy.bursts > 0, "the proxy injected nothing"
    out = read_rows(tmp_path / "out")
    assert_one_row_per_input(out, rows)
    assert all(r["error"] is None for r in out), [r["error"] for r in out if r["error"]][:3]
    assert sum(r["attempts"] > 1 for r in out) >= proxy.resets
    assert summary.succeeded == 120


def test_a_dead_engine_is_waited_out_without_spending_row_attempts(spark, vllm_server, tmp_path):
    """vLLM answers 500 EngineDeadError (and /health 503) while its engine is down: an
    outage to wait out, not a row's failure. Found by a real kill in CI, where rows in
    flight spent their three tries on the 500s in 1.5 s and became error rows."""
    rows = sample_rows(120)
    with FaultProxy(vllm_server) as proxy:
        doc = spec_doc(
            tmp_path,
            proxy.base_url,
            rows,
            # ready_s covers the outage: a task whose first request comes while the engine
            # is dead meets /health's 503 in its start-up wait, which ready_s bounds, not
            # outage_s. On a busy machine one task's Python worker starts late (CI saw the
            # other send 23 rows first, and with 30 s here the late one gave up).
            timeouts={"ready_s": 120, "outage_s": 120},
            # Rows of some seconds per task, a few requests in flight: the tasks still have
            # rows to send when the engine dies. With short answers and the adaptive window a
            # quiet machine's first task sent all its rows in 0.3 s, and no request met the
            # dead engine.
            sampling={"max_tokens": 24, "ignore_eos": True},
            concurrency={"mode": "fixed", "per_executor": 4},
        )
        thread, done = start_job(spark, doc)
        wait_for(lambda: proxy.answered_posts >= 20, 180, "20 answered requests")
        proxy.engine_dead = True
        # Requests of a task that was sending: one suffices (each is a row that a broken
        # outage gate would turn into an error row within the 4 s below); a task that had
        # not sent yet waits in its start-up wait instead.
        wait_for(lambda: proxy.dead_answers >= 1, 60, "a request answered by the dead engine")
        time.sleep(4)  # longer than the three tries' backoff (0.2 s + 0.4 s)
        proxy.engine_dead = False
        thread.join(timeout=300)
    assert not thread.is_alive(), "the job did not finish after the engine came back"
    assert "error" not in done, done.get("error")
    out = read_rows(tmp_path / "out")
    assert_one_row_per_input(out, rows)
    assert all(r["error"] is None for r in out), [r["error"] for r in out if r["error"]][:3]
    # the summary tells the outage: /health failed for most of the 4 s the engine was dead
    summary = done["summary"]
    assert summary.outage_s is not None and 2.0 < summary.outage_s < 60, summary.outage_s
    assert f"  sidecar down  {summary.outage_s:.1f} s" in summary.render()


def test_vllm_killed_and_restarted_mid_job(spark, vllm_local, tmp_path):
    if vllm_local is None:
        pytest.skip("restarts the test-managed server; unset SPARK_VLLM_TEST_BASE_URL")
    rows = sample_rows(160)
    with FaultProxy(vllm_local.base_url) as proxy:
        doc = spec_doc(
            tmp_path,
            proxy.base_url,
            rows,
            sampling={"max_tokens": 24, "ignore_eos": True},
            # ready_s covers a restart: a task whose Python worker starts late (2 busy cores)
            # meets the server while it restarts, and that first wait is a start-up wait,
            # bounded by ready_s (900 s by default), not outage_s. With 60 s here, CI saw
            # such a task give up while the new server loaded (about 90 s).
            timeouts={"ready_s": 300, "outage_s": 400},
            concurrency={"per_executor": 8},
        )
        thread, done = start_job(spark, doc)
        # Answered POSTs, not forwarded requests (which count the window's GETs of /metrics
        # and /health too): the job has sent work before the server is killed.
        wait_for(lambda: proxy.answered_posts >= 30, 180, "30 answered requests")
        answered_before = proxy.answered_posts
        vllm_local.stop()  # SIGTERM then SIGKILL to the server's whole process group
        time.sleep(3)
        vllm_local.start()  # same port; about 90 s on 2 cores
        thread.join(timeout=600)
    assert not thread.is_alive(), "the job did not finish after the restart"
    assert "error" not in done, done.get("error")
    assert answered_before < 160, "the server was killed after the job had finished"
    out = read_rows(tmp_path / "out")
    assert_one_row_per_input(out, rows)
    assert all(r["error"] is None for r in out), [r["error"] for r in out if r["error"]][:3]
    # down from the kill until the new server answered /health: tens of seconds at least
    assert done["summary"].outage_s > 20, done["summary"].outage_s


def _start_cli(spec: dict, tmp_path: Path, *args: str) -> subprocess.Popen:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return subprocess.Popen(
        [sys.executable, "-m", "spark_vllm.cli", "run", str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )


def _python_workers(root_pid: int) -> list[psutil.Process]:
    """Forked PySpark workers (children of the pyspark.daemon) under a job's process tree."""
    workers = []
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            parent = proc.parent()
            if parent is not None and "pyspark.daemon" in " ".join(parent.cmdline()):
                workers.append(proc)
        except psutil.NoSuchProcess:
            continue
    return workers


def _into(doc: dict, tmp_path: Path, output_format: str) -> dict:
    """The job's output as parquet files (the spec_doc default) or as a Delta table."""
    if output_format == "delta":
        doc["output"] = {**doc["output"], "format": "delta", "path": str(tmp_path / "table")}
    return doc


@pytest.mark.parametrize("output_format", ["parquet", "delta"])
def test_python_worker_killed_mid_task_is_retried_by_spark(vllm_server, tmp_path, output_format):
    """A task's Python worker killed mid-write: Spark runs the task again and commits only
    its second attempt, in the parquet folder as in the Delta run's one commit."""
    rows = sample_rows(200)
    with FaultProxy(vllm_server) as proxy:
        doc = spec_doc(
            tmp_path,
            proxy.base_url,
            rows,
            sampling={"max_tokens": 24, "ignore_eos": True},
            concurrency={"per_executor": 8},
            partitions=4,
        )
        # local[2,4]: two task slots, and a task may fail up to 4 times.
        job = _start_cli(
            _into(doc, tmp_path, output_format), tmp_path, "--set", "spark.master=local[2,4]"
        )
        try:
            wait_for(lambda: proxy.forwarded >= 20, 180, "20 answered requests")
            workers = _python_workers(job.pid)
            assert workers, "no PySpark worker found to kill"
            workers[0].send_signal(signal.SIGKILL)
            killed_at = proxy.forwarded
            stdout, stderr = job.communicate(timeout=600)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, stderr[-3000:]
    assert killed_at < 200, "the worker was killed after the job had finished"
    assert "rows          200" in stdout
    if output_format == "delta":
        out, writes = table_rows(tmp_path / "table"), run_commits(tmp_path / "table")
        assert len(writes) == 1, writes
    else:
        out = read_rows(tmp_path / "out")
    assert_one_row_per_input(out, rows)
    assert all(r["error"] is None for r in out)


@pytest.mark.parametrize("output_format", ["parquet", "delta"])
def test_driver_killed_mid_job_then_run_again_resumes(spark, vllm_server, tmp_path, output_format):
    """The driver (and all it started) killed once a task has committed: the next run
    resumes. Into Delta, the dead run's tasks are staged, not yet in the table (its commit
    comes at the run's end); the next run commits them as the dead run's, then answers the
    rest in a commit of its own."""
    rows = sample_rows(240)
    doc = spec_doc(
        tmp_path,
        vllm_server,
        rows,
        sampling={"max_tokens": 24, "ignore_eos": True},
        concurrency={"per_executor": 8},
        partitions=12,
    )
    doc = _into(doc, tmp_path, output_format)
    committed_at = (
        tmp_path / "table" / delta.STAGING if output_format == "delta" else tmp_path / "out"
    )
    job = _start_cli(doc, tmp_path, "--set", "spark.master=local[2]")
    try:
        wait_for(lambda: any(committed_at.glob("run=*/part-*")), 300, "a committed task")
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the driver and everything it started
        job.wait(timeout=60)
    committed = read_rows(committed_at)
    assert 0 < len(committed) < 240, "kill the driver mid-job, not before or after"
    if output_format == "delta":
        assert not (tmp_path / "table" / "_delta_log").exists(), "committed before its end"

    summary = run_job(spark, spec_from_dict(doc))

    assert summary.skipped == len({r["id"] for r in committed if r["error"] is None})
    assert summary.rows == 240 - summary.skipped
    if output_format == "delta":
        raw, writes = table_rows(tmp_path / "table"), run_commits(tmp_path / "table")
        assert len(writes) == 2, writes  # the dead run's staged rows, then the new run's
        latest = raw
    else:
        latest = latest_rows(spark, tmp_path / "out")
        raw = read_rows(tmp_path / "out")
    assert_one_row_per_input(latest, rows)
    assert all(r["error"] is None for r in latest)
    # No success was redone: ids are disjoint between the two runs.
    by_run: dict[str, set[str]] = {}
    for r in raw:
        by_run.setdefault(r["run"], set()).add(r["id"])
    assert len(by_run) == 2
    first, second = by_run.values()
    assert not first & second
