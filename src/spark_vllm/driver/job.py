"""The driver side of a job: plan it (read, ids, resume), run its tasks, summarize.

`plan` reads and checks everything and prepares the output, before any request; it
chooses the request kind (kinds) and the output store (stores) once, and builds the
tasks' configuration. `execute` records the run, sends what is left to send and
summarizes what was committed. `run_job` is both.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pyspark
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from spark_vllm import __version__
from spark_vllm.driver.plan import Census, Plan, largest_max_tokens, map_in_arrow
from spark_vllm.driver.prefix import group_by_prefix
from spark_vllm.driver.progress import JobMetrics, ProgressBoard, ProgressPrinter
from spark_vllm.driver.slots import default_partitions, per_task_window, task_slots
from spark_vllm.driver.summary import (
    JobFailed,
    JobInterrupted,
    Summary,
    summarize,
    summarize_from_output,
)
from spark_vllm.errors import SchemaError, SidecarNotReady, SpecError
from spark_vllm.request import structured
from spark_vllm.request.kinds import (
    COMPLETION_DEFAULT_MAX_TOKENS,
    Answer,
    BatchLine,
    Chat,
    Completion,
    Embedding,
    RequestKind,
)
from spark_vllm.request.prompt import PromptBuilder
from spark_vllm.spec import JobSpec, SampleSpec
from spark_vllm.storage import inputs, results
from spark_vllm.storage.fingerprint import (
    Fingerprint,
    RunRecord,
    changes,
    fingerprint,
    matching_runs,
)
from spark_vllm.storage.inputs import bad_ids_text
from spark_vllm.storage.stores import OutputStore, store_for
from spark_vllm.task.budget import BUDGET_REACHED, Budget
from spark_vllm.task.client import probe, read_api_key
from spark_vllm.task.retry import RetryPolicy
from spark_vllm.task.runner import (
    Concurrency,
    Endpoint,
    ErrorPolicy,
    TaskConfig,
    Timeouts,
    run_partition,
)
from spark_vllm.task.tally import Tally, TallyParam

log = logging.getLogger(__name__)

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
    """The input with its row ids: the input's id column, or a derived one.

    Identical rows get the same digest; the second and later copies get `-2`, `-3`, …
    appended, so each input row keeps its own output row and the ids stay stable
    (copies are interchangeable, so which copy gets which suffix does not matter).
    An id column's ids are checked (unique, not null) by the census (see `take_census`).
    """
    if spec.input.format == "openai-batch" or spec.input.id_column is not None:
        return df
    digest = "__spark_vllm_digest"
    content = [c for c in df.columns if c != _ORDER]  # limit's input order is no content
    df = df.withColumn(digest, derived_id(content))
    nth = F.row_number().over(Window.partitionBy(digest).orderBy(digest))
    return df.withColumn(
        "id",
        F.when(nth == 1, F.col(digest)).otherwise(F.concat_ws("-", F.col(digest), nth)),
    ).drop(digest)


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


def arrange(
    df: DataFrame,
    spec: JobSpec,
    spark: SparkSession,
    kind: RequestKind | None = None,
    grouped: bool = True,
) -> DataFrame:
    """Split the rows into tasks and order each task's rows (see `concurrency.order`).

    Rows are dealt round-robin, so every partition gets a like mix; with a per-row
    max_tokens, each partition then sends its longest generations first and ends on its
    shortest, so a task's last requests finish close together. With `prefix`, the rows
    of a prefix group go to one task, back to back, instead (see `prefix`).
    """
    partitions = spec.partitions or default_partitions(spark)
    if spec.prefix is not None and grouped:
        prefix = spec.prefix
        if prefix.columns is not None and spec.lora is not None and spec.lora.column:
            # vLLM's prefix cache is per adapter: an adapter's rows are a group of their own.
            prefix = prefix.model_copy(update={"columns": [spec.lora.column, *prefix.columns]})
        return group_by_prefix(
            spark, df, prefix, spec.id_column(), partitions, kind or kind_for(spec)
        )
    df = df.repartition(partitions)
    hint = max_tokens_hint(df, spec) if spec.concurrency.order == "longest_first" else None
    order = [hint.desc_nulls_first()] if hint is not None else []
    if spec.lora is not None and spec.lora.column is not None:
        # An adapter's rows go out together: vLLM batches at most --max-loras adapters.
        order.insert(0, F.col(spec.lora.column).asc_nulls_first())
    if order:
        df = df.sortWithinPartitions(*order)
    return df


def check_column_types(spec: JobSpec, schema: T.StructType) -> None:
    """Refuse image and adapter columns of a type no row of them could be sent with."""
    one_image = (T.BinaryType, T.StringType)
    for name in spec.prompt.image_columns() if spec.prompt is not None else []:
        kind = schema[name].dataType
        element = kind.elementType if isinstance(kind, T.ArrayType) else kind
        if not isinstance(element, one_image):
            raise SpecError(
                f"prompt.content: image column {name!r} is {kind.simpleString()}; expected "
                "binary (image bytes), string (a path or URL), or an array of either"
            )
    column = spec.lora.column if spec.lora is not None else None
    if column is not None and not isinstance(schema[column].dataType, T.StringType):
        raise SpecError(
            f"lora.column {column!r} is {schema[column].dataType.simpleString()}; expected "
            "string (each row's adapter name, or null for the base model)"
        )


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
    content = (
        [
            ("image", p.image) if p.image is not None else ("text", p.text or "")
            for p in prompt.content
        ]
        if prompt.content is not None
        else None
    )
    builder = PromptBuilder(
        spec.task,
        prompt.template,
        prompt.system,
        prompt.column,
        content=content,
        max_image_bytes=prompt.max_image_bytes,
        image_prefixes=tuple(prompt.image_prefixes),
    )
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
        truncate=spec.on_overlong == "truncate",
        adapter=spec.lora.adapter if spec.lora is not None else None,
        adapter_column=spec.lora.column if spec.lora is not None else None,
    )


def refuse_answer_clash(spec: JobSpec, kind: RequestKind) -> None:
    """SpecError naming the structured answer's fields that an output column of another
    source (the id, a kept column, the kind's own, the run's id) would shadow."""
    if not isinstance(kind, (Chat, Completion)) or kind.answer is None:
        return
    answer = kind.answer.columns.fieldNames()
    own = [f.name for f in kind.result_fields()][: -len(answer) or None]  # answer's last
    others = [
        spec.id_column(),
        *[c for c in spec.output.keep_columns if c != spec.id_column()],
        *own,
        results.RUN_COLUMN,
    ]
    # Spark matches column names regardless of case: `Error` would shadow `error`.
    taken = {name.lower() for name in others}
    clash = [name for name in answer if name.lower() in taken]
    if clash:
        raise SpecError(
            f"structured_output: field(s) {', '.join(map(repr, clash))} would clash with "
            f"the output's own columns {', '.join(map(repr, others))} (names match "
            "regardless of case); rename them"
        )


def output_schema(df: DataFrame, spec: JobSpec, kind: RequestKind) -> T.StructType:
    """The rows the tasks hand to the writer: the id, the kept columns, the kind's."""
    refuse_answer_clash(spec, kind)
    fields = [df.schema[spec.id_column()]]
    fields += [df.schema[c] for c in spec.output.keep_columns if c != spec.id_column()]
    return T.StructType([*fields, *kind.result_fields()])


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
        lora=spec.lora is not None,
        lora_modules=tuple(sorted(spec.lora.modules.items())) if spec.lora is not None else (),
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


