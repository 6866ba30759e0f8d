"""Delta Lake tables: the output written as one Delta commit per run, and read as input.

Layout of `output.path` (a Delta table, path-based):

    output.path/_delta_log/…                                        (the table's log)
    output.path/part-….parquet                                      (its data files)
    output.path/_spark_vllm/staging/run=<id>/part-….parquet         (a run's rows, until committed)
    output.path/_spark_vllm/runs/<id>.json, summaries/<id>.json     (records and summaries)
    output.path/_SPARK_VLLM_OUTPUT                                  (the marker, see results)

The tasks write a run's rows into its staging folder, task by task, through Spark's
commit protocol as the file store does; `finish` then commits them to the table in one
Delta transaction (append; overwrite under output.mode overwrite) with the `run` column,
the run id as the commit's userMetadata (DESCRIBE HISTORY shows which run wrote what)
and as an idempotent-write id (`txnAppId`), so a commit retried after a crash is not
applied twice. Readers of the table see nothing of a run before that commit and all of
it after. A task that failed for good leaves the other tasks' rows staged: they are
committed too, and the next run resumes from them. A driver that died before its
commit leaves the staging folder; the next run commits it first, under the dead run's
id (under output.mode overwrite: deletes it), as JDBC's staging tables are recovered.
A commit Delta refuses because a concurrent writer committed first (two MERGEs of
output.delta.write_mode upsert conflict even on disjoint ids) is tried again on the
table's new version (CONFLICTS, COMMIT_ATTEMPTS).

Records, summaries and staging sit under `_spark_vllm/`, a folder Delta ignores (its
readers and VACUUM skip names starting with `_`), not in table properties: every
property change is a commit of its own, and a record must exist before the table does.
"""

from __future__ import annotations

import glob
import os
import random
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from spark_vllm.errors import SpecError
from spark_vllm.storage import results

# The connector's release for Spark 4.2 (Scala 2.13): scripts/get-jars.sh fetches its jars.
DELTA_VERSION = "4.4.0"
DELTA_ARTIFACT = f"io.delta:delta-spark_2.13:{DELTA_VERSION}"
# The session settings Delta needs: its SQL (DESCRIBE HISTORY, …) and its catalog.
DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
# How many tasks rebuild a table's state from its log (Delta's default: 50).
SNAPSHOT_PARTITIONS = "spark.databricks.delta.snapshotPartitions"
# Where a job looks for the jars when its session is started here (`spark-vllm local`,
# `make run`): this variable, else get-jars.sh's cache folder.
JARS_ENV = "SPARK_VLLM_DELTA_JARS"

STAGING = "_spark_vllm/staging"
# The idempotent-write id of a run's commit: Delta skips a commit it has applied before.
TXN_APP_PREFIX = "spark-vllm/"
# Delta's optimistic concurrency refuses a commit whose reads a concurrent commit changed
# (two MERGEs into one table: each reads the whole table) with one of these
# io.delta.exceptions, each with its error class in brackets; Delta's documentation asks
# to try the operation again, which then reads the table's new version.
CONFLICTS = {
    "ConcurrentAppendException": "[DELTA_CONCURRENT_APPEND",
    "ConcurrentDeleteReadException": "[DELTA_CONCURRENT_DELETE_READ",
    "ConcurrentDeleteDeleteException": "[DELTA_CONCURRENT_DELETE_DELETE",
    "ConcurrentTransactionException": "[DELTA_CONCURRENT_TRANSACTION",
    "MetadataChangedException": "[DELTA_METADATA_CHANGED",
    "ProtocolChangedException": "[DELTA_PROTOCOL_CHANGED",
}
COMMIT_ATTEMPTS = 5


def jars_folder() -> Path:
    """Where get-jars.sh leaves the connector's jars (or the folder JARS_ENV names)."""
    named = os.environ.get(JARS_ENV)
    if named:
        return Path(named)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "spark-vllm" / "jars" / f"delta-{DELTA_VERSION}"


