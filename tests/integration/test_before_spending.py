"""Know before you spend: what a job refuses before its first request, and `spark-vllm
plan`, sample runs and budgets (real Spark, the real vLLM serving the tiny model with a
context of 512 tokens)."""

from __future__ import annotations

import json
import time

import pytest

from spark_vllm import run_job, spec_from_dict
from tests.conftest import sample_rows
from tests.integration.jobs import (
    MAX_TOKENS,
    assert_one_row_per_input,
    read_rows,
    run_cli,
    spec_doc,
)

pytestmark = pytest.mark.integration

CONTEXT = 512  # the session's server: --max-model-len 512


@pytest.mark.parametrize("where", ["spec", "column"])
def test_max_tokens_above_the_context_is_refused_before_any_request(vllm_server, tmp_path, where):
    """Tried as a new user would: `--set sampling.max_tokens=100000` sent every row and
    recorded the same HTTP 400 on each. Now the task asks its sidecar for the context and
    refuses before it sends anything, naming both numbers (exit 2)."""
    rows = sample_rows(20)
    changes: dict = {"sampling": {"max_tokens": 100_000}}
    if where == "column":  # one row's own max_tokens is too large: the job is refused
        for row in rows:
            row["sampling"] = {"max_tokens": 8}
        rows[13]["sampling"] = {"max_tokens": 600}
        changes = {"sampling_column": "sampling"}
    doc = spec_doc(tmp_path, vllm_server, rows, **changes)
    done = run_cli(doc, tmp_path)
    asked = 100_000 if where == "spec" else 600
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"max_tokens {asked} is more than model" in done.stderr
    assert f"its context is {CONTEXT} tokens" in done.stderr
    out = tmp_path / "out"
    assert not out.exists() or read_rows(out) == [], "a row was sent"


def counted_rows(spark, doc: dict, tokens) -> dict[str, dict]:
    """The plan's per-row counts (preflight.count_rows) of the job `doc`, by id."""
    from spark_vllm.driver.job import plan
    from spark_vllm.driver.preflight import count_rows

    spec = spec_from_dict(doc)
    job = plan(spark, spec)
    if job.progress is not None:
        job.progress.close()
    found = count_rows(spec, job, tokens, CONTEXT)
    assert found is not None
    return {r["id"]: r.asDict() for r in found.collect()}


def nearly_full(doc: dict, tokens, low: int, high: int) -> str:
    """A question whose request, as the job `doc` renders it, counts `low` to `high`
    prompt tokens (found with the server's tokenizer, by bisection over its length)."""
    from spark_vllm.driver.job import kind_for
    from spark_vllm.driver.preflight import counting

    kind = kind_for(spec_from_dict(doc))

    def size(words: int) -> int:
        found = counting(kind, kind.request({"id": "x", "question": "word " * words}))
        (counts,) = tokens.count([found.requests])
        return sum(counts)

    lo, hi = 1, 2000
    while lo < hi:  # the fewest words reaching `low` tokens
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if size(mid) < low else (lo, mid)
    assert low <= size(lo) <= high, (lo, size(lo))
    return "word " * lo


