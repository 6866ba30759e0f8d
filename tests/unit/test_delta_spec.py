"""format: delta in the job spec and in the job's Spark session (no Spark started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_vllm.cli import session_conf
from spark_vllm.spec import SpecError, spec_from_dict
from spark_vllm.storage import delta

pytestmark = pytest.mark.unit


def doc(inp=None, out=None):  # type: ignore[no-untyped-def]
    return {
        "input": inp or {"format": "jsonl", "path": "in.jsonl"},
        "output": out or {"format": "delta", "path": "s3a://lake/answers"},
        "endpoint": {"model": "m"},
        "prompt": {"template": "{{ question }}"},
    }


def error_of(d: dict) -> str:
    with pytest.raises(SpecError) as info:
        spec_from_dict(d)
    return str(info.value)


def test_delta_output_takes_a_path_and_every_mode():
    for mode in ("resume", "overwrite", "error"):
        spec = spec_from_dict(doc(out={"format": "delta", "path": "t", "mode": mode}))
        assert spec.output.where() == "t (delta)"


def test_delta_input_reads_a_path_with_the_readers_options():
    inp = {"format": "delta", "path": "lake/questions", "options": {"versionAsOf": "3"}}
    spec = spec_from_dict(doc(inp=inp, out={"path": "out"}))
    assert spec.input.where() == "lake/questions (delta)"
    assert spec.input.options == {"versionAsOf": "3"}


@pytest.mark.parametrize(
    ("inp", "out", "named"),
    [
        (None, {"format": "delta"}, "format 'delta' needs output.path"),
        ({"format": "delta"}, {"path": "o"}, "format 'delta' needs input.path"),
        ({"format": "delta", "path": "p", "table": "t"}, {"path": "o"}, "remove input.table"),
        (None, {"format": "deltalake", "path": "o"}, "'delta'"),
        (None, {"format": "delta", "path": "o", "jdbc": {"url": "jdbc:x:y", "table": "a"}},
         "output.jdbc goes with format 'jdbc', not 'delta'"),
        (None, {"format": "parquet", "path": "o", "delta": {"write_mode": "upsert"}},
         "output.delta goes with format 'delta', not 'parquet'"),
        (None, {"format": "delta", "path": "o", "delta": {"write_mode": "merge"}},
         "'append' or 'upsert'"),
    ],
)  # fmt: skip
def test_delta_mistakes_are_named(inp, out, named):  # type: ignore[no-untyped-def]
    assert named in error_of(doc(inp, out))


def test_a_delta_job_session_gets_the_connector_and_its_sql(tmp_path, monkeypatch):
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    (tmp_path / "b.jar").write_bytes(b"")
    (tmp_path / "a.jar").write_bytes(b"")
    monkeypatch.setenv(delta.JARS_ENV, str(tmp_path))
    spec = spec_from_dict({**doc(), "spark": {"conf": {"spark.jars": "/opt/x.jar"}}})
    conf = session_conf(spec, "local[2]")
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert conf["spark.sql.catalog.spark_catalog"] == (
        "org.apache.spark.sql.delta.catalog.DeltaCatalog"
    )
    assert conf[delta.SNAPSHOT_PARTITIONS] == conf["spark.sql.shuffle.partitions"]
    # The spec's own jars are kept, the connector's added after them.
    assert conf["spark.jars"] == f"/opt/x.jar,{tmp_path / 'a.jar'},{tmp_path / 'b.jar'}"


def test_a_job_without_delta_or_without_the_jars_gets_no_delta_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    (tmp_path / "a.jar").write_bytes(b"")
    monkeypatch.setenv(delta.JARS_ENV, str(tmp_path))
    plain = session_conf(spec_from_dict(doc(out={"path": "out"})), "local[2]")
    assert "spark.sql.extensions" not in plain and "spark.jars" not in plain
    # No jars where the job looks: no settings naming classes that are not there; the
    # job then stops with delta.check_connector's message.
    monkeypatch.setenv(delta.JARS_ENV, str(tmp_path / "missing"))
    assert "spark.sql.extensions" not in session_conf(spec_from_dict(doc()), "local[2]")


def test_under_spark_submit_the_jars_come_with_the_submission(tmp_path, monkeypatch):
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "1")
    (tmp_path / "a.jar").write_bytes(b"")
    monkeypatch.setenv(delta.JARS_ENV, str(tmp_path))
    conf = session_conf(spec_from_dict(doc()), None)
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert "spark.jars" not in conf  # spark-submit's --jars stay as they are


def test_the_jars_folder_is_keyed_by_the_delta_version(monkeypatch):
    monkeypatch.delenv(delta.JARS_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/cache")
    assert delta.jars_folder() == Path("/cache/spark-vllm/jars/delta-4.4.0")


def test_with_the_connector_in_sparks_own_jars_folder_no_jars_are_added(tmp_path, monkeypatch):
    """The project's images put the connector in pyspark's jars folder: a session started
    there gets Delta's settings and no spark.jars (the folder get-jars.sh fills is absent)."""
    import pyspark

    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    monkeypatch.setenv(delta.JARS_ENV, str(tmp_path / "missing"))
    fake = tmp_path / "pyspark"
    (fake / "jars").mkdir(parents=True)
    monkeypatch.setattr(pyspark, "__file__", str(fake / "__init__.py"))
    assert not delta.on_spark_classpath()
    assert "spark.sql.extensions" not in session_conf(spec_from_dict(doc()), "local[2]")
    (fake / "jars" / f"delta-spark_2.13-{delta.DELTA_VERSION}.jar").write_bytes(b"")
    assert delta.on_spark_classpath()
    conf = session_conf(spec_from_dict(doc()), "local[2]")
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert "spark.jars" not in conf


