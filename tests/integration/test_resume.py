"""Resume, exactly-once output, the error budget, bad input and determinism."""

from __future__ import annotations

import json

import pytest
from pyspark.sql import Window
from pyspark.sql import functions as F

from spark_vllm import JobFailed, run_job, spec_from_dict
from tests.conftest import sample_rows
from tests.integration.faultproxy import FaultProxy
from tests.integration.jobs import assert_one_row_per_input, latest_rows, read_rows, spec_doc

pytestmark = pytest.mark.integration


def test_rerun_skips_succeeded_ids_and_retries_failed_ones(spark, vllm_server, tmp_path):
    rows = sample_rows(40)
    long_question = rows[5]["question"]
    rows[5]["question"] = "word " * 2000  # fails: longer than the context
    first = run_job(spark, spec_from_dict(spec_doc(tmp_path, vllm_server, rows)))
    assert (first.rows, first.failed, first.skipped) == (40, 1, 0)

    rows[5]["question"] = long_question  # the input is fixed; run again
    second = run_job(spark, spec_from_dict(spec_doc(tmp_path, vllm_server, rows)))
    assert (second.rows, second.failed, second.skipped) == (1, 0, 39)
    assert (second.output_ids, second.output_failed) == (40, 0)

    # Raw: the failed attempt and the success are both kept, in two run folders.
    raw = read_rows(tmp_path / "out")
    assert len(raw) == 41
    assert len({r["run"] for r in raw}) == 2
    # Through the project's reader: exactly one row per id, the latest attempt.
    latest = latest_rows(spark, tmp_path / "out")
    assert_one_row_per_input(latest, rows)
    assert all(r["error"] is None for r in latest)

    third = run_job(spark, spec_from_dict(spec_doc(tmp_path, vllm_server, rows)))
    assert (third.rows, third.skipped) == (0, 40)


def test_the_manuals_plain_spark_recipe_gives_the_same_rows(spark, vllm_server, tmp_path):
    rows = sample_rows(12)
    rows[3]["question"] = "word " * 2000
    run_job(spark, spec_from_dict(spec_doc(tmp_path, vllm_server, rows)))
    rows[3]["question"] = "short again"
    run_job(spark, spec_from_dict(spec_doc(tmp_path, vllm_server, rows)))

    # The recipe, as the manual gives it (docs/job-spec.md):
    attempts = spark.read.parquet(str(tmp_path / "out"))
    latest = (
        attempts.withColumn(
            "_n",
            F.row_number().over(
                Window.partitionBy("id").orderBy(F.desc("run"), F.col("error").isNotNull())
            ),
        )
        .where("_n = 1")
        .drop("_n")
    )
    recipe = sorted((r["id"], r["run"], r["error"]) for r in latest.collect())
    reader = sorted((r["id"], r["run"], r["error"]) for r in latest_rows(spark, tmp_path / "out"))
    assert recipe == reader
    assert len(recipe) == 12 and all(error is None for _, _, error in recipe)


def test_overwrite_starts_afresh_and_error_mode_refuses_an_existing_path(
    spark, vllm_server, tmp_path
):
    from spark_vllm import SpecError

    rows = sample_rows(5)
    run_job(spark, spec_from_dict(spec_doc(tmp_path, vllm_server, rows)))
    doc = spec_doc(tmp_path, vllm_server, rows, output={"mode": "overwrite"})
    again = run_job(spark, spec_from_dict(doc))
    assert (again.rows, again.skipped) == (5, 0)
    assert len(read_rows(tmp_path / "out")) == 5
    refuse = spec_doc(tmp_path, vllm_server, rows, output={"mode": "error"})
    with pytest.raises(SpecError, match="exists and output.mode is 'error'"):
        run_job(spark, spec_from_dict(refuse))


def test_output_path_holding_other_data_is_refused(spark, vllm_server, tmp_path):
    from spark_vllm import SpecError

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.csv").write_text("a,b\n")
    with pytest.raises(SpecError, match=r"holds \['precious.csv'\], which are not spark-vllm runs"):
        run_job(spark, spec_from_dict(spec_doc(tmp_path, vllm_server, sample_rows(3))))
    assert (tmp_path / "out" / "precious.csv").exists()