# The census's own column names.
_ID, _N, _RUN, _OK, _MT = "__sv_id", "__sv_n", "__sv_run", "__sv_ok", "__sv_mt"
# A row's place in the input (limit: the first rows to send), and its id's sample hash.
_ORDER, _HASH = "__sv_order", "__sv_hash"


def sample(df: DataFrame, id_column: str, spec: SampleSpec) -> DataFrame:
    """The rows whose ids a hash of (id, seed) picks: `fraction` of them, or the `rows`
    with the smallest hashes. The same ids on every run, however the input is split."""
    hashed = F.xxhash64(F.col(_quote(id_column)).cast("string"), F.lit(spec.seed))
    if spec.fraction is not None:
        return df.where(F.pmod(hashed, F.lit(SAMPLE_SCALE)) < int(spec.fraction * SAMPLE_SCALE))
    assert spec.rows is not None
    picked = df.withColumn(_HASH, hashed).orderBy(_HASH, _quote(id_column)).limit(spec.rows)
    return picked.drop(_HASH)


SAMPLE_SCALE = 1_000_000_000


def take_census(
    df: DataFrame,
    latest: DataFrame | None,
    id_column: str,
    same: set[str],
    max_tokens: Column | None = None,
) -> Census:
    """One Spark job: the input's ids grouped (how many rows each, to find the null and
    repeated ones) and joined with the latest attempt per id at the output (`latest`:
    `results.latest_outcome`, None when there is none), whose run made it with these
    settings when it is in `same`; and the largest of `max_tokens` (a per-row column)."""
    per_row = max_tokens if max_tokens is not None else F.lit(None).cast("long")
    ids = df.groupBy(F.col(_quote(id_column)).alias(_ID)).agg(
        F.count(F.lit(1)).alias(_N), F.max(per_row).alias(_MT)
    )
    if latest is None:
        joined = ids.withColumns({_RUN: F.lit(None).cast("string"), _OK: F.lit(None)})
    else:
        answers = latest.select(
            F.col(_quote(id_column)).alias(_ID),
            F.col(results.RUN_COLUMN).alias(_RUN),
            F.col("ok").alias(_OK),
        )
        joined = ids.join(answers, _ID, "full_outer")
    in_input = F.col(_N).isNotNull()
    made_here = F.col(_RUN).isin(sorted(same)) if same else F.lit(False)
    succeeded = in_input & F.coalesce(F.col(_OK), F.lit(False))
    stale = succeeded & ~made_here
    zero = F.lit(0)
    row = joined.agg(
        F.coalesce(F.sum(_N), zero).alias("rows"),
        F.count(F.when(in_input & ((F.col(_N) > 1) | F.col(_ID).isNull()), 1)).alias("bad"),
        F.coalesce(F.sum(F.when(succeeded & made_here, F.col(_N))), zero).alias("skipped"),
        F.coalesce(F.sum(F.when(stale, F.col(_N))), zero).alias("stale"),
        F.collect_set(F.when(stale, F.col(_RUN))).alias("stale_runs"),
        F.count(F.when(in_input & ~F.coalesce(F.col(_OK), F.lit(True)), 1)).alias("retried"),
        F.count(F.col(_RUN)).alias("earlier_ids"),
        F.count(F.when(~F.coalesce(F.col(_OK), F.lit(True)), 1)).alias("earlier_failed"),
        F.max(_MT).alias("max_tokens"),
    ).first()
    assert row is not None
    return Census(
        int(row["rows"]),
        int(row["bad"]),
        int(row["skipped"]),
        int(row["stale"]),
        sorted(row["stale_runs"]),
        int(row["retried"]),
        int(row["earlier_ids"]),
        int(row["earlier_failed"]),
        None if row["max_tokens"] is None else int(row["max_tokens"]),
    )


