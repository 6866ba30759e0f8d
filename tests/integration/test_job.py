"""The job end to end: real pyspark local[2] against one real vLLM server."""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import pytest
import yaml

from spark_vllm import SpecError, plan, run_job, spec_from_dict
from spark_vllm.driver.local_server import free_port  # internal: a port nobody listens on
from spark_vllm.spec import load_spec
from tests.conftest import SERVED_NAME, sample_rows
from tests.integration.jobs import (
    MAX_TOKENS,
    assert_one_row_per_input,
    read_rows,
    run_cli,
    spec_doc,
    task_config,
)

pytestmark = pytest.mark.integration


def test_chat_job_writes_exactly_one_answer_per_input_row(spark, vllm_server, tmp_path):
    rows = sample_rows(80)
    spec = spec_from_dict(spec_doc(tmp_path, vllm_server, rows))

    summary = run_job(spark, spec)

    out = read_rows(tmp_path / "out")
    assert_one_row_per_input(out, rows)
    by_id = {r["id"]: r for r in rows}
    for row in out:
        assert row["error"] is None, row
        assert row["topic"] == by_id[row["id"]]["topic"]
        assert isinstance(row["response"], str)
        assert row["finish_reason"] in ("stop", "length")
        assert row["prompt_tokens"] > 0
        assert 0 < row["completion_tokens"] <= MAX_TOKENS
        assert row["attempts"] == 1
        assert row["latency_ms"] > 0
    assert (summary.rows, summary.succeeded, summary.failed) == (80, 80, 0)
    assert summary.completion_tokens == sum(r["completion_tokens"] for r in out)
    assert summary.prompt_tokens == sum(r["prompt_tokens"] for r in out)


def _spark_ui_jobs(spark) -> list[tuple[str | None, str | None]]:
    """(job group, description) of every Spark job the session's status store holds:
    what Spark's UI lists on its Jobs page."""
    store = spark.sparkContext._jsc.sc().statusStore()
    jobs = store.jobsList(None)
    found = []
    for i in range(jobs.size()):
        job = jobs.apply(i)  # a Scala Seq
        group, description = job.jobGroup(), job.description()
        found.append(
            (
                group.get() if group.isDefined() else None,
                description.get() if description.isDefined() else None,
            )
        )
    return found


def test_spark_ui_names_each_step_of_the_job(spark, vllm_server, tmp_path):
    """Spark's UI lists the run's jobs under one group, each described by the spec file,
    the task, the model and its step; the caller's own group and description are back
    afterwards."""
    spec_file = tmp_path / "ui-job.yaml"
    spec_file.write_text(yaml.safe_dump(spec_doc(tmp_path, vllm_server, sample_rows(6))))
    spark.sparkContext.setJobGroup("mine", "my pipeline")
    summary = run_job(spark, load_spec(spec_file))
    ours = [d for g, d in _spark_ui_jobs(spark) if g == f"spark-vllm-{summary.run_id}"]
    prefix = f"spark-vllm ui-job.yaml (chat, {SERVED_NAME}): "
    assert ours and all(d is not None and d.startswith(prefix) for d in ours), ours
    steps = {d.removeprefix(prefix).split(" ")[0] for d in ours if d}
    assert {"reading", "resume", "requests"} <= steps, ours
    assert any(f"writing {tmp_path / 'out'} (parquet)" in d for d in ours if d)
    context = spark.sparkContext
    assert context.getLocalProperty("spark.jobGroup.id") == "mine"
    assert context.getLocalProperty("spark.job.description") == "my pipeline"
    context.setLocalProperty("spark.jobGroup.id", None)
    context.setLocalProperty("spark.job.description", None)


