"""A run's summary: what it sent and what came back.

The tasks count as they go (a `Tally` per task, summed by a Spark accumulator, which
keeps the counts of the task attempts that succeeded); with the plan's census of the
input and the output before the run, that is the summary, without reading the output
back. A run that failed midway reads back what it committed instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import functions as F

from spark_vllm.driver.plan import Plan
from spark_vllm.errors import SparkVllmError
from spark_vllm.redact import redact
from spark_vllm.storage.results import latest
from spark_vllm.task.tally import ERROR_CHARS, Tally, error_kind

# Kinds of failure the summary lists.
BREAKDOWN_KINDS = 10


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
    breakdown: list[tuple[str, int, str]] = field(default_factory=list)  # see Tally
    retries: int | None = None  # None: not known (a run that stopped midway)
    outage_s: float | None = None  # sidecar down, summed over tasks; None: not known
    window: tuple[int, int] | None = None  # see Tally; None: not known or fixed at 0
    waiting_s: float = 0.0  # of wall_s, waiting for the endpoint (a local vLLM's start)
    # How the run ended and what it was, for its JSON document (see `to_dict`).
    status: str = "succeeded"  # succeeded, failed, interrupted or budget reached
    task: str = ""
    model: str = ""
    settings_sha256: str = ""  # of the run's fingerprint (what decides its answers)
    finished_at: str = ""  # UTC, ISO 8601
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The summary as the JSON document each run leaves beside its output (see
        `OutputStore.save_summary`). Counts are rows unless named tokens; times in
        seconds; `failed_by_kind` and `most_common_errors` most common first."""
        return {
            "run": self.run_id,
            "status": self.status,
            "finished_at": self.finished_at,
            "task": self.task,
            "model": self.model,
            "settings_sha256": self.settings_sha256,
            "output": self.output,
            "note": self.note,
            "rows": self.rows,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "prompt_tokens": self.prompt_tokens if self.tokens else None,
            "completion_tokens": self.completion_tokens if self.tokens else None,
            "retries": self.retries,
            "sidecar_outage_s": self.outage_s,
            "window": {"min": self.window[0], "max": self.window[1]} if self.window else None,
            "wall_s": self.wall_s,
            "waiting_s": self.waiting_s,
            "answering_s": self.answering_s,
            "rows_per_s": round(self.rows_per_s, 3),
            "output_tokens_per_s": round(self.output_tokens_per_s, 3) if self.tokens else None,
            "output_ids": self.output_ids,
            "output_failed": self.output_failed,
            "failed_by_kind": [
                {"kind": kind, "rows": count, "example_id": example}
                for kind, count, example in self.breakdown
            ],
            "most_common_errors": [{"error": e, "rows": n} for e, n in self.errors],
            "versions": self.versions,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        """The inverse of `to_dict`. Raises KeyError or TypeError on another document."""
        tokens = data["prompt_tokens"] is not None
        return cls(
            rows=data["rows"],
            succeeded=data["succeeded"],
            failed=data["failed"],
            prompt_tokens=data["prompt_tokens"] or 0,
            completion_tokens=data["completion_tokens"] or 0,
            wall_s=data["wall_s"],
            output=data["output"],
            errors=[(e["error"], e["rows"]) for e in data["most_common_errors"]],
            skipped=data["skipped"],
            run_id=data["run"],
            output_ids=data["output_ids"],
            output_failed=data["output_failed"],
            tokens=tokens,
            note=data["note"],
            breakdown=[(k["kind"], k["rows"], k["example_id"]) for k in data["failed_by_kind"]],
            retries=data["retries"],
            outage_s=data["sidecar_outage_s"],
            window=(data["window"]["min"], data["window"]["max"]) if data["window"] else None,
            status=data["status"],
            task=data["task"],
            model=data["model"],
            settings_sha256=data["settings_sha256"],
            finished_at=data["finished_at"],
            versions=dict(data["versions"]),
            waiting_s=data.get("waiting_s", 0.0),  # absent from earlier versions' documents
        )

    @property
    def answering_s(self) -> float:
        """The wall time but the wait for the endpoint: reading, sending, writing."""
        return max(self.wall_s - self.waiting_s, 0.0)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.answering_s if self.answering_s > 0 else 0.0

    @property
    def output_tokens_per_s(self) -> float:
        return self.completion_tokens / self.answering_s if self.answering_s > 0 else 0.0

    def render(self) -> str:
        ended = "" if self.status == "succeeded" else f", {self.status}"
        lines = [
            f"spark-vllm summary (run {self.run_id}{ended})",
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
            f"  waiting       {self.waiting_s:.1f} s (for the vLLM server to be ready)",
            f"  answering     {self.answering_s:.1f} s (reading, sending, writing)",
            f"  rows/s        {self.rows_per_s:.2f} (over the answering time)",
        ]
        if self.tokens:
            lines.append(f"  out tokens/s  {self.output_tokens_per_s:.1f}")
        if self.retries is not None:
            lines.append(f"  retries       {self.retries} (tries after a request's first)")
        if self.outage_s is not None:
            lines.append(f"  sidecar down  {self.outage_s:.1f} s (summed over tasks)")
        if self.window is not None:
            low, high = self.window
            lines.append(f"  window        {low}-{high} rows in flight per task")
        lines += [
            f"  skipped       {self.skipped} (succeeded in earlier runs)",
            f"  output        {self.output}: {self.output_ids} ids, {self.output_failed} failed",
        ]
        if self.breakdown:
            lines.append("  failed rows by kind:")
            lines += [
                f"    {count} x {kind} (e.g. id {example})"
                for kind, count, example in self.breakdown
            ]
        if self.errors:
            lines.append("  most common errors:")
            lines += [f"    {count} x {message}" for message, count in self.errors]
        return "\n".join(lines)


class JobFailed(SparkVllmError, RuntimeError):
    """The job stopped early; `summary` covers the rows committed before it stopped."""

    def __init__(self, cause: BaseException, summary: Summary) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.summary = summary


class JobInterrupted(SparkVllmError, RuntimeError):
    """Ctrl-C stopped the job; `summary` covers the rows committed before it stopped."""

    def __init__(self, summary: Summary) -> None:
        super().__init__("interrupted")
        self.summary = summary


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
        breakdown=tally.breakdown()[:BREAKDOWN_KINDS],
        retries=tally.retries,
        outage_s=tally.outage_s,
        window=tally.window,
    )
    if census.held_back or tally.rows != census.to_send:
        # limit, sample or budget left rows unsent: which ids those are, only the output says
        summary.output_ids, summary.output_failed = output_totals(job)
    else:
        summary.output_ids = census.earlier_ids + census.to_send - census.retried
        summary.output_failed = census.earlier_failed - census.retried + tally.failed
    return summary