def refuse_bad_ids(df: DataFrame, id_column: str) -> None:
    """SpecError naming a few ids that are null or on several rows."""
    bad = (
        df.groupBy(F.col(_quote(id_column)).alias("id"))
        .count()
        .where(F.col("id").isNull() | (F.col("count") > 1))
        .limit(5)
        .collect()
    )
    raise SpecError(bad_ids_text(id_column, [(r["id"], r["count"]) for r in bad]))


# The local properties by which Spark's UI groups and names the jobs a thread starts.
_UI_PROPERTIES = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")


def job_group(run_id: str) -> str:
    """The Spark job group of a run's Spark jobs: `spark-vllm-<run id>`."""
    return f"spark-vllm-{run_id}"


@contextlib.contextmanager
def _ui_steps(spark: SparkSession, spec: JobSpec, run_id: str) -> Iterator[Callable[[str], None]]:
    """Yields `step(what)`: the Spark jobs started after it are grouped under the run
    (`job_group`) and described in Spark's UI as `spark-vllm <spec file> (<task>,
    <model>): <what>` (without the file when the spec came from no file).
    The thread's own group and description are restored after (run_job may be called
    from a user's session)."""
    context = spark.sparkContext
    before = {key: context.getLocalProperty(key) for key in _UI_PROPERTIES}
    source = f"{spec.source} " if spec.source else ""
    prefix = f"spark-vllm {source}({spec.task}, {spec.endpoint.model})"

    def step(what: str) -> None:
        context.setJobGroup(job_group(run_id), f"{prefix}: {what}")

    try:
        yield step
    finally:
        for key, value in before.items():
            context.setLocalProperty(key, value)  # type: ignore[arg-type]  # None unsets