def test_completion_task_sends_prompts_to_the_completions_endpoint(spark, vllm_server, tmp_path):
    rows = sample_rows(20)
    doc = spec_doc(
        tmp_path,
        vllm_server,
        rows,
        task="completion",
        prompt={"template": "Question: {{ question }}\nAnswer:"},
        output={"format": "jsonl", "path": str(tmp_path / "out"), "keep_columns": []},
    )
    summary = run_job(spark, spec_from_dict(doc))

    out = spark.read.json(str(tmp_path / "out")).collect()
    assert sorted(r["id"] for r in out) == sorted(r["id"] for r in rows)
    assert all(r["error"] is None and r["completion_tokens"] > 0 for r in out)
    # Every key is written for every row, `error: null` included.
    first_line = next((tmp_path / "out").glob("run=*/part-*.json")).read_text().splitlines()[0]
    assert '"error":null' in first_line
    assert summary.succeeded == 20


def test_prompt_longer_than_the_context_becomes_an_error_row(spark, vllm_server, tmp_path):
    rows = sample_rows(30)
    rows[7]["question"] = "word " * 2000
    summary = run_job(spark, spec_from_dict(spec_doc(tmp_path, vllm_server, rows)))

    out = {r["id"]: r for r in read_rows(tmp_path / "out")}
    assert len(out) == 30
    bad = out[rows[7]["id"]]
    assert "maximum context length" in bad["error"]
    assert bad["error"].startswith("HTTP 400")
    assert bad["attempts"] == 1, "a 4xx must not be retried"
    assert bad["response"] is None
    assert all(r["error"] is None for i, r in out.items() if i != rows[7]["id"])
    assert (summary.succeeded, summary.failed) == (29, 1)


def test_bad_rows_become_error_rows_without_a_request(spark, vllm_server, tmp_path):
    rows = sample_rows(10)
    rows[2]["question"] = "   "
    rows[5]["question"] = None
    run_job(spark, spec_from_dict(spec_doc(tmp_path, vllm_server, rows)))

    out = {r["id"]: r for r in read_rows(tmp_path / "out")}
    assert len(out) == 10
    assert out[rows[2]["id"]]["error"] == "bad input: rendered prompt is empty"
    assert out[rows[2]["id"]]["attempts"] == 0
    assert out[rows[5]["id"]]["error"] == (
        "bad input: template prints a null value; null column(s): ['question']"
    )
    assert sum(r["error"] is None for r in out.values()) == 8


def test_rows_without_an_id_get_stable_derived_ids(spark, vllm_server, tmp_path):
    rows = [{"topic": r["topic"], "question": r["question"]} for r in sample_rows(12)]
    rows.append(dict(rows[0]))  # an exact copy still gets its own output row
    first = tmp_path / "a"
    first.mkdir()
    doc = spec_doc(first, vllm_server, rows, input={"id_column": None})
    run_job(spark, spec_from_dict(doc))
    second = tmp_path / "b"
    second.mkdir()
    doc = spec_doc(second, vllm_server, list(reversed(rows)), input={"id_column": None})
    doc["partitions"] = 3
    run_job(spark, spec_from_dict(doc))

    ids_a = sorted(r["id"] for r in read_rows(first / "out"))
    ids_b = sorted(r["id"] for r in read_rows(second / "out"))
    assert len(ids_a) == 13 == len(set(ids_a))
    assert ids_a == ids_b, "derived ids must not depend on row order or partitioning"


def test_duplicate_or_null_ids_are_refused_before_any_request(spark, tmp_path):
    rows = sample_rows(6)
    rows[4]["id"] = rows[1]["id"]
    # No server at this URL: the spec error must come first.
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(SpecError, match=rf"unique, non-null id.*id '{rows[1]['id']}' on 2 rows"):
        plan(spark, spec_from_dict(spec_doc(tmp_path, url, rows)))


