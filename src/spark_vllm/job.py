"""The driver side of a job: read, give every row an id, run the tasks, write, summarize."""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from spark_vllm import inputs, jdbc, openai_batch, results, structured
from spark_vllm.fingerprint import Fingerprint, RunRecord, changes, fingerprint, matching_runs
from spark_vllm.retry import RetryPolicy
from spark_vllm.runner import TaskConfig, run_partition
from spark_vllm.spec import LOGPROBS_COLUMN, JobSpec, SpecError

RESULT_FIELDS = [
    T.StructField("response", T.StringType()),
    T.StructField("finish_reason", T.StringType()),
    T.StructField("prompt_tokens", T.IntegerType()),
    T.StructField("completion_tokens", T.IntegerType()),
    T.StructField("latency_ms", T.DoubleType()),
    T.StructField("attempts", T.IntegerType()),
    T.StructField("error", T.StringType()),
]
EMBEDDING_RESULT_FIELDS = [
    T.StructField("embedding", T.ArrayType(T.FloatType())),
    *(f for f in RESULT_FIELDS if f.name in ("latency_ms", "attempts", "error")),
]


_TOKEN = [T.StructField("token", T.StringType()), T.StructField("logprob", T.DoubleType())]
# sampling.logprobs: each answer token, its log-probability and the top alternatives.
LOGPROBS_FIELD = T.StructField(
    LOGPROBS_COLUMN,
    T.ArrayType(
        T.StructType([*_TOKEN, T.StructField("top_logprobs", T.ArrayType(T.StructType(_TOKEN)))])
    ),
)


def result_fields(task: str) -> list[T.StructField]:
    """The typed columns of `spec.result_columns(task)`."""
    return EMBEDDING_RESULT_FIELDS if task == "embedding" else RESULT_FIELDS


# Length of the hex digest kept for a derived id: 128 bits, collisions negligible.
DERIVED_ID_HEX = 32


@dataclass
class Summary:
    rows: int
    succeeded: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    wall_s: float
    output: str
    errors: list[tuple[str, int]] = field(default_factory=list)
    skipped: int = 0
    run_id: str = ""
    output_ids: int = 0
    output_failed: int = 0
    tokens: bool = True  # False for task embedding: vLLM reports no tokens per row
    note: str = ""  # why nothing was sent, when nothing was

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def output_tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def render(self) -> str:
        lines = [
            f"spark-vllm summary (run {self.run_id})",
            f"  rows          {self.rows}",
            f"  succeeded     {self.succeeded}",
            f"  failed        {self.failed}",
        ]
        if self.note:
            lines.insert(1, f"  {self.note}")
        if self.tokens:
            lines += [
                f"  tokens in     {self.prompt_tokens}",
                f"  tokens out    {self.completion_tokens}",
            ]
        lines += [
            f"  wall time     {self.wall_s:.1f} s",
            f"  rows/s        {self.rows_per_s:.2f}",
        ]
        if self.tokens:
            lines.append(f"  out tokens/s  {self.output_tokens_per_s:.1f}")
        lines += [
            f"  skipped       {self.skipped} (succeeded in earlier runs)",
            f"  output        {self.output}: {self.output_ids} ids, {self.output_failed} failed",
        ]
        if self.errors:
            lines.append("  most common errors:")
            lines += [f"    {count} x {message}" for message, count in self.errors]
        return "\n".join(lines)


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def derived_id(columns: list[str]) -> Column:
    """A stable id from the row's content: SHA-256 of its JSON, columns sorted by name.

    The same row gives the same id on every run and under any partitioning.
    """
    row_json = F.to_json(F.struct(*[F.col(_quote(c)) for c in sorted(columns)]))
    return F.substring(F.sha2(row_json, 256), 1, DERIVED_ID_HEX)


