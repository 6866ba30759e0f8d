"""The server manager for clusters without sidecars, for real in local mode."""

from __future__ import annotations

import pytest

from spark_vllm import run_job, spec_from_dict
from spark_vllm.driver.local_server import free_port
from spark_vllm.driver.servers import _alive, start_servers

# Internals of the server manager, under test here.
from spark_vllm.task.client import probe
from tests.conftest import MAX_MODEL_LEN, SERVED_NAME, sample_rows
from tests.integration.jobs import assert_one_row_per_input, read_rows, spec_doc

pytestmark = pytest.mark.integration


def test_one_server_per_executor_is_started_used_and_stopped(spark, tiny_model, tmp_path):
    """local[2]: both task slots run the start task; one launches, the other finds it."""
    servers = start_servers(
        spark,
        str(tiny_model),
        SERVED_NAME,
        port=free_port(),
        vllm_args=["--max-model-len", str(MAX_MODEL_LEN), "--dtype", "float32"],
        ready_timeout_s=420,
        run_dir=str(tmp_path / "run"),
    )
    try:
        (pid,) = {s.pid for s in servers.states}
        assert sorted(s.started for s in servers.states) == [False, True]
        assert len(servers.hosts) == 1
        assert probe(servers.base_url, SERVED_NAME) is None
        rows = sample_rows(20)
        summary = run_job(spark, spec_from_dict(spec_doc(tmp_path, servers.base_url, rows)))
        assert summary.succeeded == 20
        assert_one_row_per_input(read_rows(tmp_path / "out"), rows)
    finally:
        stopped = servers.stop()
    assert sorted(stopped, key=lambda p: p is None) == [pid, None]
    assert not _alive(pid)
    assert probe(servers.base_url, SERVED_NAME, timeout=2) is not None
    assert not (tmp_path / "run" / f"spark-vllm-{servers.config.port}.pid").exists()


def test_serve_reports_a_server_that_cannot_start_and_leaves_nothing_running(tmp_path):
    """`spark-vllm serve` (`make serve`) with a model vLLM cannot load: exit 1 naming
    what the server said, no process left behind."""
    import subprocess
    import sys

    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "spark_vllm.cli", "serve", "--model", str(tmp_path / "nothing"),
         "--port", str(port), "--server-log", str(tmp_path / "serve.log")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "starting vLLM for" in done.stdout
    assert "will not come up: the server exited with code" in done.stderr
    assert str(tmp_path / "serve.log") in done.stderr
    assert probe(f"http://127.0.0.1:{port}/v1", "nothing", timeout=2) is not None