@pytest.mark.parametrize("task", ["chat", "completion"])
def test_the_plan_counts_the_tokens_a_real_run_reports_row_for_row(
    spark, vllm_server, tiny_model, tmp_path, task
):
    """Counted by the server's POST /tokenize and by the model's tokenizer files: both
    equal the prompt_tokens of a real run. The rows the plan calls over the context are
    exactly the rows the run fails; a row whose prompt leaves less room than max_tokens
    is answered (vLLM 0.32 lowers its max_tokens) with the tokens the plan said."""
    from spark_vllm.driver.preflight import FileTokens, ServerTokens
    from spark_vllm.task.client import server_root

    server = ServerTokens(server_root(vllm_server))
    rows = sample_rows(40)
    prompt = {"template": "{{ question }}"} if task == "completion" else None
    doc = spec_doc(tmp_path, vllm_server, rows, task=task, **({"prompt": prompt} if prompt else {}))
    rows[3]["question"] = "word " * 600  # over the context
    rows[17]["question"] = nearly_full(doc, server, CONTEXT - MAX_TOKENS + 2, CONTEXT - 2)
    rows[21]["question"] = "  "  # renders empty: never sent
    doc = spec_doc(tmp_path, vllm_server, rows, task=task, **({"prompt": prompt} if prompt else {}))
    by_server = counted_rows(spark, doc, server)
    by_files = counted_rows(spark, doc, FileTokens(str(tiny_model)))
    summary = run_job(spark, spec_from_dict(doc))
    out = {r["id"]: r for r in read_rows(tmp_path / "out")}

    assert set(by_server) == set(out) == {r["id"] for r in rows}
    assert by_server[rows[21]["id"]]["error"].startswith("bad input")
    for row_id, answer in out.items():
        counted, from_files = by_server[row_id], by_files[row_id]
        assert counted["prompt_tokens"] == from_files["prompt_tokens"], row_id
        if answer["error"] is None:
            assert counted["prompt_tokens"] == answer["prompt_tokens"], row_id
            assert not counted["over_context"], row_id
    failed = {i for i, r in out.items() if r["error"] is not None and "bad input" not in r["error"]}
    over = {i for i, r in by_server.items() if r["over_context"]}
    assert over == failed == {rows[3]["id"]}
    assert summary.failed == 2
    short = out[rows[17]["id"]]
    assert by_server[rows[17]["id"]]["short_answer"]
    assert [i for i, r in by_server.items() if r["short_answer"]] == [rows[17]["id"]]
    assert short["error"] is None and short["finish_reason"] == "length"
    assert short["completion_tokens"] == by_server[rows[17]["id"]]["output_bound"] < MAX_TOKENS


def test_plan_prints_and_reports_what_a_run_would_send(vllm_server, tmp_path):
    rows = sample_rows(30)
    rows[5]["question"] = "word " * 600
    doc = spec_doc(
        tmp_path, vllm_server, rows, estimate={"output_tokens_per_s": 100, "replicas": 2}
    )
    done = run_cli(doc, tmp_path, "--report", str(tmp_path / "plan.json"), command="plan")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "plan.json").read_text())
    assert (report["rows"], report["done"], report["to_send"]) == (30, 0, 30)
    assert report["over_context"] == 1 and report["over_context_ids"] == [rows[5]["id"]]
    assert report["output_bound"] == 29 * MAX_TOKENS  # the row over the context costs none
    assert report["context"] == CONTEXT
    assert report["wall_s_at_most"] == pytest.approx(29 * MAX_TOKENS / 200)
    assert "nothing was sent" in done.stdout
    assert f"over context  1 rows (they would fail)\n    ids {rows[5]['id']}" in done.stdout
    assert not (tmp_path / "out").exists(), "plan wrote to the output"


def test_a_sample_run_then_the_full_run_sends_each_id_once(spark, vllm_server, tmp_path):
    rows = sample_rows(120)
    doc = spec_doc(tmp_path, vllm_server, rows, sample={"rows": 50, "seed": 7})
    first = run_job(spark, spec_from_dict(doc))
    assert first.rows == 50
    sampled = {r["id"] for r in read_rows(tmp_path / "out")}
    again = run_job(spark, spec_from_dict(doc))  # the same sample: nothing left to send
    assert again.rows == 0
    doc.pop("sample")
    full = run_job(spark, spec_from_dict(doc))
    assert (full.skipped, full.rows) == (50, 70)
    out = read_rows(tmp_path / "out")
    assert_one_row_per_input(out, rows)
    assert len(sampled) == 50
    # a fraction picks by the id's hash too: about that share, the same ids every time
    picked = spark.createDataFrame([(r["id"],) for r in rows], "id string")
    from spark_vllm.driver.job import sample
    from spark_vllm.spec import SampleSpec

    share = SampleSpec(fraction=0.25, seed=1)
    ids = {r["id"] for r in sample(picked, "id", share).collect()}
    assert ids == {r["id"] for r in sample(picked.repartition(7), "id", share).collect()}
    assert 15 <= len(ids) <= 45


def test_limit_sends_the_first_rows_and_a_later_run_the_rest(spark, vllm_server, tmp_path):
    rows = sample_rows(60)
    doc = spec_doc(tmp_path, vllm_server, rows, limit=25)
    first = run_job(spark, spec_from_dict(doc))
    assert first.rows == 25
    assert {r["id"] for r in read_rows(tmp_path / "out")} == {r["id"] for r in rows[:25]}
    assert first.output_ids == 25
    second = run_job(spark, spec_from_dict(doc))  # the next 25
    assert {r["id"] for r in read_rows(tmp_path / "out")} == {r["id"] for r in rows[:50]}
    assert (second.skipped, second.rows) == (25, 25)
    doc.pop("limit")
    run_job(spark, spec_from_dict(doc))
    assert_one_row_per_input(read_rows(tmp_path / "out"), rows)


