"""The driver side of a job: plan it (read, ids, resume), run its tasks, summarize.

`plan` reads and checks everything and prepares the output, before any request; it
chooses the request kind (kinds) and the output store (stores) once, and builds the
tasks' configuration. `execute` records the run, sends what is left to send and
summarizes what was committed. `run_job` is both.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass
from functools import partial

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from spark_vllm import inputs, results, structured
from spark_vllm.errors import (
    JobFailed,
    JobInterrupted,
    SchemaError,
    SpecError,
)
from spark_vllm.fingerprint import Fingerprint, RunRecord, changes, fingerprint, matching_runs
from spark_vllm.kinds import (
    Answer,
    BatchLine,
    Chat,
    Completion,
    Embedding,
    RequestKind,
)
from spark_vllm.prompt import PromptBuilder
from spark_vllm.retry import RetryPolicy
from spark_vllm.runner import (
    Concurrency,
    Endpoint,
    ErrorPolicy,
    TaskConfig,
    Timeouts,
    run_partition,
)
from spark_vllm.spec import JobSpec
from spark_vllm.stores import OutputStore, store_for
from spark_vllm.summary import Summary, summarize

__all__ = ["JobFailed", "JobInterrupted", "Plan", "Summary", "execute", "plan", "run_job"]

# Length of the hex digest kept for a derived id: 128 bits, collisions negligible.
DERIVED_ID_HEX = 32


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


def answer_shape(spec: JobSpec) -> Answer | None:
    """structured_output resolved: the answer's columns and the JSON schema vLLM decodes
    to. A DDL is parsed by the active SparkContext's JVM."""
    so = spec.structured_output
    if so is None:
        return None
    try:
        if so.json_schema is not None:
            return Answer(structured.check_schema(so.json_schema), so.json_schema, so.name)
        assert so.ddl is not None
        try:
            kind = T._parse_datatype_string(so.ddl)
        except Exception as exc:  # Spark's parser: many exception types
            raise SchemaError(f"does not parse as a Spark DDL struct: {exc}") from None
        if not isinstance(kind, T.StructType):
            raise SchemaError(f"{so.ddl!r} is not a struct of named fields")
        return Answer(kind, structured.json_schema(kind), so.name)
    except SchemaError as exc:
        key = "json_schema" if so.json_schema is not None else "ddl"
        raise SpecError(f"structured_output.{key}: {exc}") from None


def kind_for(spec: JobSpec) -> RequestKind:
    """The job's kind of request, chosen once here (structured output resolved too)."""
    model = spec.endpoint.model
    if spec.input.format == "openai-batch":
        return BatchLine(model)
    assert spec.prompt is not None
    prompt = spec.prompt
    builder = PromptBuilder(spec.task, prompt.template, prompt.system, prompt.column)
    if spec.task == "embedding":
        options = spec.embedding.request_fields()
        return Embedding(model, builder, options, batch_size=spec.embedding.batch_size)
    generating = Chat if spec.task == "chat" else Completion
    return generating(
        model,
        builder,
        spec.sampling.request_fields(),
        id_column=spec.id_column(),
        sampling_column=spec.sampling_column,
        seed_auto=spec.sampling.seed == "auto",
        logprobs=spec.wants_logprobs(),
        answer=answer_shape(spec),
    )


def output_schema(df: DataFrame, spec: JobSpec, kind: RequestKind) -> T.StructType:
    """The rows the tasks hand to the writer: the id, the kept columns, the kind's."""
    fields = [df.schema[spec.id_column()]]
    fields += [df.schema[c] for c in spec.output.keep_columns if c != spec.id_column()]
    own = kind.result_fields()
    # Spark matches column names regardless of case: `Error` would shadow `error`.
    taken = {f.name.lower() for f in fields}
    answer = (
        kind.answer.columns.fieldNames()
        if isinstance(kind, (Chat, Completion)) and (kind.answer is not None)
        else []
    )
    taken |= {f.name.lower() for f in own if f.name not in answer}
    clash = [name for name in answer if name.lower() in taken]
    if clash:
        raise SpecError(
            f"structured_output: field(s) {clash} would clash with output columns "
            f"{sorted(f.name for f in [*fields, *own] if f.name not in answer)}; rename them"
        )
    return T.StructType([*fields, *own])


