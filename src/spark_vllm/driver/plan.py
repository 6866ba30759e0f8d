"""A job ready to run, as `job.plan` leaves it for `job.execute` and the summary: the
request kind, the output store, the lazy result, and the census of the input and the
output taken before the run; the largest max_tokens a run asks; and `map_in_arrow`, the
tasks' rows for columns of any name (driver side)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import pyarrow as pa
from pyspark.accumulators import Accumulator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_vllm.driver.progress import ProgressBoard
from spark_vllm.request.kinds import RequestKind
from spark_vllm.spec import JobSpec
from spark_vllm.storage.fingerprint import RunRecord
from spark_vllm.storage.stores import OutputStore
from spark_vllm.task.tally import Tally


@dataclass
class Census:
    """The input and the output before a run, counted in one pass (see `take_census`).
    Counts are of input rows unless they say otherwise."""

    rows: int = 0
    bad_ids: int = 0  # ids that are null or on several rows
    skipped: int = 0  # ids whose latest answer succeeded with these settings
    stale: int = 0  # ids whose latest answer succeeded with other settings
    stale_runs: list[str] = field(default_factory=list)  # the runs that made those
    retried: int = 0  # ids whose latest attempt failed
    earlier_ids: int = 0  # ids at the output, input or not
    earlier_failed: int = 0  # of those, the ones whose latest attempt failed
    max_tokens: int | None = None  # the largest per-row max_tokens (a sampling column's)
    held_back: int = 0  # rows to send that `limit` leaves for a later run

    @property
    def to_send(self) -> int:
        return self.rows - self.skipped - self.held_back


@dataclass
class Plan:
    """A job ready to run: its kind and store, the lazy result (None: nothing to send,
    and `note` says why), the stored rows' schema, the census, the tally the tasks count
    into, and the record the run leaves before it sends anything."""

    kind: RequestKind
    store: OutputStore
    result: DataFrame | None
    schema: T.StructType | None
    run_id: str
    census: Census
    record: RunRecord
    started: float
    earlier_runs: bool = False
    note: str = ""
    tally: Accumulator[Tally] | None = None
    progress: ProgressBoard | None = None  # where the tasks report as they go
    to_send: DataFrame | None = None  # the input rows the run sends, in its partitions
    waited_s: float = 0.0  # waiting for the endpoint: a local vLLM's start, the driver's wait


def largest_max_tokens(spec: JobSpec, census: Census) -> int | None:
    """The largest max_tokens any row of a generating job asks for: with a sampling
    column, the census's (each row's own, else the spec's); else the spec's. None: none
    is set, or the kind has none."""
    if spec.task == "embedding" or spec.input.format == "openai-batch":
        return None
    if spec.sampling_column is not None:
        return census.max_tokens
    return spec.sampling.max_tokens


ArrowMap = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]


def map_in_arrow(df: DataFrame, fn: ArrowMap, schema: T.StructType | str) -> DataFrame:
    """`df.mapInArrow(fn, schema)` for columns of any name. PySpark's mapInArrow reads each
    column as `df[name]`, which takes `ticket.id` for the field `id` of a column `ticket`
    (BI exports write such names): the columns go in under names of their position, and
    `fn` gets each batch under the columns' own names."""
    names = df.columns
    if not any("." in name or "`" in name for name in names):
        return df.mapInArrow(fn, schema)
    quoted = ["`" + name.replace("`", "``") + "`" for name in names]
    placed = df.select(*[F.col(q).alias(f"_{i}") for i, q in enumerate(quoted)])
    return placed.mapInArrow(partial(_named, fn=fn, names=names), schema)


def _named(
    batches: Iterator[pa.RecordBatch], fn: ArrowMap, names: list[str]
) -> Iterator[pa.RecordBatch]:
    return fn(pa.RecordBatch.from_arrays(b.columns, names=names) for b in batches)