def test_a_budget_stops_the_job_and_a_rerun_sends_only_what_is_left(vllm_server, tmp_path):
    """max_output_tokens 400 at max_tokens 16 (ignore_eos: every answer is 16 tokens), two
    tasks: each granted row holds 16 tokens until its answer is counted, so the run stops
    at the budget, not past it; a rerun with a larger one sends the rest, each id once."""
    rows = sample_rows(100)
    doc = spec_doc(
        tmp_path, vllm_server, rows,
        sampling={"max_tokens": MAX_TOKENS, "ignore_eos": True, "temperature": 0.0},
        budget={"max_output_tokens": 400},
    )  # fmt: skip
    done = run_cli(doc, tmp_path)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "budget reached" in done.stdout
    first = read_rows(tmp_path / "out")
    used = sum(r["completion_tokens"] for r in first)
    assert 400 - MAX_TOKENS < used <= 400, used  # never past it, short by less than a row
    assert len(first) == 25
    doc["budget"] = {"max_rows": 1000}
    done = run_cli(doc, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_one_row_per_input(read_rows(tmp_path / "out"), rows)


def test_a_row_budget_is_exact_across_tasks(spark, vllm_server, tmp_path):
    rows = sample_rows(90)
    doc = spec_doc(tmp_path, vllm_server, rows, partitions=3, budget={"max_rows": 37})
    summary = run_job(spark, spec_from_dict(doc))
    assert summary.status == "budget reached"
    assert summary.rows == 37
    assert len(read_rows(tmp_path / "out")) == 37
    assert "53 row(s) to send are left" in summary.render()


def test_overlong_prompts_are_truncated_to_fit_when_asked(spark, vllm_server, tmp_path):
    rows = sample_rows(12)
    rows[4]["question"] = "word " * 2000
    doc = spec_doc(tmp_path, vllm_server, rows, on_overlong="truncate")
    summary = run_job(spark, spec_from_dict(doc))
    assert summary.failed == 0
    out = {r["id"]: r for r in read_rows(tmp_path / "out")}
    long = out[rows[4]["id"]]
    assert long["truncated"] is True
    assert long["prompt_tokens"] == CONTEXT - MAX_TOKENS
    assert [r["id"] for r in out.values() if r["truncated"]] == [rows[4]["id"]]


def test_a_run_with_no_server_at_its_endpoint_says_so_in_one_line(tmp_path):
    """Tried as a new user would: `spark-vllm run` with nothing listening on the endpoint
    printed `progress: 0/5 rows … ETA -` for the whole timeouts.ready_s, then pages of Java
    and Python traces. Now the driver (a local master shares its tasks' loopback) waits
    for the endpoint before any task starts, saying what it waits for, and gives up with
    one line naming the endpoint and the timeout (exit 1); nothing is written."""
    import socket

    with socket.socket() as free:  # a port with nothing listening once it is closed
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    doc = spec_doc(
        tmp_path, url, sample_rows(5), timeouts={"ready_s": 3}, progress={"interval_s": 1}
    )
    start = time.monotonic()
    done = run_cli(doc, tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert time.monotonic() - start < 180  # JVM start-up and the 3 s, not 15 minutes
    said = [line for line in done.stderr.splitlines() if line.startswith("spark-vllm")]
    assert said[0].startswith(f"spark-vllm: waiting for vLLM at {url} (model "), said
    assert "giving up after 3 s (timeouts.ready_s); last seen: " in said[0]
    assert "connection refused" in said[0]
    assert said[-1].startswith(f"spark-vllm: no vLLM ready at {url} for model "), said
    assert "after 3 s (timeouts.ready_s)" in said[-1]
    assert "Traceback" not in done.stderr and "Py4J" not in done.stderr, done.stderr[-3000:]
    assert "progress: 0/5" not in done.stderr
    assert not (tmp_path / "out").exists() or read_rows(tmp_path / "out") == []
