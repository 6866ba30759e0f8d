"""The output store: every run appends a `run=<id>` folder; readers keep the latest attempt.

Layout of `output.path`:

    output.path/run=20261122T070501123456Z/part-00000-….parquet   (one folder per run)
    output.path/_spark_vllm/runs/20261122T070501123456Z.json       (its fingerprint)
    output.path/_SPARK_VLLM_OUTPUT                                  (the marker, see below)

Every run that records itself leaves the marker file `_SPARK_VLLM_OUTPUT` at the top of
`output.path`; output.mode overwrite deletes only a path that is absent, empty or holds
that marker, so a typo (or a posted spec) cannot wipe a bucket's root or a folder of
other data.

A run's rows are committed task by task through Spark's commit protocol (Hadoop's file
output committer, algorithm 2): a task's files appear whole when it commits, only one
attempt of a task commits (retries and speculative copies never both land), and tasks
committed before a crash stay for the next run to resume from. Run ids sort by time,
so "latest attempt" is "greatest run id"; within one run a success wins.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_vllm.storage.fingerprint import RunRecord

RUN_COLUMN = "run"
# Hadoop's committer setting, passed as a write option: commit each task's files into
# the destination when the task commits, not all at job end.
COMMIT_OPTIONS = {"mapreduce.fileoutputcommitter.algorithm.version": "2"}


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def run_path(path: str, run_id: str) -> str:
    return f"{path.rstrip('/')}/{RUN_COLUMN}={run_id}"


def _fs(spark: SparkSession, path: str):  # type: ignore[no-untyped-def]
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    jpath = jvm.org.apache.hadoop.fs.Path(path)
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    return jpath.getFileSystem(conf), jpath


def exists(spark: SparkSession, path: str) -> bool:
    fs, jpath = _fs(spark, path)
    return bool(fs.exists(jpath))


def matches(spark: SparkSession, path: str) -> bool | None:
    """Whether anything is at `path`, a glob included; None when the file system cannot
    be asked (no such scheme, no credentials: Spark's reader will say what is wrong)."""
    from py4j.protocol import Py4JJavaError

    try:
        fs, jpath = _fs(spark, path)
        found = fs.globStatus(jpath)
    except Py4JJavaError:
        return None
    return found is not None and len(found) > 0


# The file every run leaves at the top of its output: what overwrite looks for.
MARKER = "_SPARK_VLLM_OUTPUT"
MARKER_TEXT = (
    "This folder is the output of a spark-vllm job. output.mode overwrite deletes a\n"
    "non-empty output.path only when this file is at its top.\n"
)


class NotOurOutput(ValueError):
    """output.mode overwrite was asked to delete a path that no spark-vllm job wrote."""


def check_overwritable(spark: SparkSession, path: str) -> None:
    """Raise NotOurOutput unless `path` is absent, an empty folder, or holds the marker."""
    fs, jpath = _fs(spark, path)
    if not fs.exists(jpath):
        return
    if fs.isDirectory(jpath):
        names = {str(status.getPath().getName()) for status in fs.listStatus(jpath)}
        if not names or MARKER in names:
            return
    raise NotOurOutput(
        f"output.path {path!r} is not empty and has no {MARKER} file at its top, so no "
        "spark-vllm job wrote it; output.mode overwrite deletes only a spark-vllm output. "
        "Choose an empty or new path, or delete this one yourself (an output of a "
        f"spark-vllm older than the marker: add an empty {MARKER} file there)"
    )


def delete(spark: SparkSession, path: str) -> None:
    """Delete the output at `path`, runs and records: only one a job wrote (see
    check_overwritable, asked again here right before deleting)."""
    check_overwritable(spark, path)
    fs, jpath = _fs(spark, path)
    fs.delete(jpath, True)


def remove(spark: SparkSession, path: str) -> None:
    """Delete `path` and what is under it (no check: for the job's own folders)."""
    fs, jpath = _fs(spark, path)
    fs.delete(jpath, True)


def write_marker(spark: SparkSession, path: str) -> None:
    """Leave the marker at the top of `path` (once: an existing one is kept)."""
    fs, jpath = _fs(spark, f"{path.rstrip('/')}/{MARKER}")
    if not fs.exists(jpath):
        write_text(spark, f"{path.rstrip('/')}/{MARKER}", MARKER_TEXT)


def entries(spark: SparkSession, path: str) -> list[str]:
    """Names directly under `path`, hidden ones (_SUCCESS, _temporary, .crc) left out."""
    fs, jpath = _fs(spark, path)
    if not fs.exists(jpath):
        return []
    names = [str(status.getPath().getName()) for status in fs.listStatus(jpath)]
    return [n for n in names if not n.startswith(("_", "."))]


# Where each run's record and summary go (Spark and Hadoop skip names that start with `_`).
RECORDS = "_spark_vllm/runs"
SUMMARIES = "_spark_vllm/summaries"


def write_text(spark: SparkSession, path: str, text: str) -> None:
    """Write `text` (UTF-8) to the file `path`, replacing it, through Hadoop's file system."""
    fs, jpath = _fs(spark, path)
    stream = fs.create(jpath, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def read_texts(spark: SparkSession, folder: str, suffix: str) -> dict[str, str]:
    """The text of each file under `folder` whose name ends with `suffix`, by its name
    without the suffix (none when `folder` is missing)."""
    fs, _ = _fs(spark, folder)
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    found = {}
    for name in entries(spark, folder):
        if not name.endswith(suffix):
            continue
        stream = fs.open(jvm.org.apache.hadoop.fs.Path(f"{folder}/{name}"))
        try:
            found[name.removesuffix(suffix)] = str(
                jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
            )
        finally:
            stream.close()
    return found


def write_record(spark: SparkSession, path: str, record: RunRecord) -> None:
    """Record a run's fingerprint under `path` (before the run writes any row), and leave
    the marker that makes `path` a spark-vllm output."""
    write_marker(spark, path)
    write_text(spark, f"{path.rstrip('/')}/{RECORDS}/{record.run}.json", record.to_json())


def read_records(spark: SparkSession, path: str) -> dict[str, RunRecord]:
    """The records of the runs under `path`, by run id."""
    texts = read_texts(spark, f"{path.rstrip('/')}/{RECORDS}", ".json")
    return {run: RunRecord.from_json(run, text) for run, text in texts.items()}


def write_summary(spark: SparkSession, path: str, run_id: str, text: str) -> None:
    """Leave a run's summary (its JSON document) under `path`."""
    write_text(spark, f"{path.rstrip('/')}/{SUMMARIES}/{run_id}.json", text)


def read_summaries(spark: SparkSession, path: str) -> dict[str, str]:
    """The JSON summaries of the runs under `path`, by run id."""
    return read_texts(spark, f"{path.rstrip('/')}/{SUMMARIES}", ".json")


def local_summaries(path: str) -> dict[str, str] | None:
    """The JSON summaries of the runs under `path` read without Spark, by run id, when
    `path` is on this machine's file system (a plain path or file://); None when it is
    not (s3a://, hdfs://: Spark's file systems read it)."""
    parsed = urlparse(path)
    if parsed.scheme not in ("", "file"):
        return None
    folder = Path(parsed.path if parsed.scheme else path) / SUMMARIES
    if not folder.is_dir():
        return {}
    return {
        f.name.removesuffix(".json"): f.read_text("utf-8")
        for f in sorted(folder.iterdir())
        if f.name.endswith(".json") and not f.name.startswith(("_", "."))
    }


def holds_runs(spark: SparkSession, path: str) -> bool:
    """Whether `path` holds earlier runs; raises ValueError when it holds something else."""
    names = entries(spark, path)
    foreign = [n for n in names if not n.startswith(RUN_COLUMN + "=")]
    if foreign:
        raise ValueError(
            f"output.path {path!r} exists and holds {sorted(foreign)[:5]}, which are not "
            "spark-vllm runs; choose an empty or new path, or set output.mode: overwrite"
        )
    return bool(names)


def write_run(df: DataFrame, path: str, fmt: str) -> None:
    """Write one run; format openai-batch takes the finished lines of a `line` column."""
    if fmt == "openai-batch":
        df = df.select("line")
    writer = df.write.mode("errorifexists").options(**COMMIT_OPTIONS)
    if fmt == "parquet":
        writer.parquet(path)
    elif fmt == "openai-batch":
        writer.text(path)
    else:
        # Every row carries every key, `error: null` included.
        writer.option("ignoreNullFields", "false").json(path)


def read_attempts(
    spark: SparkSession, path: str, fmt: str, schema: T.StructType | None = None
) -> DataFrame:
    """Every row ever written under `path` (all runs), with the `run` column. Format
    openai-batch reads the lines as JSON (give its stored schema to keep bodies as text);
    format delta reads the table's current version (its rows carry the column)."""
    if fmt == "delta":
        return spark.read.format("delta").load(path)
    reader = spark.read
    if schema is not None:
        reader = reader.schema(
            T.StructType([*schema.fields, T.StructField(RUN_COLUMN, T.StringType())])
        )
    return reader.parquet(path) if fmt == "parquet" else reader.json(path)


def latest(attempts: DataFrame, id_column: str) -> DataFrame:
    """One row per id: the latest run's; within a run, a success before a failure."""
    order = Window.partitionBy(F.col(f"`{id_column}`")).orderBy(
        F.desc(RUN_COLUMN), F.col("error").isNotNull()
    )
    return attempts.withColumn("_n", F.row_number().over(order)).where("_n = 1").drop("_n")


def latest_outcome(attempts: DataFrame, id_column: str) -> DataFrame:
    """One row per id, `(id, run, ok)`: the run of its latest attempt, as `latest` picks it,
    and whether it succeeded. An aggregation rather than `latest`'s window: no sort, and
    only those columns are read; what resume and the census need of the output."""
    key = F.col(f"`{id_column}`")
    outcome = F.struct(F.col(RUN_COLUMN).alias("run"), F.col("error").isNull().alias("ok"))
    # Structs compare field by field: the latest run, and within it a success.
    best = attempts.groupBy(key).agg(F.max(outcome).alias("_best"))
    return best.select(key, F.col("_best.run").alias(RUN_COLUMN), F.col("_best.ok").alias("ok"))


def read_results(
    spark: SparkSession, path: str, id_column: str = "id", fmt: str = "parquet"
) -> DataFrame:
    """The job's output as it stands: exactly one row per id, the latest attempt."""
    return latest(read_attempts(spark, path, fmt), id_column)


@contextmanager
def session_settings(spark: SparkSession, conf: dict[str, str]) -> Iterator[None]:
    """`conf` set on the session while the block runs, the settings before restored."""
    before = {key: spark.conf.get(key, None) for key in conf}
    for key, value in conf.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, old in before.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)