def summarize_from_output(job: Plan, wall_s: float) -> Summary:
    """The summary of a run that stopped midway: what it committed, read back.

    One pass over this run's output; the most common errors only when some row failed;
    the whole output's latest-attempt view only when earlier runs are there.
    """

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
            id_column = F.col(f"`{store.id_column}`").cast("string")
            errors = (
                this_run.where(F.col("error").isNotNull())
                .groupBy(F.substring(error, 1, ERROR_CHARS).alias("e"))
                .agg(F.count(F.lit(1)).alias("count"), F.min(id_column).alias("example"))
                .orderBy(F.desc("count"))
                .limit(1000)
                .collect()
            )
            summary.errors = [(redact(r["e"]), r["count"]) for r in errors[:5]]
            kinds = Tally()
            for r in errors:
                kinds.add_kind(error_kind(redact(r["e"])), r["count"], str(r["example"]))
            summary.breakdown = kinds.breakdown()[:BREAKDOWN_KINDS]
    if job.earlier_runs:
        summary.output_ids, summary.output_failed = output_totals(job)
    else:
        summary.output_ids, summary.output_failed = summary.rows, summary.failed
    return summary


def output_totals(job: Plan) -> tuple[int, int]:
    """(ids, ids whose latest attempt failed) at the output, read back."""
    store = job.store
    view = latest(store.attempts(job.schema), store.id_column)
    overall = view.agg(
        F.count(F.lit(1)).alias("ids"),
        F.count(F.when(F.col("error").isNotNull(), 1)).alias("bad"),
    ).first()
    assert overall is not None
    return int(overall["ids"]), int(overall["bad"])