def test_max_error_rate_stops_a_broken_job_early_with_a_summary(spark, vllm_server, tmp_path):
    rows = sample_rows(200)
    for row in rows[::2]:
        row["question"] = "word " * 2000  # half the rows fail
    doc = spec_doc(
        tmp_path,
        vllm_server,
        rows,
        max_error_rate=0.2,
        error_rate_min_rows=20,
        partitions=1,
        concurrency={"per_executor": 4},
    )
    with FaultProxy(vllm_server) as proxy:
        doc["endpoint"]["base_url"] = proxy.base_url
        with pytest.raises(JobFailed) as info:
            run_job(spark, spec_from_dict(doc))
        sent = proxy.posts
    assert "more than max_error_rate 0.2" in str(info.value)
    assert sent < 60, f"{sent} requests sent: the budget should stop the task after ~20 rows"
    assert info.value.summary.rows == 0  # the only task failed: nothing committed
    assert info.value.summary.status == "failed"
    # the run left its summary beside the output all the same
    left = (tmp_path / "out" / "_spark_vllm" / "summaries").glob("*.json")
    documents = [json.loads(path.read_text()) for path in left]
    assert [(d["status"], d["rows"]) for d in documents] == [("failed", 0)]


def test_bad_input_rows_become_error_rows_naming_the_cause(spark, vllm_server, tmp_path):
    good = [{"role": "user", "content": "Name a colour."}]
    rows = [
        {"id": "ok-list", "messages": json.dumps(good), "n": 1},
        {"id": "bad-json", "messages": '[{"role": "user", "content": "x"', "n": 2},
        {"id": "no-role", "messages": json.dumps([{"content": "x"}]), "n": 3},
        {"id": "empty", "messages": "", "n": 4},
        {"id": "null", "messages": None, "n": 5},
        {"id": "too-long", "messages": json.dumps([{"role": "user", "content": "w " * 2000}])},
    ]
    doc = spec_doc(
        tmp_path, vllm_server, rows, prompt={"column": "messages"}, output={"keep_columns": ["n"]}
    )
    run_job(spark, spec_from_dict(doc))
    out = {r["id"]: r for r in read_rows(tmp_path / "out")}
    assert out["ok-list"]["error"] is None
    assert "not a JSON messages list" in out["bad-json"]["error"]
    assert "message 0 needs 'role'" in out["no-role"]["error"]
    assert out["empty"]["error"] == "bad input: column 'messages' is empty"
    assert out["null"]["error"] == "bad input: column 'messages' is null"
    assert "maximum context length" in out["too-long"]["error"]

    # A numeric column (Spark reads it as bigint) where a prompt string is expected.
    numbers = [{"id": "a", "prompt": 42}, {"id": "b", "prompt": 7}]
    (tmp_path / "numbers").mkdir()
    doc = spec_doc(
        tmp_path / "numbers",
        vllm_server,
        numbers,
        task="completion",
        prompt={"column": "prompt"},
        output={"path": str(tmp_path / "out2"), "keep_columns": []},
    )
    run_job(spark, spec_from_dict(doc))
    out2 = {r["id"]: r for r in read_rows(tmp_path / "out2")}
    assert out2["a"]["error"] == "bad input: column 'prompt': expected a string, got int"
    assert out2["b"]["error"] == "bad input: column 'prompt': expected a string, got int"


def test_seed_auto_or_temperature_zero_makes_answers_repeatable(spark, vllm_server, tmp_path):
    rows = sample_rows(16)

    def answers(name, seed, temperature=1.0):
        doc = spec_doc(
            tmp_path,
            vllm_server,
            rows,
            sampling={"temperature": temperature, "max_tokens": 12, "seed": seed},
            output={"path": str(tmp_path / name)},
        )
        run_job(spark, spec_from_dict(doc))
        return {r["id"]: r["response"] for r in read_rows(tmp_path / name)}

    assert answers("auto1", "auto") == answers("auto2", "auto")
    assert answers("greedy1", None, 0.0) == answers("greedy2", None, 0.0)
    # The check has teeth: unseeded sampling at temperature 1 differs between runs.
    assert answers("free1", None) != answers("free2", None)