def test_template_naming_a_missing_column_is_refused_before_any_request(spark, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    doc = spec_doc(tmp_path, url, sample_rows(3), prompt={"template": "{{ questoin }}"})
    with pytest.raises(SpecError, match=r"prompt: column\(s\) \['questoin'\] not in the input"):
        plan(spark, spec_from_dict(doc))


def test_on_error_fail_makes_the_job_fail_with_the_row_and_cause(vllm_server, tmp_path):
    rows = sample_rows(8)
    rows[3]["question"] = "word " * 2000
    doc = spec_doc(tmp_path, vllm_server, rows, on_error="fail")
    done = run_cli(doc, tmp_path, "--set", "spark.master=local[2]")

    assert done.returncode == 1, done.stderr[-3000:]
    assert "job failed: RowFailed: row id=" + repr(rows[3]["id"]) in done.stderr
    assert "maximum context length" in done.stderr
    assert "on_error: fail" in done.stderr


def test_cli_refuses_a_bad_spec_before_spark_starts(tmp_path):
    doc = spec_doc(tmp_path, "http://127.0.0.1:8000/v1", sample_rows(1))
    doc["sampling"]["max_tokens"] = "many"
    start = time.monotonic()
    done = run_cli(doc, tmp_path, timeout=60)

    assert done.returncode == 2
    assert "sampling.max_tokens: expected an integer, got 'many'" in done.stderr
    assert time.monotonic() - start < 30, "no JVM should start for a bad spec"


def test_window_keeps_many_requests_in_flight_and_streams(vllm_server):
    """The runner overlaps requests (never one at a time) and yields before input ends."""
    from spark_vllm.task.runner import run_partition  # internal: one task, no Spark job

    rows = sample_rows(64)

    def config(window: int) -> Any:
        return task_config(vllm_server, window=window)

    consumed = []

    def batches():
        for i in range(0, len(rows), 8):
            consumed.append(i)
            yield pa.RecordBatch.from_pylist(
                [{"id": r["id"], "question": r["question"]} for r in rows[i : i + 8]]
            )

    def concurrency(window: int) -> float:
        consumed.clear()
        start = time.monotonic()
        out = []
        first_yield_at = None
        for batch in run_partition(batches(), config(window)):
            if first_yield_at is None:
                first_yield_at = len(consumed)
            out.extend(batch.to_pylist())
        wall_ms = (time.monotonic() - start) * 1000
        assert sorted(r["id"] for r in out) == sorted(r["id"] for r in rows)
        assert all(r["error"] is None for r in out)
        assert first_yield_at is not None and first_yield_at < len(consumed), (
            "results must stream out before the whole partition is read"
        )
        # Sum of per-row latencies over wall time = mean requests in flight.
        return sum(r["latency_ms"] for r in out) / wall_ms

    assert concurrency(1) < 1.3
    assert concurrency(16) > 4


def test_readiness_names_a_model_the_server_does_not_serve(vllm_server):
    from spark_vllm import SidecarNotReady
    from spark_vllm.task.client import wait_ready  # internal: what a task waits with

    assert wait_ready(vllm_server, SERVED_NAME, deadline_s=10) < 10
    with pytest.raises(SidecarNotReady) as info:
        wait_ready(vllm_server, "gpt-9", deadline_s=1.5, poll_s=0.5)
    assert f"{vllm_server}/models lists ['{SERVED_NAME}']" in str(info.value)
    assert "model 'gpt-9' is not served" in str(info.value)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "table"])
def test_every_input_format_gives_one_row_per_input(spark, vllm_server, tmp_path, fmt):
    rows = sample_rows(6)
    source = spark.createDataFrame(rows)
    doc = spec_doc(tmp_path, vllm_server, rows)
    if fmt == "table":
        source.createOrReplaceTempView("questions_" + fmt)
        doc["input"] = {"format": "table", "table": "questions_" + fmt, "id_column": "id"}
    else:
        where = str(tmp_path / ("in." + fmt))
        if fmt == "csv":
            source.write.option("header", "true").csv(where)
        else:
            source.write.parquet(where)
        doc["input"] = {"format": fmt, "path": where, "id_column": "id"}
    summary = run_job(spark, spec_from_dict(doc))

    out = read_rows(tmp_path / "out")
    assert_one_row_per_input(out, rows)
    assert summary.succeeded == 6
    assert {r["topic"] for r in out} == {r["topic"] for r in rows}
