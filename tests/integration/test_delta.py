"""format: delta in and out: real Spark with the real Delta Lake connector (scripts/get-jars.sh)
and the real vLLM; the table read back independently with delta-rs (PyPI `deltalake`)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from spark_vllm import SpecError, run_job, spec_from_dict
from spark_vllm.spec import JobSpec
from spark_vllm.storage import delta
from spark_vllm.storage.fingerprint import RunRecord
from spark_vllm.storage.stores import store_for
from tests.conftest import sample_rows
from tests.integration.jobs import read_rows, run_cli, run_commits, spec_doc, table_rows

pytestmark = pytest.mark.integration

ROWS = 24


def delta_doc(tmp_path: Path, base_url: str, rows: list[dict], **changes: object) -> dict:
    doc = spec_doc(tmp_path, base_url, rows, **changes)
    doc["output"] = {**doc["output"], "format": "delta", "path": str(tmp_path / "table")}
    return doc


def test_a_chat_job_into_delta_matches_parquet_and_resumes_one_commit_per_run(
    spark, vllm_server, tmp_path
):
    rows = sample_rows(ROWS)
    long_question = rows[5]["question"]
    rows[5]["question"] = "word " * 2000  # fails: longer than the context
    files = run_job(spark, spec_from_dict(spec_doc(tmp_path, vllm_server, rows)))
    first = run_job(spark, spec_from_dict(delta_doc(tmp_path, vllm_server, rows)))
    assert (first.rows, first.failed, first.skipped) == (ROWS, 1, 0)
    assert (files.rows, files.failed) == (ROWS, 1)

    # Read back without Spark: one row per id, this run's, the same answers as parquet's.
    table = tmp_path / "table"
    out = table_rows(table)
    assert sorted(r["id"] for r in out) == sorted(r["id"] for r in rows)
    assert {r["run"] for r in out} == {first.run_id}
    parquet = {r["id"]: r for r in read_rows(tmp_path / "out")}
    for row in out:
        same = parquet[row["id"]]
        assert (row["response"], row["error"] is None, row["topic"]) == (
            same["response"], same["error"] is None, same["topic"],
        )  # fmt: skip
    commits = run_commits(table)
    assert [c["userMetadata"] for c in commits] == [f"spark-vllm run {first.run_id}"]
    # The staging folder is gone; the record and summary sit beside the log.
    assert not list((table / delta.STAGING).glob("run=*"))
    assert (table / "_spark_vllm" / "runs" / f"{first.run_id}.json").is_file()

    rows[5]["question"] = long_question  # the input is fixed; run again
    second = run_job(spark, spec_from_dict(delta_doc(tmp_path, vllm_server, rows)))
    assert (second.rows, second.failed, second.skipped) == (1, 0, ROWS - 1)
    assert (second.output_ids, second.output_failed) == (ROWS, 0)
    out = table_rows(table)
    # No id redone: the 23 answered once, the failed one twice (its failure, its success).
    by_id: dict[str, list[dict]] = {}
    for row in out:
        by_id.setdefault(row["id"], []).append(row)
    assert sorted(by_id) == sorted(r["id"] for r in rows)
    redone = {i: sorted(r["run"] for r in found) for i, found in by_id.items() if len(found) > 1}
    assert redone == {rows[5]["id"]: sorted([first.run_id, second.run_id])}

    third = run_job(spark, spec_from_dict(delta_doc(tmp_path, vllm_server, rows)))
    assert (third.rows, third.skipped) == (0, ROWS)
    # DESCRIBE HISTORY (Spark, through Delta's SQL) and delta-rs agree: one commit per
    # run that wrote rows, carrying its run id; a run with nothing to send makes none.
    history = spark.sql(f"DESCRIBE HISTORY delta.`{table}`").orderBy("version").collect()
    assert [(h["operation"], h["userMetadata"]) for h in history] == [
        ("WRITE", f"spark-vllm run {first.run_id}"),
        ("WRITE", f"spark-vllm run {second.run_id}"),
    ]
    assert [c["userMetadata"] for c in run_commits(table)] == [
        f"spark-vllm run {first.run_id}", f"spark-vllm run {second.run_id}",
    ]  # fmt: skip


def test_delta_input_version_changed_settings_refused_overwrite_and_error_mode(
    spark, vllm_server, tmp_path
):
    source = str(tmp_path / "questions")
    rows = sample_rows(10)
    spark.createDataFrame(rows[:6]).write.format("delta").save(source)  # version 0
    spark.createDataFrame(rows[6:]).write.format("delta").mode("append").save(source)
    doc = delta_doc(tmp_path, vllm_server, rows)
    doc["input"] = {"format": "delta", "path": source, "id_column": "id",
                    "options": {"versionAsOf": "0"}}  # fmt: skip
    first = run_job(spark, spec_from_dict(doc))
    assert (first.rows, first.failed) == (6, 0)  # version 0 only
    table = tmp_path / "table"
    assert sorted(r["id"] for r in table_rows(table)) == sorted(r["id"] for r in rows[:6])

    longer = {**doc, "sampling": {**doc["sampling"], "max_tokens": 24}}
    with pytest.raises(SpecError, match="sampling.max_tokens: 16 → 24") as info:
        run_job(spark, spec_from_dict(longer))
    assert f"output.path {str(table)!r} holds 6 answer(s)" in str(info.value)
    assert len(run_commits(table)) == 1  # refused before anything was written

    # overwrite: this run's commit replaces the rows; the first version stays readable.
    again = {**longer, "output": {**doc["output"], "mode": "overwrite"}}
    replaced = run_job(spark, spec_from_dict(again))
    assert (replaced.rows, replaced.skipped) == (6, 0)
    assert {r["run"] for r in table_rows(table)} == {replaced.run_id}
    assert len(table_rows(table)) == 6
    commits = run_commits(table)
    assert [c["userMetadata"] for c in commits] == [
        f"spark-vllm run {first.run_id}", f"spark-vllm run {replaced.run_id}",
    ]  # fmt: skip
    assert commits[-1]["operationParameters"]["mode"] == "Overwrite"
    old = spark.read.format("delta").option("versionAsOf", "0").load(str(table))
    assert {r["run"] for r in old.select("run").distinct().collect()} == {first.run_id}

    refuse = {**doc, "output": {**doc["output"], "mode": "error"}}
    with pytest.raises(SpecError, match="exists and output.mode is 'error'"):
        run_job(spark, spec_from_dict(refuse))


def _store(tmp_path: Path) -> tuple[JobSpec, Path]:
    doc = delta_doc(tmp_path, "http://127.0.0.1:9/v1", sample_rows(4))
    return spec_from_dict(doc), tmp_path / "table"


def test_rows_a_dead_driver_staged_are_committed_once_by_the_next_run(spark, tmp_path):
    spec, table = _store(tmp_path)
    rows = spark.createDataFrame(
        [(f"q{i}", f"answer {i}", None) for i in range(4)],
        "id string, response string, error string",
    )
    store = store_for(spark, spec)
    assert store.prepare() is False
    store.write(rows, "20261207T000000000000Z")  # the driver died before finish()
    assert not (table / "_delta_log").exists()
    staged = list((table / delta.STAGING / "run=20261207T000000000000Z").glob("*.parquet"))

    # A commit that landed before its driver could delete the staging folder: the
    # recovery's commit of the same run is skipped (Delta's idempotent write id).
    keep = tmp_path / "kept"
    keep.mkdir()
    for part in staged:
        (keep / part.name).write_bytes(part.read_bytes())
    assert store_for(spark, spec).prepare() is True  # the next run commits them
    assert len(table_rows(table)) == 4
    restaged = table / delta.STAGING / "run=20261207T000000000000Z"
    restaged.mkdir(parents=True)
    for part in keep.iterdir():
        (restaged / part.name).write_bytes(part.read_bytes())
    assert store_for(spark, spec).prepare() is True
    assert len(table_rows(table)) == 4
    assert [c["userMetadata"] for c in run_commits(table)] == [
        "spark-vllm run 20261207T000000000000Z"
    ]
    assert not restaged.exists()
    latest = store_for(spark, spec).attempts(None).where(F.col("run") == "20261207T000000000000Z")
    assert latest.count() == 4


def test_an_output_path_that_is_not_a_delta_table_is_refused(spark, tmp_path):
    spec, table = _store(tmp_path)
    spark.range(3).write.parquet(str(table))
    with pytest.raises(SpecError, match="holds .*part-.* but no Delta table"):
        store_for(spark, spec).prepare()


def test_delta_without_the_connector_is_refused_naming_the_format(tmp_path, monkeypatch):
    """A session started without the jars (none in the folder the job looks in)."""
    monkeypatch.setenv(delta.JARS_ENV, str(tmp_path / "no-jars"))
    doc = delta_doc(tmp_path, "http://127.0.0.1:9/v1", sample_rows(3))
    done = run_cli(doc, tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "output.format 'delta' needs the Delta Lake connector" in done.stderr
    assert "io.delta:delta-spark_2.13:4.4.0" in done.stderr
    assert "scripts/get-jars.sh" in done.stderr


def test_vacuum_keeps_the_run_records_and_staged_rows(spark, tmp_path):
    """They sit under _spark_vllm/, which Delta's VACUUM leaves alone."""
    spec, table = _store(tmp_path)
    schema = "id string, response string, error string"
    store = store_for(spark, spec)
    assert store.prepare() is False
    store.record(RunRecord("20261207T000000000001Z", {"task": "chat"}))
    store.write(spark.createDataFrame([("q1", "a", None)], schema), "20261207T000000000001Z")
    store.finish("20261207T000000000001Z")
    store.write(spark.createDataFrame([("q2", "b", None)], schema), "20261207T000000000002Z")
    # Another writer replaces the table: the first run's files are no longer in it.
    spark.createDataFrame([("q1", "c", None, "x")], f"{schema}, run string").write.format(
        "delta"
    ).mode("overwrite").save(str(table))
    spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    try:
        spark.sql(f"VACUUM delta.`{table}` RETAIN 0 HOURS").collect()
    finally:
        spark.conf.unset("spark.databricks.delta.retentionDurationCheck.enabled")
    assert list(store.records()) == ["20261207T000000000001Z"]
    assert delta.staged_runs(spark, str(table)) == ["20261207T000000000002Z"]
    assert store_for(spark, spec).prepare() is True  # commits the staged run
    assert sorted(r["id"] for r in table_rows(table)) == ["q1", "q2"]