def with_ids(df: DataFrame, spec: JobSpec) -> DataFrame:
    """Add a derived id, or check the input's id column holds unique, non-null ids.

    Identical rows get the same digest; the second and later copies get `-2`, `-3`, …
    appended, so each input row keeps its own output row and the ids stay stable
    (copies are interchangeable, so which copy gets which suffix does not matter).
    An OpenAI batch file's custom_id was checked as the file was read.
    """
    if spec.input.format == "openai-batch":
        return df
    if spec.input.id_column is None:
        digest = "__spark_vllm_digest"
        df = df.withColumn(digest, derived_id(df.columns))
        nth = F.row_number().over(Window.partitionBy(digest).orderBy(digest))
        return df.withColumn(
            "id",
            F.when(nth == 1, F.col(digest)).otherwise(F.concat_ws("-", F.col(digest), nth)),
        ).drop(digest)
    id_col = spec.input.id_column
    bad = (
        df.groupBy(F.col(_quote(id_col)).alias("id"))
        .count()
        .where(F.col("id").isNull() | (F.col("count") > 1))
        .limit(5)
        .collect()
    )
    if bad:
        examples = ", ".join(f"{r['id']!r} ({r['count']} rows)" for r in bad)
        raise SpecError(
            f"input.id_column: column {id_col!r} must hold a unique, non-null id per row; "
            f"found {examples}. Fix the input, or unset input.id_column to derive ids"
        )
    return df