# The commit's retry on Delta's conflicts, with the table write itself replaced: a real
# concurrent MERGE is in tests/integration/test_delta.py.

CONFLICT = (
    "An error occurred while calling o93.sql.\n: io.delta.exceptions.ConcurrentAppendException:"
    " [DELTA_CONCURRENT_APPEND.WITHOUT_HINT] Transaction conflict detected."
)


def committing(monkeypatch: pytest.MonkeyPatch, failures: list[Exception]) -> list[str]:
    """Stage something, make each attempt raise the next of `failures` (then succeed);
    returns the attempts' run ids and what was removed from staging."""
    calls: list[str] = []
    monkeypatch.setattr(delta.results, "entries", lambda spark, path: ["part-0.parquet"])
    monkeypatch.setattr(delta.results, "remove", lambda spark, path: calls.append(f"rm {path}"))
    monkeypatch.setattr(delta.time, "sleep", lambda s: None)

    def attempt(spark, path, staged, run_id, overwrite, upsert_on):  # type: ignore[no-untyped-def]
        calls.append(run_id)
        if failures:
            raise failures.pop(0)

    monkeypatch.setattr(delta, "_commit_staged", attempt)
    return calls


def test_a_commit_refused_for_a_concurrent_one_is_tried_again(monkeypatch):
    calls = committing(monkeypatch, [RuntimeError(CONFLICT)] * 2)
    delta.commit(None, "/lake/t", "R1", overwrite=False, upsert_on="id")  # type: ignore[arg-type]
    assert calls == ["R1", "R1", "R1", "rm /lake/t/_spark_vllm/staging/run=R1"]


def test_a_commit_refused_on_every_attempt_says_so_and_keeps_the_rows_staged(monkeypatch):
    calls = committing(monkeypatch, [RuntimeError(CONFLICT)] * delta.COMMIT_ATTEMPTS)
    with pytest.raises(RuntimeError) as info:
        delta.commit(None, "/lake/t", "R1", overwrite=False)  # type: ignore[arg-type]
    assert str(info.value) == (
        "output.path /lake/t: run R1's Delta commit met a concurrent writer's commit 5 times "
        "in a row (Delta's ConcurrentAppendException); its rows stay staged in "
        "/lake/t/_spark_vllm/staging/run=R1, and the next run commits them first"
    )
    assert calls == ["R1"] * 5  # nothing removed from staging


def test_any_other_commit_error_is_not_tried_again(monkeypatch):
    calls = committing(monkeypatch, [RuntimeError("[DELTA_FAILED_TO_MERGE_FIELDS] no")])
    with pytest.raises(RuntimeError, match="DELTA_FAILED_TO_MERGE_FIELDS"):
        delta.commit(None, "/lake/t", "R1", overwrite=False)  # type: ignore[arg-type]
    assert calls == ["R1"]


@pytest.mark.parametrize(
    ("text", "name"),
    [
        (CONFLICT, "ConcurrentAppendException"),
        ("[DELTA_CONCURRENT_DELETE_READ] a file was deleted", "ConcurrentDeleteReadException"),
        ("io.delta.exceptions.MetadataChangedException: schema", "MetadataChangedException"),
        ("[DELTA_PROTOCOL_CHANGED] upgraded", "ProtocolChangedException"),
        ("java.io.IOException: disk full", None),
    ],
)
def test_conflicts_are_known_by_class_or_error_class(text, name):
    assert delta.conflict_of(RuntimeError(text)) == name