def plan(spark: SparkSession, spec: JobSpec, sending: bool = True) -> Plan:
    """Read, check and prepare; spec errors surface here, before any request.

    One Spark job counts what there is to do (`take_census`): the ids, and with earlier
    runs, what resume skips. A success counts as done only when the run that made it
    had these settings (or was adopted by one that had): otherwise SpecError naming
    what changed, unless `output.on_change` is resume, and then its run is adopted.
    Nothing is sent when the input is empty or every id already succeeded: then
    `result` is None and `note` says why. `sending` False (`spark-vllm plan`): no
    endpoint for progress, metrics or the budget is opened."""
    started = time.monotonic()
    metrics_token = _metrics_token(spec) if sending else None
    run_id = results.new_run_id()
    current = fingerprint(spec)
    kind = kind_for(spec)
    store = store_for(spark, spec)
    with _ui_steps(spark, spec, run_id) as step:
        step(f"reading {spec.input.where()}")
        df = inputs.read_input(spark, spec)
        step(f"resume check against {spec.output.where()}")
        earlier = store.prepare()
        record = RunRecord(run_id, current)

        def nothing(schema: T.StructType | None, census: Census, note: str) -> Plan:
            return Plan(kind, store, None, schema, run_id, census, record, started, earlier, note)

        if df is None:
            return nothing(None, Census(), "the input is empty")
        spec.check_columns(df.columns)
        check_column_types(spec, df.schema)
        if spec.limit is not None:  # the input's order, to take the first rows to send
            df = df.withColumn(_ORDER, F.monotonically_increasing_id())
        df = with_ids(df, spec)
        id_column = spec.id_column()
        needed = dict.fromkeys(
            [
                id_column,
                *spec.prompt_columns(),
                *(["method", "url", "body"] if spec.input.format == "openai-batch" else []),
                *([spec.sampling_column] if spec.sampling_column else []),
                *(spec.prefix.columns or [] if spec.prefix is not None else []),
                *([spec.lora.column] if spec.lora is not None and spec.lora.column else []),
                *spec.output.keep_columns,
                *([_ORDER] if spec.limit is not None else []),
            ]
        )
        df = df.select(*[_quote(c) for c in needed])
        if spec.sample is not None:
            df = sample(df, id_column, spec.sample)
        schema = output_schema(df, spec, kind)
        stored = kind.stored_schema(schema)
        latest = results.latest_outcome(store.attempts(stored), id_column) if earlier else None
        same = matching_runs(store.records(), current) if earlier else set()
        census = take_census(df, latest, id_column, same, max_tokens_hint(df, spec))
        if census.bad_ids:
            refuse_bad_ids(df, id_column)
        if census.stale:
            if spec.output.on_change == "refuse":
                run = census.stale_runs[-1]
                found = store.records().get(run, RunRecord(run, None))
                raise SpecError(_changed_settings(store, found, census.stale, current))
            record.adopted = census.stale_runs
            census.skipped += census.stale
            same |= set(census.stale_runs)
        if latest is not None and census.skipped:
            done = latest.where(F.col("ok") & F.col(results.RUN_COLUMN).isin(sorted(same)))
            df = df.join(done.select(_quote(id_column)), id_column, "left_anti")
        if spec.limit is not None:
            census.held_back = max(census.to_send - spec.limit, 0)
            df = df.orderBy(_ORDER).limit(spec.limit).drop(_ORDER)
        if census.to_send == 0:
            note = (
                "nothing to send: every id succeeded in earlier runs"
                if census.rows
                else ("the input is empty")
            )
            return nothing(stored, census, note)
        tally = spark.sparkContext.accumulator(Tally(), TallyParam())
        metrics = None
        if metrics_token is not None:
            metrics = JobMetrics(
                metrics_token, run_id, spec.endpoint.model, spec.task, census.to_send
            )
        budget = budget_for(spec, census) if sending else None
        board = progress_board(spark, spec, metrics, budget) if sending else None
        if budget is not None and board is None:
            raise SpecError(
                "budget: the tasks lease their rows from the driver's progress endpoint, "
                "which cannot listen (see the warning above); free progress.port or set 0"
            )
        cfg = replace(
            task_config(spec, schema, task_slots(spark), kind),
            tally=tally,
            progress=board.target if board is not None else None,
            max_tokens=largest_max_tokens(spec, census),
            budget=budget is not None,
        )
        if sending and spec.prefix is not None:
            step("prefix groups: counting them and placing their rows in the tasks")
        to_send = arrange(df, spec, spark, kind, grouped=sending)  # plan needs no grouping
        return Plan(
            kind=kind,
            store=store,
            result=map_in_arrow(to_send, partial(run_partition, cfg=cfg), schema),
            schema=stored,
            run_id=run_id,
            census=census,
            record=record,
            started=started,
            earlier_runs=earlier,
            tally=tally,
            progress=board,
            to_send=to_send,
        )