def task_slots(spark: SparkSession) -> int:
    """How many tasks run at once on one executor (they share its sidecar)."""
    sc = spark.sparkContext
    master = sc.master or ""
    if master.startswith("local"):
        match = re.match(r"local\[(\*|\d+)", master)
        if not match:
            return 1
        if match.group(1) == "*":
            return os.cpu_count() or 1
        return int(match.group(1))
    conf = sc.getConf()
    cores = int(conf.get("spark.executor.cores", "1"))
    task_cpus = int(conf.get("spark.task.cpus", "1"))
    return max(1, cores // task_cpus)


def per_task_window(per_executor: int, slots: int) -> int:
    return max(1, math.ceil(per_executor / slots))


# Partitions per task slot on a cluster when the spec does not say: two waves of tasks,
# so executors that finish early (or join late) take work from the rest.
PARTITIONS_PER_SLOT = 2


def default_partitions(spark: SparkSession) -> int:
    """Tasks to split the input into when `partitions` is unset.

    Local mode: one per task slot (they share one sidecar, and the adaptive window lets
    the tasks still running take up a finished one's share). A cluster: two per task
    slot of the most executors the job may get (dynamic allocation's maxExecutors, else
    spark.executor.instances), so added executors find work waiting.
    """
    sc = spark.sparkContext
    slots = task_slots(spark)
    if (sc.master or "").startswith("local"):
        return slots
    conf = sc.getConf()
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        executors = int(conf.get("spark.dynamicAllocation.maxExecutors", "0") or 0)
    else:
        executors = int(conf.get("spark.executor.instances", "0") or 0)
    return max(sc.defaultParallelism, executors * slots) * PARTITIONS_PER_SLOT


def max_tokens_hint(df: DataFrame, spec: JobSpec) -> Column | None:
    """Each row's max_tokens (its sampling column's, else the spec's), or None if unknown."""
    default = spec.sampling.max_tokens
    column = spec.sampling_column
    per_row: Column | None = None
    if column is not None:
        kind = df.schema[column].dataType
        col = F.col(_quote(column))
        if isinstance(kind, T.StructType) and "max_tokens" in kind.fieldNames():
            per_row = col.getField("max_tokens")
        elif isinstance(kind, T.MapType) and isinstance(kind.keyType, T.StringType):
            per_row = col.getItem("max_tokens")
        elif isinstance(kind, T.StringType):
            per_row = F.get_json_object(col, "$.max_tokens")
    if per_row is None:
        return None
    return F.coalesce(per_row.cast("long"), F.lit(default).cast("long"))


def arrange(df: DataFrame, spec: JobSpec, spark: SparkSession) -> DataFrame:
    """Split the rows into tasks and order each task's rows (see `concurrency.order`).

    Rows are dealt round-robin, so every partition gets a like mix; with a per-row
    max_tokens, each partition then sends its longest generations first and ends on its
    shortest, so a task's last requests finish close together.
    """
    partitions = spec.partitions or default_partitions(spark)
    df = df.repartition(partitions)
    hint = max_tokens_hint(df, spec) if spec.concurrency.order == "longest_first" else None
    if hint is not None:
        df = df.sortWithinPartitions(hint.desc_nulls_first())
    return df


# structured_output, resolved: the answer's columns and the JSON schema vLLM decodes to.
Answer = tuple[T.StructType, dict[str, Any]]


def answer_shape(spec: JobSpec) -> Answer | None:
    """structured_output as (the answer's columns, the JSON schema vLLM decodes to).

    A DDL is parsed by the active SparkContext's JVM."""
    so = spec.structured_output
    if so is None:
        return None
    try:
        if so.json_schema is not None:
            return structured.check_schema(so.json_schema), so.json_schema
        assert so.ddl is not None
        try:
            kind = T._parse_datatype_string(so.ddl)
        except Exception as exc:  # Spark's parser: many exception types
            raise structured.SchemaError(f"does not parse as a Spark DDL struct: {exc}") from None
        if not isinstance(kind, T.StructType):
            raise structured.SchemaError(f"{so.ddl!r} is not a struct of named fields")
        return kind, structured.json_schema(kind)
    except structured.SchemaError as exc:
        key = "json_schema" if so.json_schema is not None else "ddl"
        raise SpecError(f"structured_output.{key}: {exc}") from None


def output_schema(df: DataFrame, spec: JobSpec, answer: T.StructType | None = None) -> T.StructType:
    """The rows the tasks hand to the writer (openai-batch: the finished lines)."""
    if spec.input.format == "openai-batch":
        return openai_batch.LINE_SCHEMA
    fields = [df.schema[spec.id_column()]]
    fields += [df.schema[c] for c in spec.output.keep_columns if c != spec.id_column()]
    fields += result_fields(spec.task)
    if spec.wants_logprobs():
        fields.append(LOGPROBS_FIELD)
    if answer is not None:
        # Spark matches column names regardless of case: `Error` would shadow `error`.
        taken = {f.name.lower() for f in fields}
        clash = [f.name for f in answer if f.name.lower() in taken]
        if clash:
            raise SpecError(
                f"structured_output: field(s) {clash} would clash with output columns "
                f"{sorted(f.name for f in fields)}; rename them"
            )
        fields += answer.fields
    return T.StructType(fields)


def task_config(
    spec: JobSpec,
    schema: T.StructType,
    slots: int,
    answer: Answer | None = None,
) -> TaskConfig:
    conc = spec.concurrency
    embedding = spec.task == "embedding"
    prompt = spec.prompt
    sampling = spec.embedding.request_fields() if embedding else spec.sampling.request_fields()
    if answer is not None:
        assert spec.structured_output is not None
        sampling["response_format"] = structured.response_format(
            answer[1], spec.structured_output.name
        )
    return TaskConfig(
        base_url=spec.endpoint.base_url,
        model=spec.endpoint.model,
        task="openai-batch" if prompt is None else spec.task,
        sampling={} if prompt is None else sampling,
        template=prompt.template if prompt else None,
        system=prompt.system if prompt else None,
        prompt_column=prompt.column if prompt else None,
        policy=RetryPolicy(
            attempts=spec.retries.attempts,
            initial_s=spec.retries.backoff_initial_s,
            max_s=spec.retries.backoff_max_s,
            multiplier=spec.retries.backoff_multiplier,
        ),
        window=per_task_window(conc.per_executor, slots),
        adaptive=conc.mode == "adaptive",
        max_window=conc.max_per_executor,
        metrics_interval_s=conc.metrics_interval_s,
        sampling_column=spec.sampling_column,
        answer_schema=answer[1] if answer is not None else None,
        answer_fields=tuple(answer[0].fieldNames()) if answer is not None else (),
        batch_size=spec.embedding.batch_size if embedding else 1,
        ready_timeout_s=spec.timeouts.ready_s,
        request_timeout_s=spec.timeouts.request_s,
        connect_timeout_s=spec.timeouts.connect_s,
        on_error=spec.on_error,
        id_column=spec.id_column(),
        keep_columns=tuple(c for c in spec.output.keep_columns if c != spec.id_column()),
        output_schema=to_arrow_schema(schema),
        api_key_env=spec.endpoint.api_key_env,
        outage_timeout_s=spec.timeouts.outage_s,
        seed_auto=not embedding and spec.sampling.seed == "auto",
        max_error_rate=spec.max_error_rate,
        error_rate_min_rows=spec.error_rate_min_rows,
        logprobs=spec.wants_logprobs(),
    )


def out_lines(spec: JobSpec) -> bool:
    """Whether the output is OpenAI batch lines rather than result columns."""
    return spec.output.format == "openai-batch"


def stored_columns(spec: JobSpec) -> tuple[Column, Column, Column]:
    """(error text, prompt tokens, completion tokens) of a row of the output."""
    if out_lines(spec):
        body = F.col("response.body")
        return (
            F.col("error.message"),
            F.get_json_object(body, "$.usage.prompt_tokens").cast("long"),
            F.get_json_object(body, "$.usage.completion_tokens").cast("long"),
        )
    if spec.task == "embedding":
        return F.col("error"), F.lit(0), F.lit(0)
    return F.col("error"), F.col("prompt_tokens"), F.col("completion_tokens")


def summarize(
    spark: SparkSession, spec: JobSpec, job: Plan, wall_s: float, skipped: int
) -> Summary:
    """Totals of this run's committed rows, and of the output as a whole.

    One pass over this run's output; the most common errors only when some row failed;
    the whole output's latest-attempt view only when earlier runs are there.
    """
    out = spec.output
    summary = Summary(0, 0, 0, 0, 0, wall_s, out.where(), skipped=skipped, run_id=job.run_id)
    summary.tokens = out_lines(spec) or spec.task != "embedding"
    error, tokens_in, tokens_out = stored_columns(spec)
    this_run = None
    if job.result is None:
        summary.note = job.note
    elif out.jdbc is not None:
        this_run = jdbc.read_table(spark, out.jdbc).where(F.col(jdbc.RUN_COLUMN) == job.run_id)
    elif results.entries(spark, job.run_path):
        this_run = results.read_attempts(spark, job.run_path, out.format, job.schema)
    if this_run is not None:
        totals = this_run.agg(
            F.count(F.lit(1)).alias("rows"),
            F.count(F.when(F.col("error").isNull(), 1)).alias("ok"),
            F.coalesce(F.sum(tokens_in), F.lit(0)).alias("tin"),
            F.coalesce(F.sum(tokens_out), F.lit(0)).alias("tout"),
        ).first()
        assert totals is not None
        summary.rows = totals["rows"]
        summary.succeeded = totals["ok"]
        summary.failed = totals["rows"] - totals["ok"]
        summary.prompt_tokens = int(totals["tin"])
        summary.completion_tokens = int(totals["tout"])
        if summary.failed:
            errors = (
                this_run.where(F.col("error").isNotNull())
                .groupBy(F.substring(error, 1, 300).alias("e"))
                .count()
                .orderBy(F.desc("count"))
                .limit(5)
                .collect()
            )
            summary.errors = [(r["e"], r["count"]) for r in errors]
    if job.earlier_runs:
        view = results.latest(output_rows(spark, spec, job.schema), spec.id_column())
        overall = view.agg(
            F.count(F.lit(1)).alias("ids"),
            F.count(F.when(F.col("error").isNotNull(), 1)).alias("bad"),
        ).first()
        assert overall is not None
        summary.output_ids, summary.output_failed = overall["ids"], overall["bad"]
    else:
        summary.output_ids, summary.output_failed = summary.rows, summary.failed
    return summary


def output_rows(spark: SparkSession, spec: JobSpec, stored: T.StructType | None) -> DataFrame:
    """Every row at the output, of every run (with the `run` column)."""
    out = spec.output
    if out.jdbc is not None:
        return jdbc.read_table(spark, out.jdbc)
    assert out.path is not None
    return results.read_attempts(spark, out.path, out.format, stored)


def prepare_output(spark: SparkSession, spec: JobSpec) -> bool:
    """Make the output ready for this run; True when it holds earlier runs to resume from.

    Changes the output on purpose: `output.mode: overwrite` deletes the path, and the
    staging tables a JDBC driver left behind (it died) are moved into the target, or
    dropped under `write_mode: overwrite`. Refuses an existing output under
    `output.mode: error`, and a path that holds something other than runs."""
    out = spec.output
    if out.jdbc is not None:
        jdbc.recover(spark, out.jdbc, spec.id_column())
        if not jdbc.Database(spark, out.jdbc, "output.jdbc").has_table(out.jdbc.table):
            return False
        if out.mode == "error":
            raise SpecError(
                f"output.jdbc.table {out.jdbc.table!r} exists and output.mode is 'error'; "
                "use mode resume, or another table"
            )
        return out.jdbc.write_mode != "overwrite"
    assert out.path is not None
    if out.mode == "overwrite":
        results.delete(spark, out.path)
        return False
    if results.exists(spark, out.path) and out.mode == "error":
        raise SpecError(
            f"output.path {out.path!r} exists and output.mode is 'error'; "
            "use mode resume or overwrite, or another path"
        )
    try:
        return results.holds_runs(spark, out.path)
    except ValueError as exc:
        raise SpecError(str(exc)) from None


def run_records(spark: SparkSession, spec: JobSpec) -> dict[str, RunRecord]:
    """What each earlier run at the output recorded (its fingerprint), by run id."""
    out = spec.output
    if out.jdbc is not None:
        return jdbc.read_records(spark, out.jdbc)
    assert out.path is not None
    return results.read_records(spark, out.path)


def write_record(spark: SparkSession, spec: JobSpec, record: RunRecord) -> None:
    out = spec.output
    if out.jdbc is not None:
        jdbc.write_record(spark, out.jdbc, record)
    else:
        assert out.path is not None
        results.write_record(spark, out.path, record)


def _changed_settings(
    spec: JobSpec, record: RunRecord | None, answers: int, current: Fingerprint
) -> str:
    out = spec.output
    if out.jdbc is not None:
        where = f"output.jdbc.table {out.jdbc.table!r}"
        ways = "output.jdbc.write_mode: overwrite, or another output.jdbc.table"
    else:
        where = f"output.path {out.path!r}"
        ways = "output.mode: overwrite, or another output.path"
    if record is None or record.fingerprint is None:
        what = (
            f"was written by a run that recorded no settings ({record.run if record else '?'}; "
            "an older spark-vllm), so they may not be this job's answers"
        )
        diff = ""
    else:
        what = f"came from run {record.run}, made with other settings:"
        diff = "".join(f"\n  {line}" for line in changes(record.fingerprint, current))
    return (
        f"{where} holds {answers} answer(s) that resume would count as done, but the latest "
        f"{what}{diff}\nTo start afresh: {ways}. To keep those answers and resume anyway: "
        "output.on_change: resume."
    )


def earlier_successes(
    spark: SparkSession, spec: JobSpec, stored: T.StructType | None, current: Fingerprint
) -> tuple[DataFrame, list[str]]:
    """(the ids whose latest row at the output succeeded, the earlier runs this run
    adopts). A success counts only when the run that made it had these settings (or
    was adopted by one that had): otherwise SpecError naming what changed, unless
    `output.on_change` is resume, and then its run is adopted."""
    records = run_records(spark, spec)
    same = matching_runs(records, current)
    successes = results.latest(output_rows(spark, spec, stored), spec.id_column()).where(
        F.col("error").isNull()
    )
    stale = (
        successes.where(~F.col(results.RUN_COLUMN).isin(sorted(same)))
        .groupBy(results.RUN_COLUMN)
        .count()
        .collect()
    )
    adopted: list[str] = []
    if stale:
        if spec.output.on_change == "refuse":
            latest = max(stale, key=lambda r: r[results.RUN_COLUMN])[results.RUN_COLUMN]
            record = records.get(latest, RunRecord(latest, None))
            answers = sum(r["count"] for r in stale)
            raise SpecError(_changed_settings(spec, record, answers, current))
        adopted = sorted(r[results.RUN_COLUMN] for r in stale)
    return successes.select(_quote(spec.id_column())), adopted


@dataclass
class Plan:
    """A job ready to run: the lazy result (None: nothing to send, and why), where it goes,
    what resume skipped, and the record the run leaves before it sends anything."""

    result: DataFrame | None
    schema: T.StructType | None
    run_id: str
    run_path: str
    skipped: DataFrame | None
    record: RunRecord
    started: float
    earlier_runs: bool = False
    note: str = ""


def plan(spark: SparkSession, spec: JobSpec) -> Plan:
    """Read, check and prepare; spec errors surface here, before any request.

    Nothing is sent when the input is empty or every id already succeeded: then
    `result` is None and `note` says why."""
    started = time.monotonic()
    run_id = results.new_run_id()
    current = fingerprint(spec)
    out = spec.output
    run_path = results.run_path(out.path, run_id) if out.path else ""
    df = inputs.read_input(spark, spec)
    earlier = prepare_output(spark, spec)
    record = RunRecord(run_id, current)
    if df is None:
        return Plan(
            None, None, run_id, run_path, None, record, started, earlier, "the input is empty"
        )
    spec.check_columns(df.columns)
    df = with_ids(df, spec)
    needed = dict.fromkeys(
        [
            spec.id_column(),
            *spec.prompt_columns(),
            *(["method", "url", "body"] if spec.input.format == "openai-batch" else []),
            *([spec.sampling_column] if spec.sampling_column else []),
            *spec.output.keep_columns,
        ]
    )
    df = df.select(*[_quote(c) for c in needed])
    answer = answer_shape(spec)
    schema = output_schema(df, spec, answer[0] if answer else None)
    # The output rows as written and read back (openai-batch: lines, parsed again).
    stored = openai_batch.STORED_SCHEMA if out_lines(spec) else schema
    skipped = None
    if earlier:
        done, record.adopted = earlier_successes(spark, spec, stored, current)
        skipped = df.join(done, spec.id_column(), "left_semi")
        df = df.join(done, spec.id_column(), "left_anti")
    if df.isEmpty():
        note = (
            "nothing to send: every id succeeded in earlier runs"
            if earlier
            else ("the input is empty")
        )
        return Plan(None, stored, run_id, run_path, skipped, record, started, earlier, note)
    df = arrange(df, spec, spark)
    cfg = task_config(spec, schema, task_slots(spark), answer)
    return Plan(
        result=df.mapInArrow(partial(run_partition, cfg=cfg), schema),
        schema=stored,
        run_id=run_id,
        run_path=run_path,
        skipped=skipped,
        record=record,
        started=started,
        earlier_runs=earlier,
    )


def write_to_database(spark: SparkSession, spec: JobSpec, job: Plan) -> None:
    """format jdbc: the tasks fill a staging table, then one transaction moves its rows to
    the target. Rows staged before a task failed for good are moved too (resume)."""
    out = spec.output.jdbc
    assert out is not None and job.result is not None
    staging = jdbc.staging_table(out, job.run_id)
    try:
        jdbc.write_staging(job.result, out, job.run_id)
    finally:
        if jdbc.Database(spark, out, "output.jdbc").has_table(staging):
            jdbc.move_rows(spark, out, staging, spec.id_column())


class JobFailed(RuntimeError):
    """The job stopped early; `summary` covers the rows committed before it stopped."""

    def __init__(self, cause: BaseException, summary: Summary) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.summary = summary


class JobInterrupted(RuntimeError):
    """Ctrl-C stopped the job; `summary` covers the rows committed before it stopped."""

    def __init__(self, summary: Summary) -> None:
        super().__init__("interrupted")
        self.summary = summary


def execute(spark: SparkSession, spec: JobSpec, job: Plan) -> Summary:
    """Send what `plan` found to send, write it, and return the summary read back from
    the output. The run's record is written first, so even a run that dies midway
    leaves the settings its answers were made with."""
    out = spec.output
    skipped = job.skipped.count() if job.skipped is not None else 0
    failure: BaseException | None = None
    if job.result is not None or job.record.adopted:
        # Adopting earlier answers (on_change: resume) is recorded even with nothing to
        # send, so the next run with these settings counts them without being told again.
        write_record(spark, spec, job.record)
    if job.result is not None:
        try:
            if out.jdbc is not None:
                write_to_database(spark, spec, job)
            else:
                results.write_run(job.result, job.run_path, out.format)
        except Exception as exc:  # a task failed for good: report what was committed
            failure = exc
        except KeyboardInterrupt as exc:  # PySpark has cancelled the running Spark jobs
            failure = exc
    wall = time.monotonic() - job.started
    summary = summarize(spark, spec, job, wall, skipped)
    if isinstance(failure, KeyboardInterrupt):
        raise JobInterrupted(summary) from None
    if failure is not None:
        raise JobFailed(failure, summary) from failure
    return summary


def run_job(spark: SparkSession, spec: JobSpec) -> Summary:
    """Run the job end to end and return its summary, read back from the output."""
    return execute(spark, spec, plan(spark, spec))
