"""The driver side of a job: read, give every row an id, run the tasks, write, summarize."""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from functools import partial

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from spark_vllm.retry import RetryPolicy
from spark_vllm.runner import TaskConfig, run_partition
from spark_vllm.spec import InputSpec, JobSpec, OutputSpec, SpecError

RESULT_FIELDS = [
    T.StructField("response", T.StringType()),
    T.StructField("finish_reason", T.StringType()),
    T.StructField("prompt_tokens", T.IntegerType()),
    T.StructField("completion_tokens", T.IntegerType()),
    T.StructField("latency_ms", T.DoubleType()),
    T.StructField("attempts", T.IntegerType()),
    T.StructField("error", T.StringType()),
]

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

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def output_tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def render(self) -> str:
        lines = [
            "spark-vllm summary",
            f"  rows          {self.rows}",
            f"  succeeded     {self.succeeded}",
            f"  failed        {self.failed}",
            f"  tokens in     {self.prompt_tokens}",
            f"  tokens out    {self.completion_tokens}",
            f"  wall time     {self.wall_s:.1f} s",
            f"  rows/s        {self.rows_per_s:.2f}",
            f"  out tokens/s  {self.output_tokens_per_s:.1f}",
            f"  output        {self.output}",
        ]
        if self.errors:
            lines.append("  most common errors:")
            lines += [f"    {count} x {message}" for message, count in self.errors]
        return "\n".join(lines)


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def read_input(spark: SparkSession, spec: InputSpec) -> DataFrame:
    reader = spark.read.options(**spec.options)
    if spec.format == "table":
        assert spec.table is not None
        return spark.table(spec.table)
    assert spec.path is not None
    if spec.format == "parquet":
        return reader.parquet(spec.path)
    if spec.format == "jsonl":
        return reader.json(spec.path)
    return reader.options(header="true", inferSchema="true").csv(spec.path)


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
    """
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


def output_schema(df: DataFrame, spec: JobSpec) -> T.StructType:
    fields = [df.schema[spec.id_column()]]
    fields += [df.schema[c] for c in spec.output.keep_columns if c != spec.id_column()]
    return T.StructType(fields + RESULT_FIELDS)


def task_config(spec: JobSpec, schema: T.StructType, window: int) -> TaskConfig:
    return TaskConfig(
        base_url=spec.endpoint.base_url,
        model=spec.endpoint.model,
        task=spec.task,
        sampling=spec.sampling.request_fields(),
        template=spec.prompt.template,
        system=spec.prompt.system,
        prompt_column=spec.prompt.column,
        policy=RetryPolicy(
            attempts=spec.retries.attempts,
            initial_s=spec.retries.backoff_initial_s,
            max_s=spec.retries.backoff_max_s,
            multiplier=spec.retries.backoff_multiplier,
        ),
        window=window,
        ready_timeout_s=spec.timeouts.ready_s,
        request_timeout_s=spec.timeouts.request_s,
        connect_timeout_s=spec.timeouts.connect_s,
        on_error=spec.on_error,
        id_column=spec.id_column(),
        keep_columns=tuple(c for c in spec.output.keep_columns if c != spec.id_column()),
        output_schema=to_arrow_schema(schema),
        api_key_env=spec.endpoint.api_key_env,
    )


def write_output(df: DataFrame, spec: OutputSpec) -> None:
    mode = "errorifexists" if spec.mode == "error" else "overwrite"
    writer = df.write.mode(mode)
    if spec.format == "parquet":
        writer.parquet(spec.path)
    else:
        # Every row carries every key, `error: null` included.
        writer.option("ignoreNullFields", "false").json(spec.path)


def read_output(
    spark: SparkSession, spec: OutputSpec, schema: T.StructType | None = None
) -> DataFrame:
    if spec.format == "parquet":
        return spark.read.parquet(spec.path)
    reader = spark.read.schema(schema) if schema is not None else spark.read
    return reader.json(spec.path)


def summarize(out: DataFrame, wall_s: float, where: str) -> Summary:
    totals = out.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count(F.when(F.col("error").isNull(), 1)).alias("ok"),
        F.coalesce(F.sum("prompt_tokens"), F.lit(0)).alias("tin"),
        F.coalesce(F.sum("completion_tokens"), F.lit(0)).alias("tout"),
    ).first()
    assert totals is not None
    errors = (
        out.where(F.col("error").isNotNull())
        .groupBy(F.substring("error", 1, 300).alias("e"))
        .count()
        .orderBy(F.desc("count"))
        .limit(5)
        .collect()
    )
    return Summary(
        rows=totals["rows"],
        succeeded=totals["ok"],
        failed=totals["rows"] - totals["ok"],
        prompt_tokens=int(totals["tin"]),
        completion_tokens=int(totals["tout"]),
        wall_s=wall_s,
        output=where,
        errors=[(r["e"], r["count"]) for r in errors],
    )


def plan(spark: SparkSession, spec: JobSpec) -> tuple[DataFrame, T.StructType]:
    """The result DataFrame (lazy) and its schema; spec errors surface here."""
    df = read_input(spark, spec.input)
    spec.check_columns(df.columns)
    df = with_ids(df, spec)
    needed = dict.fromkeys(
        [spec.id_column(), *sorted(spec.prompt.columns()), *spec.output.keep_columns]
    )
    df = df.select(*[_quote(c) for c in needed])
    df = df.repartition(spec.partitions or spark.sparkContext.defaultParallelism)
    schema = output_schema(df, spec)
    window = per_task_window(spec.concurrency.per_executor, task_slots(spark))
    cfg = task_config(spec, schema, window)
    return df.mapInArrow(partial(run_partition, cfg=cfg), schema), schema


def run_job(spark: SparkSession, spec: JobSpec) -> Summary:
    """Run the job end to end and return its summary, read back from the output."""
    start = time.monotonic()
    result, schema = plan(spark, spec)
    write_output(result, spec.output)
    wall = time.monotonic() - start
    out = read_output(spark, spec.output, schema)
    return summarize(out, wall, f"{spec.output.path} ({spec.output.format})")