def local_jars() -> list[str]:
    """The connector's jars in jars_folder(), sorted; none when it is missing."""
    return sorted(glob.glob(str(jars_folder() / "*.jar")))


def on_spark_classpath() -> bool:
    """Whether the connector's jar is in the jars folder of the pyspark installed here, as
    in the project's images (scripts/build-image.sh): a session started here then has it
    without spark.jars."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    return bool(glob.glob(str(jars / f"delta-spark_2.13-{DELTA_VERSION}.jar")))


def uses_delta(input_format: str, output_format: str) -> bool:
    return "delta" in (input_format, output_format)


def check_connector(spark: SparkSession, where: str) -> None:
    """SpecError naming `where` (e.g. `output.format 'delta'`) unless Delta's classes load
    in this session and its extension is on."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    try:
        jvm.org.apache.spark.util.Utils.classForName(
            DELTA_CONF["spark.sql.extensions"], True, False
        )
    except Exception:
        raise SpecError(
            f"{where} needs the Delta Lake connector ({DELTA_ARTIFACT} and its runtime "
            f"jars) on Spark's class path, and it is not there. Run scripts/get-jars.sh "
            f"(make jars): `spark-vllm local`/`run` then add {jars_folder()} by itself "
            f"(or the folder ${JARS_ENV} names); elsewhere give those jars to spark.jars "
            "or put them in Spark's jars folder"
        ) from None
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    if DELTA_CONF["spark.sql.extensions"] not in extensions.split(","):
        raise SpecError(
            f"{where} needs spark.sql.extensions to include "
            f"{DELTA_CONF['spark.sql.extensions']} (found {extensions!r}) and "
            f"spark.sql.catalog.spark_catalog={DELTA_CONF['spark.sql.catalog.spark_catalog']}"
            ", set when the session starts"
        )


def is_table(spark: SparkSession, path: str) -> bool:
    return results.exists(spark, f"{path.rstrip('/')}/_delta_log")


def read(spark: SparkSession, path: str, options: dict[str, str]) -> DataFrame:
    """A Delta table at `path` as input; options such as versionAsOf go to the reader."""
    check_connector(spark, "input.format 'delta'")
    if results.exists(spark, path) and not is_table(spark, path):
        raise SpecError(
            f"input.path {path!r} is not a Delta table (no _delta_log folder in it); "
            "choose the table's folder, or the format its files have"
        )
    return spark.read.options(**options).format("delta").load(path)


def read_table(spark: SparkSession, path: str) -> DataFrame:
    return results.read_attempts(spark, path, "delta")


def staging_path(path: str, run_id: str) -> str:
    return results.run_path(f"{path.rstrip('/')}/{STAGING}", run_id)


def staged_runs(spark: SparkSession, path: str) -> list[str]:
    """Run ids whose staged rows were never committed (their driver died), oldest first."""
    prefix = results.RUN_COLUMN + "="
    names = results.entries(spark, f"{path.rstrip('/')}/{STAGING}")
    return sorted(n[len(prefix) :] for n in names if n.startswith(prefix))


def stage(result: DataFrame, path: str, run_id: str) -> None:
    """Write a run's rows into its staging folder, committed task by task."""
    results.write_run(result, staging_path(path, run_id), "parquet")


def commit(
    spark: SparkSession,
    path: str,
    run_id: str,
    overwrite: bool,
    upsert_on: str | None = None,
) -> None:
    """One Delta commit of the rows staged for `run_id` (with the `run` column), then
    the staging folder deleted. Nothing staged: nothing committed. `upsert_on` (the id
    column) makes the commit a MERGE on it into an existing table (see merge). A commit
    refused for a concurrent writer's (Delta's conflict exceptions, CONFLICTS) is tried
    again on the table's new version, up to COMMIT_ATTEMPTS times in all.

    Raises:
        RuntimeError: the commit met a concurrent commit on every attempt; the rows stay
            staged, and the next run commits them first.
    """
    staged = staging_path(path, run_id)
    if not results.entries(spark, staged):
        results.remove(spark, staged)
        return
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            _commit_staged(spark, path, staged, run_id, overwrite, upsert_on)
            break
        except Exception as exc:
            conflict = conflict_of(exc)
            if conflict is None:
                raise
            if attempt == COMMIT_ATTEMPTS:
                raise RuntimeError(
                    f"output.path {path}: run {run_id}'s Delta commit met a concurrent "
                    f"writer's commit {COMMIT_ATTEMPTS} times in a row (Delta's {conflict}); "
                    f"its rows stay staged in {staged}, and the next run commits them first"
                ) from None
            time.sleep(random.uniform(0.5, 1.5) * attempt)  # noqa: S311 - jitter, not secrets
    results.remove(spark, staged)