def _metrics_token(spec: JobSpec) -> str | None:
    """The bearer token scrapers of the job's metrics send (None: `metrics.enabled` is
    false). Raises SpecError when its environment variable is unset or empty."""
    if not spec.metrics.enabled:
        return None
    name = spec.metrics.token_env
    token = os.environ.get(name, "").strip()
    if not token:
        raise SpecError(
            f"metrics.enabled needs a bearer token for scrapers in the environment variable "
            f"{name} (metrics.token_env), and it is unset or empty: set it (on Kubernetes "
            "the chart takes it from metrics.tokenSecret) or set metrics.enabled false"
        )
    return token


def budget_for(spec: JobSpec, census: Census) -> Budget | None:
    """The spec's budget for the driver's board; each row granted holds its max_tokens
    (the largest any row asks) of the output budget until its answer is counted."""
    if spec.budget is None:
        return None
    b = spec.budget
    reserve = largest_max_tokens(spec, census)
    if reserve is None and spec.task == "completion" and spec.input.format != "openai-batch":
        reserve = COMPLETION_DEFAULT_MAX_TOKENS
    if b.max_output_tokens is not None and reserve is None:
        raise SpecError(
            "budget.max_output_tokens holds each row's max_tokens until its answer is "
            "counted, and this job's rows have none to hold"
            + (
                ": a batch file's lines carry their own; use budget.max_rows or max_prompt_tokens"
                if spec.input.format == "openai-batch"
                else ": set sampling.max_tokens"
            )
        )
    return Budget(b.max_rows, b.max_prompt_tokens, b.max_output_tokens, reserve or 0)


def progress_board(
    spark: SparkSession,
    spec: JobSpec,
    metrics: JobMetrics | None = None,
    budget: Budget | None = None,
) -> ProgressBoard | None:
    """The driver's progress endpoint for the run's tasks, serving `metrics` too when
    given (None: neither `progress.enabled` nor metrics), listening where Spark's driver
    listens: its bind address (the pod's IP in a driver pod on Kubernetes, which
    executors reach without cluster DNS), else its host."""
    if not spec.progress.enabled and metrics is None and budget is None:
        return None
    conf = spark.sparkContext.getConf()
    host = conf.get("spark.driver.host") or "127.0.0.1"
    bind = conf.get("spark.driver.bindAddress") or host
    if bind not in ("0.0.0.0", "::"):  # noqa: S104  # a wildcard is no address to reach
        host = bind
    try:
        board = ProgressBoard(
            host, bind, spec.progress.port, spec.progress.interval_s, metrics, budget
        )
    except OSError as exc:  # the port is taken, say: the run goes on without progress
        log.warning(
            "no progress shown and no metrics served: the endpoint cannot listen on %s "
            "port %s: %s",
            bind, spec.progress.port, exc,
        )  # fmt: skip
        return None
    if metrics is not None:
        where = board.target.url.rsplit("/", 1)[0] + "/metrics"
        print(
            f"spark-vllm metrics: {where} while the run sends "
            f"(bearer token: ${spec.metrics.token_env})",
            file=sys.stderr,
            flush=True,
        )
    return board


def _shown(spec: JobSpec, job: Plan) -> contextlib.AbstractContextManager[object]:
    """The run's progress on stderr while it sends, when the tasks report it."""
    if job.progress is None or not spec.progress.enabled:
        return contextlib.nullcontext()
    interval = spec.progress.interval_s
    return ProgressPrinter(job.progress, job.census.to_send, interval, tokens=job.kind.tokens)


