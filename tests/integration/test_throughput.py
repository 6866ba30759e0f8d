"""Throughput features against the real vLLM: adaptive window, per-row sampling, ordering."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_vllm import run_job, spec_from_dict
from spark_vllm.task.runner import PartitionRunner  # internal: one task's window, no Spark job
from tests.conftest import sample_rows
from tests.integration.jobs import assert_one_row_per_input, read_rows, spec_doc, task_config

pytestmark = pytest.mark.integration


def _mean_in_flight(
    base_url: str, rows: list[dict], **changes
) -> tuple[float, list[dict], PartitionRunner]:
    """Run one partition; the mean requests in flight (latency sum over wall time), the
    result rows, and the runner (its `window_range`: the windows it sent under)."""

    def batches():
        for i in range(0, len(rows), 16):
            yield pa.RecordBatch.from_pylist(
                [{"id": r["id"], "question": r["question"]} for r in rows[i : i + 16]]
            )

    start = time.monotonic()
    out: list[dict] = []
    runner = PartitionRunner(task_config(base_url, **changes))
    for batch in runner.run(batches()):
        out.extend(batch.to_pylist())
    wall_ms = (time.monotonic() - start) * 1000
    assert sorted(r["id"] for r in out) == sorted(r["id"] for r in rows)
    assert all(r["error"] is None for r in out), [r["error"] for r in out if r["error"]]
    return sum(r["latency_ms"] for r in out) / wall_ms, out, runner


def test_adaptive_window_opens_up_while_the_engine_has_room(vllm_server):
    """From a window of 2, the task reads /metrics, sees an empty queue and sends more.
    (The mean in flight of so short a task depends on how fast the window opens on this
    machine at that moment. The window it reached depends on how many polls fell inside
    the task: 2 -> 3 -> 5 -> 8 takes three, which a loaded CI machine still gives a task of
    192 rows; a CI run once ended a 96-row task at 12, before a fifth growth to 18.)"""
    rows = sample_rows(192)
    sampling = {"max_tokens": 48, "ignore_eos": True}
    fixed, _, _ = _mean_in_flight(vllm_server, rows, window=2, sampling=sampling)
    adaptive, _, runner = _mean_in_flight(
        vllm_server,
        rows,
        window=2,
        sampling=sampling,
        adaptive=True,
        max_window=64,
        metrics_interval_s=0.1,
    )
    assert fixed < 2.3
    assert runner.window_range is not None and runner.window_range[1] >= 8, runner.window_range
    assert adaptive > 1.5 * fixed, f"adaptive kept {adaptive:.1f} in flight, fixed {fixed:.1f}"


def test_adaptive_window_keeps_its_limit(vllm_server):
    """The window never exceeds max_window, however empty the queue."""
    rows = sample_rows(64)
    mean, _, runner = _mean_in_flight(
        vllm_server,
        rows,
        window=2,
        sampling={"max_tokens": 32, "ignore_eos": True},
        adaptive=True,
        max_window=3,
        metrics_interval_s=0.1,
    )
    assert mean <= 3.3
    assert runner.window_range is not None and runner.window_range[1] <= 3, runner.window_range


def test_per_row_max_tokens_from_a_sampling_column(spark, vllm_server, tmp_path):
    """Each row gets its own max_tokens; a bad value is that row's error, not the job's."""
    rows = sample_rows(12)
    for i, row in enumerate(rows):
        row["budget"] = json.dumps({"max_tokens": 3 + i})
    rows[5]["budget"] = "lots"
    rows[6]["budget"] = None  # no override: the spec's max_tokens
    doc = spec_doc(
        tmp_path,
        vllm_server,
        rows,
        sampling={"max_tokens": 20, "temperature": 0.0, "ignore_eos": True},
        sampling_column="budget",
    )
    summary = run_job(spark, spec_from_dict(doc))
    out = {r["id"]: r for r in read_rows(tmp_path / "out")}
    assert_one_row_per_input(list(out.values()), rows)
    assert summary.failed == 1
    for i, row in enumerate(rows):
        got = out[row["id"]]
        if i == 5:
            assert got["error"] is not None
            assert "sampling column 'budget' is not a JSON object" in got["error"]
            assert got["attempts"] == 0
            continue
        assert got["error"] is None
        assert got["completion_tokens"] == (20 if i == 6 else 3 + i)


def test_longest_first_sends_the_longest_generations_of_a_partition_first(
    spark, vllm_server, tmp_path
):
    """With one partition and one request at a time, rows leave in max_tokens order."""
    rows = sample_rows(10)
    budgets = [4, 9, 2, 7, 1, 8, 3, 6, 10, 5]
    for row, k in zip(rows, budgets, strict=True):
        row["budget"] = {"max_tokens": k}  # a struct column

    def order(setting: str) -> list[int]:
        (tmp_path / setting).mkdir()
        doc = spec_doc(
            tmp_path / setting,
            vllm_server,
            rows,
            sampling={"max_tokens": 20, "temperature": 0.0, "ignore_eos": True},
            sampling_column="budget",
            concurrency={"mode": "fixed", "per_executor": 1, "order": setting},
            partitions=1,
        )
        run_job(spark, spec_from_dict(doc))
        (part,) = (tmp_path / setting / "out").glob("run=*/part-*")
        # One request at a time: the file holds rows in the order they were sent.
        return pq.read_table(part).column("completion_tokens").to_pylist()

    assert order("longest_first") == sorted(budgets, reverse=True)
    assert sorted(order("input")) == sorted(budgets)
