"""A run's summary: what it sent and what came back.

The tasks count as they go (a `Tally` per task, summed by a Spark accumulator, which
keeps the counts of the task attempts that succeeded); with the plan's census of the
input and the output before the run, that is the summary, without reading the output
back. A run that failed midway reads back what it committed instead.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyspark.accumulators import AccumulatorParam
from pyspark.sql import functions as F

if TYPE_CHECKING:
    from spark_vllm.job import Plan

# Error messages are counted by their first characters, and a task reports its most
# common ones only.
ERROR_CHARS = 300
ERRORS_PER_TASK = 50


@dataclass
class Tally:
    """What tasks counted of the rows they handed over."""

    rows: int = 0
    succeeded: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def count(self, error: str | None, tokens: tuple[int, int]) -> None:
        self.rows += 1
        if error is None:
            self.succeeded += 1
        else:
            self.failed += 1
            self.errors[error[:ERROR_CHARS]] += 1
        self.prompt_tokens += tokens[0]
        self.completion_tokens += tokens[1]

    def merge(self, other: Tally) -> Tally:
        self.rows += other.rows
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.errors.update(other.errors)
        return self

    def shipped(self) -> Tally:
        """This tally with only its most common errors, as a task sends it back."""
        return Tally(
            self.rows,
            self.succeeded,
            self.failed,
            self.prompt_tokens,
            self.completion_tokens,
            Counter(dict(self.errors.most_common(ERRORS_PER_TASK))),
        )


class TallyParam(AccumulatorParam[Tally]):
    """Sums the tasks' tallies in a Spark accumulator."""

    def zero(self, value: Tally) -> Tally:
        return Tally()

    def addInPlace(self, value1: Tally, value2: Tally) -> Tally:
        return value1.merge(value2)


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


def summarize(job: Plan, wall_s: float) -> Summary:
    """The summary of a run that ended well: the tasks' tally and the plan's census.

    After the run the output holds the ids it held before and the input ids it lacked;
    the ids whose latest attempt failed before and that this run sent again have this
    run's outcome now."""
    census, store, kind = job.census, job.store, job.kind
    tally = job.tally.value if job.tally is not None else Tally()
    summary = Summary(
        tally.rows,
        tally.succeeded,
        tally.failed,
        tally.prompt_tokens,
        tally.completion_tokens,
        wall_s,
        store.where(),
        errors=tally.errors.most_common(5),
        skipped=census.skipped,
        run_id=job.run_id,
        tokens=kind.tokens,
        note=job.note,
    )
    summary.output_ids = census.earlier_ids + census.to_send - census.retried
    summary.output_failed = census.earlier_failed - census.retried + tally.failed
    return summary


def summarize_from_output(job: Plan, wall_s: float) -> Summary:
    """The summary of a run that stopped midway: what it committed, read back.

    One pass over this run's output; the most common errors only when some row failed;
    the whole output's latest-attempt view only when earlier runs are there.
    """
    from spark_vllm.results import latest

    store, kind = job.store, job.kind
    summary = Summary(
        0, 0, 0, 0, 0, wall_s, store.where(), skipped=job.census.skipped, run_id=job.run_id
    )
    summary.tokens = kind.tokens
    error, tokens_in, tokens_out = kind.summary_columns()
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
                .groupBy(F.substring(error, 1, ERROR_CHARS).alias("e"))
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