def test_upsert_merges_each_run_on_the_id_one_row_per_id(spark, tmp_path):
    """output.delta.write_mode upsert: the first run creates the table, each later run is
    one MERGE commit on the id; a task run twice (an id staged twice) leaves one row, the
    success; a new column is added; a MERGE applied twice leaves the same rows."""
    doc = delta_doc(tmp_path, "http://127.0.0.1:9/v1", sample_rows(4))
    doc["output"]["delta"] = {"write_mode": "upsert"}
    spec, table = spec_from_dict(doc), tmp_path / "table"
    schema = "id string, response string, error string"
    first, second, third = "20261207T000000000001Z", "20261207T000000000002Z", "20261207T3Z"
    store = store_for(spark, spec)
    assert store.prepare() is False
    store.write(
        spark.createDataFrame(
            [("q0", "a0", None), ("q1", None, "HTTP 500"), ("q2", "a2", None),
             ("q2", None, "timeout")],
            schema,
        ),
        first,
    )  # fmt: skip
    store.finish(first)
    assert sorted((r["id"], r["response"]) for r in table_rows(table)) == [
        ("q0", "a0"), ("q1", None), ("q2", "a2"),
    ]  # fmt: skip

    # The rerun answers the failed id and a new one, with one more kept column.
    store = store_for(spark, spec)
    assert store.prepare() is True
    store.write(
        spark.createDataFrame(
            [("q1", "a1", None, "t1"), ("q3", "a3", None, "t3")], f"{schema}, topic string"
        ),
        second,
    )
    store.finish(second)
    out = {r["id"]: r for r in table_rows(table)}
    assert sorted(out) == ["q0", "q1", "q2", "q3"]
    assert (out["q1"]["response"], out["q1"]["error"], out["q1"]["run"]) == ("a1", None, second)
    assert (out["q0"]["run"], out["q0"]["topic"]) == (first, None)
    assert out["q3"]["topic"] == "t3"
    merges = run_commits(table, "MERGE")
    assert [c["userMetadata"] for c in merges] == [f"spark-vllm run {second}"]
    # Resume reads one attempt per id: the latest.
    latest = store_for(spark, spec).attempts(None)
    assert latest.count() == 4

    # A driver that died after its MERGE but before deleting its staging: the next run
    # merges the same rows again, which changes nothing.
    store.write(spark.createDataFrame([("q2", "a2 again", None)], schema), third)
    store.finish(third)
    before = sorted(tuple(sorted(r.items())) for r in table_rows(table))
    store.write(spark.createDataFrame([("q2", "a2 again", None)], schema), third)
    assert store_for(spark, spec).prepare() is True
    assert sorted(tuple(sorted(r.items())) for r in table_rows(table)) == before
    assert len(table_rows(table)) == 4