def task_config(spec: JobSpec, schema: T.StructType, slots: int, kind: RequestKind) -> TaskConfig:
    """What every task of the job gets, from the spec."""
    conc = spec.concurrency
    retries = spec.retries
    return TaskConfig(
        kind=kind,
        endpoint=Endpoint(spec.endpoint.base_url, spec.endpoint.api_key_env),
        id_column=spec.id_column(),
        output_schema=to_arrow_schema(schema),
        keep_columns=tuple(c for c in spec.output.keep_columns if c != spec.id_column()),
        retries=RetryPolicy(
            attempts=retries.attempts,
            initial_s=retries.backoff_initial_s,
            max_s=retries.backoff_max_s,
            multiplier=retries.backoff_multiplier,
        ),
        timeouts=Timeouts(**spec.timeouts.model_dump()),
        concurrency=Concurrency(
            per_task=per_task_window(conc.per_executor, slots),
            adaptive=conc.mode == "adaptive",
            max_per_task=conc.max_per_task,
            metrics_interval_s=conc.metrics_interval_s,
        ),
        errors=ErrorPolicy(spec.on_error, spec.max_error_rate, spec.error_rate_min_rows),
    )


def _changed_settings(
    store: OutputStore, record: RunRecord | None, answers: int, current: Fingerprint
) -> str:
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
        f"{store.location} holds {answers} answer(s) that resume would count as done, but "
        f"the latest {what}{diff}\nTo start afresh: {store.afresh}. To keep those answers "
        "and resume anyway: output.on_change: resume."
    )


def earlier_successes(
    spec: JobSpec, store: OutputStore, stored: T.StructType | None, current: Fingerprint
) -> tuple[DataFrame, list[str]]:
    """(the ids whose latest row at the output succeeded, the earlier runs this run
    adopts). A success counts only when the run that made it had these settings (or
    was adopted by one that had): otherwise SpecError naming what changed, unless
    `output.on_change` is resume, and then its run is adopted."""
    records = store.records()
    same = matching_runs(records, current)
    successes = results.latest(store.attempts(stored), store.id_column).where(
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
            raise SpecError(_changed_settings(store, record, answers, current))
        adopted = sorted(r[results.RUN_COLUMN] for r in stale)
    return successes.select(_quote(store.id_column)), adopted


@dataclass
class Plan:
    """A job ready to run: its kind and store, the lazy result (None: nothing to send,
    and `note` says why), the stored rows' schema, what resume skipped, and the record
    the run leaves before it sends anything."""

    kind: RequestKind
    store: OutputStore
    result: DataFrame | None
    schema: T.StructType | None
    run_id: str
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
    kind = kind_for(spec)
    store = store_for(spark, spec)
    df = inputs.read_input(spark, spec)
    earlier = store.prepare()
    record = RunRecord(run_id, current)

    def nothing(schema: T.StructType | None, skipped: DataFrame | None, note: str) -> Plan:
        return Plan(kind, store, None, schema, run_id, skipped, record, started, earlier, note)

    if df is None:
        return nothing(None, None, "the input is empty")
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
    schema = output_schema(df, spec, kind)
    stored = kind.stored_schema(schema)
    skipped = None
    if earlier:
        done, record.adopted = earlier_successes(spec, store, stored, current)
        skipped = df.join(done, spec.id_column(), "left_semi")
        df = df.join(done, spec.id_column(), "left_anti")
    if df.isEmpty():
        note = "the input is empty"
        if earlier:
            note = "nothing to send: every id succeeded in earlier runs"
        return nothing(stored, skipped, note)
    df = arrange(df, spec, spark)
    cfg = task_config(spec, schema, task_slots(spark), kind)
    return Plan(
        kind=kind,
        store=store,
        result=df.mapInArrow(partial(run_partition, cfg=cfg), schema),
        schema=stored,
        run_id=run_id,
        skipped=skipped,
        record=record,
        started=started,
        earlier_runs=earlier,
    )


def execute(spark: SparkSession, spec: JobSpec, job: Plan) -> Summary:
    """Send what `plan` found to send, write it, and return the summary read back from
    the output. The run's record is written first, so even a run that dies midway
    leaves the settings its answers were made with."""
    skipped = job.skipped.count() if job.skipped is not None else 0
    failure: BaseException | None = None
    if job.result is not None or job.record.adopted:
        # Adopting earlier answers (on_change: resume) is recorded even with nothing to
        # send, so the next run with these settings counts them without being told again.
        job.store.record(job.record)
    if job.result is not None:
        try:
            try:
                job.store.write(job.result, job.run_id)
            finally:
                job.store.finish(job.run_id)
        except Exception as exc:  # a task failed for good: report what was committed
            failure = exc
        except KeyboardInterrupt as exc:  # PySpark has cancelled the running Spark jobs
            failure = exc
    summary = summarize(job, time.monotonic() - job.started, skipped)
    if isinstance(failure, KeyboardInterrupt):
        raise JobInterrupted(summary) from None
    if failure is not None:
        raise JobFailed(failure, summary) from failure
    return summary


def run_job(spark: SparkSession, spec: JobSpec) -> Summary:
    """Run the job end to end and return its summary, read back from the output.

    Raises SpecError (the spec or the input is wrong; nothing was sent), JdbcError (a
    database refused), JobFailed or JobInterrupted (with the summary of what was
    committed: the next run resumes from it)."""
    return execute(spark, spec, plan(spark, spec))