def wait_for_endpoint(
    spark: SparkSession, spec: JobSpec, job: Plan, stream: Any = None, poll_s: float = 1.0
) -> float:
    """On a local master the driver shares its tasks' loopback: wait there once for the
    endpoint to serve the model, saying what it waits for every `progress.interval_s`,
    before any task starts (and before an overwrite clears the output). Returns the
    seconds waited. Raises SidecarNotReady in one line, naming the endpoint and
    `timeouts.ready_s`, when it is not ready by then. Elsewhere (a cluster: each
    executor's sidecar is on the executor's loopback) the tasks wait, each for its own."""
    if not (spark.sparkContext.master or "").startswith("local"):
        return 0.0
    stream = stream if stream is not None else sys.stderr
    url, model = spec.endpoint.base_url, job.kind.model
    deadline = spec.timeouts.ready_s
    api_key = read_api_key(spec.endpoint.api_key_env)
    started = time.monotonic()
    said: float | None = None  # when the last waiting line was printed
    while True:
        seen = probe(url, model, api_key, timeout=min(5.0, deadline))
        waited = time.monotonic() - started
        if seen is None:
            if said is not None:
                print(f"spark-vllm: {url} is ready after {waited:.0f} s", file=stream, flush=True)
            return waited
        if waited >= deadline:
            raise SidecarNotReady(
                f"no vLLM ready at {url} for model {model!r} after {deadline:g} s "
                f"(timeouts.ready_s); last seen: {seen}. Start one there (spark-vllm serve "
                "--model DIR), let spark-vllm local start one, or set endpoint.base_url"
            )
        if said is None or waited - said >= spec.progress.interval_s:
            said = waited
            print(
                f"spark-vllm: waiting for vLLM at {url} (model {model!r}): {waited:.0f} s so "
                f"far, giving up after {deadline:g} s (timeouts.ready_s); last seen: {seen}",
                file=stream,
                flush=True,
            )
        time.sleep(min(poll_s, max(deadline - waited, 0.0)))


def execute(spark: SparkSession, spec: JobSpec, job: Plan) -> Summary:
    """Send what `plan` found to send, write it, and return the summary. The run's
    record is written first, so even a run that dies midway leaves the settings its
    answers were made with. On a local master the endpoint is waited for first
    (`wait_for_endpoint`): that time is the summary's `waiting_s`."""
    failure: BaseException | None = None
    if job.result is not None:
        job.waited_s += wait_for_endpoint(spark, spec, job)
    job.store.begin()
    if job.result is not None or job.record.adopted:
        # Adopting earlier answers (on_change: resume) is recorded even with nothing to
        # send, so the next run with these settings counts them without being told again.
        job.store.record(job.record)
    if job.result is not None:
        try:
            try:
                with _ui_steps(spark, spec, job.run_id) as step, _shown(spec, job):
                    url, where = spec.endpoint.base_url, spec.output.where()
                    step(f"requests to {url}, writing {where} (run {job.run_id})")
                    job.store.write(job.result, job.run_id)
            finally:
                if job.progress is not None:
                    job.progress.close()
                job.store.finish(job.run_id)
        except Exception as exc:  # a task failed for good: report what was committed
            failure = exc
        except KeyboardInterrupt as exc:  # PySpark has cancelled the running Spark jobs
            failure = exc
    wall = time.monotonic() - job.started
    if failure is None:
        summary = summarize(job, wall)
        if job.progress is not None and job.progress.budget_reached:
            summary.status = BUDGET_REACHED
            left = job.census.to_send - summary.rows
            summary.note = f"budget reached: {left} row(s) to send are left for a later run"
    else:
        with _ui_steps(spark, spec, job.run_id) as step:
            step(f"summary of run {job.run_id}, read back")
            summary = summarize_from_output(job, wall)
        summary.status = "interrupted" if isinstance(failure, KeyboardInterrupt) else "failed"
    summary.waiting_s = min(job.waited_s, wall)
    if job.result is not None:
        _leave_summary(spec, job, summary)
    if failure is None:
        return summary
    if isinstance(failure, KeyboardInterrupt):
        raise JobInterrupted(summary) from None
    raise JobFailed(failure, summary) from failure


def _leave_summary(spec: JobSpec, job: Plan, summary: Summary) -> None:
    """Complete the summary's account of the run and leave it beside the output as JSON
    (a failure to write it is logged: it must not hide how the run ended)."""
    settings = json.dumps(job.record.fingerprint, sort_keys=True, ensure_ascii=False)
    summary.task, summary.model = spec.task, spec.endpoint.model
    summary.settings_sha256 = hashlib.sha256(settings.encode()).hexdigest()
    summary.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    summary.versions = {
        "spark_vllm": __version__,
        "pyspark": pyspark.__version__,
        "python": platform.python_version(),
    }
    try:
        job.store.save_summary(job.run_id, json.dumps(summary.to_dict(), ensure_ascii=False))
    except Exception as exc:
        log.warning("could not leave the summary of run %s: %s", job.run_id, exc)


def run_job(spark: SparkSession, spec: JobSpec) -> Summary:
    """Run the job end to end and return its summary, read back from the output.

    Raises SpecError (the spec or the input is wrong; nothing was sent), JdbcError (a
    database refused), JobFailed or JobInterrupted (with the summary of what was
    committed: the next run resumes from it)."""
    return execute(spark, spec, plan(spark, spec))
