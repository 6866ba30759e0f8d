"""A run's summary: what it sent and what came back, read from the output it committed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

if TYPE_CHECKING:
    from spark_vllm.job import Plan


@dataclass
class Summary:
    """Totals of one run (`rows` … `completion_tokens`, `errors`: its most common error
    messages with their counts) and of the output as a whole (`output_ids`,
    `output_failed`: the latest attempt per id). Times in seconds."""

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


def summarize(job: Plan, wall_s: float, skipped: int) -> Summary:
    """Totals of this run's committed rows, and of the output as a whole.

    One pass over this run's output; the most common errors only when some row failed;
    the whole output's latest-attempt view only when earlier runs are there.
    """
    from spark_vllm.results import latest

    store, kind = job.store, job.kind
    summary = Summary(0, 0, 0, 0, 0, wall_s, store.where(), skipped=skipped, run_id=job.run_id)
    summary.tokens = kind.tokens
    error, tokens_in, tokens_out = kind.summary_columns()
    this_run = None
    if job.result is None:
        summary.note = job.note
    else:
        this_run = store.this_run(job.run_id, job.schema)
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
        view = latest(store.attempts(job.schema), store.id_column)
        overall = view.agg(
            F.count(F.lit(1)).alias("ids"),
            F.count(F.when(F.col("error").isNotNull(), 1)).alias("bad"),
        ).first()
        assert overall is not None
        summary.output_ids, summary.output_failed = overall["ids"], overall["bad"]
    else:
        summary.output_ids, summary.output_failed = summary.rows, summary.failed
    return summary