RACE = {"20261207T000000000001Z": "a", "20261207T000000000002Z": "b"}


def race(spark, spec: JobSpec, q0_too: bool = False) -> None:
    """A table holding q0 (run ...0Z), then RACE's two runs staged (50 ids each, a0… and
    b0…; with `q0_too`, each also answers q0) and finished at the same time, each by a
    session of its own (`newSession`: its own SQL settings, as two jobs' drivers have)."""
    schema = "id string, response string, error string"
    store = store_for(spark, spec)
    assert store.prepare() is False
    store.write(spark.createDataFrame([("q0", "first", None)], schema), "20261207T000000000000Z")
    store.finish("20261207T000000000000Z")  # the table exists before the race
    for run_id, tag in RACE.items():
        rows = [(f"{tag}{i}", f"answer {i}", None) for i in range(50)]
        store.write(spark.createDataFrame(rows + [("q0", tag, None)] * q0_too, schema), run_id)
    with ThreadPoolExecutor(max_workers=2) as pool:
        finishing = [pool.submit(store_for(spark.newSession(), spec).finish, r) for r in RACE]
        for done in finishing:
            done.result()


def test_two_jobs_appending_to_one_table_at_once_both_commit(spark, tmp_path):
    """Two runs (two jobs' drivers) commit into one table at the same time: Delta's blind
    appends do not conflict, so both commits land, each with its run id, and no row of
    either is lost."""
    spec, table = _store(tmp_path)
    race(spark, spec)
    out = table_rows(table)
    assert len(out) == 101
    assert {r["run"] for r in out} == {"20261207T000000000000Z", *RACE}
    assert sorted(c["userMetadata"] for c in run_commits(table))[1:] == [
        f"spark-vllm run {run_id}" for run_id in sorted(RACE)
    ]


