"""Prometheus metrics, scraped by a real Prometheus (Debian's package) while a real job
runs against the real vLLM: the driver's job metrics, and the sidecar's /metrics through
the metrics proxy the chart puts in each executor pod, both behind a bearer token. Every
query of the chart's Grafana dashboard is run against what was scraped."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from spark_vllm import run_job, spec_from_dict
from spark_vllm.driver.local_server import free_port  # internal helper: a free loopback port
from spark_vllm.task.client import server_root
from tests.conftest import sample_rows
from tests.integration.jobs import assert_one_row_per_input, read_rows, spec_doc
from tests.integration.prometheus import Prometheus

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).parents[2] / "charts" / "spark-vllm" / "files" / "dashboard.json"
TOKEN_ENV = "SPARK_VLLM_METRICS_TOKEN"
ROWS = 300  # all sample_rows has


def dashboard_queries() -> list[str]:
    """Every panel's PromQL in the chart's dashboard, Grafana's interval variables set."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                found.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(orjson.loads(DASHBOARD.read_bytes()))
    return [re.sub(r"\$__(rate_)?interval", "1m", expr) for expr in found]


@pytest.fixture
def metrics_proxy(vllm_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The chart's metrics proxy in front of the session's vLLM (as in an executor pod,
    where vLLM listens on loopback only): (host:port, token)."""
    token = secrets.token_urlsafe(24)
    monkeypatch.setenv(TOKEN_ENV, token)
    port = free_port()
    log = (tmp_path / "proxy.log").open("wb")
    proxy = subprocess.Popen(
        [
            sys.executable, "-m", "spark_vllm.cluster.metrics_proxy",
            "--listen", f"127.0.0.1:{port}",
            "--upstream", server_root(vllm_server) + "/metrics",
            "--token-env", TOKEN_ENV,
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield f"127.0.0.1:{port}", token
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)


def test_prometheus_scrapes_the_running_job_and_its_sidecar(
    spark, vllm_server, metrics_proxy, tmp_path
):
    proxy, token = metrics_proxy
    token_file = tmp_path / "token"
    token_file.write_text(token)
    wrong_file = tmp_path / "wrong-token"
    wrong_file.write_text("not-" + token)
    driver = f"127.0.0.1:{free_port()}"
    prometheus = Prometheus(
        tmp_path / "prometheus",
        {
            "spark-vllm": (driver, token_file),
            "vllm": (proxy, token_file),
            "spark-vllm-no-token": (driver, None),
            "vllm-wrong-token": (proxy, wrong_file),
        },
    ).start()
    try:
        rows = sample_rows(ROWS)
        doc = spec_doc(
            tmp_path, vllm_server, rows,
            partitions=1,  # one long task: the counts must move inside it
            concurrency={"mode": "fixed", "per_executor": 4},
            # long enough answers that Prometheus sees the run mid-way (at 16 tokens a fast
            # run ended before its second scrape once)
            sampling={"max_tokens": 64, "ignore_eos": True, "temperature": 0.0},
            progress={"interval_s": 0.2, "port": int(driver.rsplit(":", 1)[1])},
            metrics={"enabled": True, "token_env": TOKEN_ENV},
        )  # fmt: skip
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["summary"] = run_job(spark, spec_from_dict(doc))
            except BaseException as exc:  # reported by the test's thread
                outcome["error"] = exc

        job = threading.Thread(target=run)
        job.start()
        done: list[float] = []  # sum(spark_vllm_rows_total), scrape by scrape
        running: list[float] = []  # vllm:num_requests_running through the proxy
        answered: set[str] = set()  # dashboard queries that gave a series
        refused: dict[str, set[str]] = {"spark-vllm-no-token": set(), "vllm-wrong-token": set()}
        queries = dashboard_queries()
        while job.is_alive():
            done += [v for _, v in prometheus.query("sum(spark_vllm_rows_total)")]
            running += [v for _, v in prometheus.query('vllm:num_requests_running{job="vllm"}')]
            for expr in set(queries) - answered:
                if prometheus.query(expr):
                    answered.add(expr)
            targets = prometheus.targets()
            for name, errors in refused.items():
                errors.add(targets.get(name, {}).get("lastError", ""))
            time.sleep(0.25)
        job.join()
        if "error" in outcome:
            raise outcome["error"]
        summary = outcome["summary"]
    finally:
        prometheus.stop()

    assert_one_row_per_input(read_rows(tmp_path / "out"), rows)
    assert summary.rows == ROWS
    moving = sorted({v for v in done if 0 < v < ROWS})
    assert len(moving) >= 3, f"rows done seen mid-job: {moving} (all: {done})"
    assert done == sorted(done), f"rows done went back: {done}"
    assert running, "vllm:num_requests_running was never scraped through the proxy"
    assert max(running) > 0, f"vLLM never had a request running at a scrape: {running}"
    assert set(queries) == answered, f"dashboard queries with no data: {set(queries) - answered}"
    # The endpoints take only the token: a scraper without it, or with a wrong one, is refused.
    for name, errors in refused.items():
        assert any("401" in error for error in errors), (name, errors)