def conflict_of(exc: BaseException) -> str | None:
    """The name of Delta's concurrent-modification exception that `exc` is (from the
    JVM's class name or its error class), or None for any other error."""
    text = str(exc)
    for name, error_class in CONFLICTS.items():
        if f"io.delta.exceptions.{name}" in text or error_class in text:
            return name
    return None


def _commit_staged(
    spark: SparkSession,
    path: str,
    staged: str,
    run_id: str,
    overwrite: bool,
    upsert_on: str | None,
) -> None:
    """One attempt at the run's commit: a MERGE into the table, or an append/overwrite."""
    rows = spark.read.parquet(staged).withColumn(results.RUN_COLUMN, F.lit(run_id))
    if upsert_on is not None and not overwrite:
        rows = one_per_id(rows, upsert_on)
        if is_table(spark, path):
            merge(spark, path, rows, run_id, upsert_on)
            return
    writer = (
        rows.write.format("delta")
        .mode("overwrite" if overwrite else "append")
        .option("userMetadata", f"spark-vllm run {run_id}")
        .option("txnAppId", TXN_APP_PREFIX + run_id)
        .option("txnVersion", "0")
    )
    # A run may keep other input columns than the table's: new columns are added;
    # an overwrite replaces the table's shape with this run's.
    writer = writer.option("overwriteSchema" if overwrite else "mergeSchema", "true")
    writer.save(path)


def one_per_id(rows: DataFrame, id_column: str) -> DataFrame:
    """One row per id: a success before a failure. A task Spark ran twice may stage an
    id twice, and a MERGE refuses two source rows for one target row."""
    order = Window.partitionBy(F.col(f"`{id_column}`")).orderBy(F.col("error").isNotNull().asc())
    numbered = rows.withColumn("_spark_vllm_n", F.row_number().over(order))
    return numbered.where(F.col("_spark_vllm_n") == 1).drop("_spark_vllm_n")


def merge(spark: SparkSession, path: str, rows: DataFrame, run_id: str, id_column: str) -> None:
    """One MERGE commit of `rows` into the table at `path` on `id_column`: an id the table
    holds gets this run's row, a new id is inserted; new columns are added (schema
    evolution). Applied twice (a driver that died after its commit, its staging committed
    again by the next run), it leaves the same rows. The commit carries the run id as its
    userMetadata, as the appends do."""
    view = f"spark_vllm_staged_{run_id.lower()}"
    rows.createOrReplaceTempView(view)
    target = "`" + path.replace("`", "``") + "`"
    key = "`" + id_column.replace("`", "``") + "`"
    settings = {
        "spark.databricks.delta.commitInfo.userMetadata": f"spark-vllm run {run_id}",
        "spark.databricks.delta.schema.autoMerge.enabled": "true",
    }
    try:
        with results.session_settings(spark, settings):
            spark.sql(
                f"MERGE INTO delta.{target} AS t USING {view} AS s ON t.{key} = s.{key} "
                "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *"
            )
    finally:
        spark.catalog.dropTempView(view)


def drop_staged(spark: SparkSession, path: str) -> None:
    """Delete every run's staged rows (output.mode overwrite starts afresh)."""
    results.remove(spark, f"{path.rstrip('/')}/{STAGING}")