def test_two_upsert_runs_merging_into_one_table_at_once_both_land(spark, tmp_path):
    """Two runs (two jobs' drivers) MERGE into one table at the same time, on disjoint
    ids and one both answer (q0): each MERGE reads the whole table, so Delta's optimistic
    concurrency refuses the second to commit; the commit merges again on the new version,
    so both land, each in a MERGE commit with its run id, and no row of either is lost
    (each driver a session of its own: a MERGE's commit message is a session setting)."""
    doc = delta_doc(tmp_path, "http://127.0.0.1:9/v1", sample_rows(4))
    doc["output"]["delta"] = {"write_mode": "upsert"}
    spec, table = spec_from_dict(doc), tmp_path / "table"
    race(spark, spec, q0_too=True)
    out = table_rows(table)
    assert len(out) == 101  # q0 once: the run that merged last holds it
    assert {r["id"] for r in out} == {"q0"} | {f"{t}{i}" for t in "ab" for i in range(50)}
    merges = run_commits(table, "MERGE")
    assert sorted(c["userMetadata"] for c in merges) == [
        f"spark-vllm run {run_id}" for run_id in sorted(RACE)
    ]
    last = max(merges, key=lambda c: c["version"])["userMetadata"].split()[-1]
    assert next(r for r in out if r["id"] == "q0")["run"] == last
    assert delta.staged_runs(spark, str(table)) == []
