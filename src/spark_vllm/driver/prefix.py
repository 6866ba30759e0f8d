"""Prefix-aware scheduling: rows that share a long prompt prefix go to one task, back to
back, so the sidecar's prefix cache computes the prefix once (`prefix` in the job spec).

A row's prefix group is a 64-bit key: a hash of its `prefix.columns`, or of the first
`prefix.chars` characters of its rendered request. One Spark job counts the rows of each
group; the driver packs the groups into the job's tasks (`PrefixPlan`): a group that fits
in one task's share of the rows stays whole, a larger one is cut into pieces of that
share, and the pieces go, largest first, to the task with the fewest rows so far. Each
row then joins its piece's task, and within a task the rows are sorted by group, so a
group's requests go out together. The groups' sizes are collected on the driver: a few
million groups at most.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

from spark_vllm.driver.plan import map_in_arrow
from spark_vllm.errors import SpecError
from spark_vllm.request.kinds import RequestKind
from spark_vllm.spec import PrefixSpec

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# The helper columns (dropped before the rows reach the tasks).
KEY, INDEX, TASK = "__sv_prefix", "__sv_prefix_index", "__sv_prefix_task"
FIRST, LAST, SPARE = "__sv_prefix_first", "__sv_prefix_last", "__sv_prefix_spare"
# The most groups whose sizes the driver collects and packs.
MAX_GROUPS = 2_000_000


@dataclass(frozen=True)
class Piece:
    """Rows `first` .. `first + rows - 1` (in id order) of group `key`, sent by `task`."""

    key: int
    first: int
    rows: int
    task: int


@dataclass(frozen=True)
class PrefixPlan:
    """The groups packed into `tasks` tasks: every piece, the rows each task got, and how
    many groups had to be split."""

    pieces: list[Piece]
    loads: list[int]
    groups: int
    split: int

    @classmethod
    def make(cls, sizes: list[tuple[int, int]], tasks: int) -> PrefixPlan:
        """Pack groups (key, rows) into `tasks` tasks (see the module's text). The same
        sizes give the same plan."""
        total = sum(n for _, n in sizes)
        share = max(1, math.ceil(total / max(tasks, 1)))
        cut: list[tuple[int, int, int]] = []  # (rows, key, first)
        split = 0
        for key, n in sizes:
            if n > share:
                split += 1
            for first in range(0, n, share):
                cut.append((min(share, n - first), key, first))
        cut.sort(key=lambda piece: (-piece[0], piece[1], piece[2]))
        heap = [(0, task) for task in range(tasks)]
        loads = [0] * tasks
        pieces = []
        for rows, key, first in cut:
            load, task = heapq.heappop(heap)
            pieces.append(Piece(key, first, rows, task))
            loads[task] = load + rows
            heapq.heappush(heap, (load + rows, task))
        return cls(pieces, loads, len(sizes), split)

    def line(self) -> str:
        """What the driver says about the plan, e.g. `spark-vllm prefix groups: 64 groups
        (0 split) in 4 tasks; the largest task has 260 rows, 1.02 x the mean`."""
        mean = sum(self.loads) / len(self.loads) if self.loads else 0.0
        largest = max(self.loads, default=0)
        ratio = largest / mean if mean else 0.0
        return (
            f"spark-vllm prefix groups: {self.groups:,} groups ({self.split:,} split) in "
            f"{len(self.loads):,} tasks; the largest task has {largest:,} rows, "
            f"{ratio:.2f} x the mean"
        )


def _key_of(text: bytes) -> int:
    """A signed 64-bit key of `text`."""
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big", signed=True)


def rendered_keys(
    batches: Iterator[pa.RecordBatch], kind: RequestKind, chars: int
) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: each row with KEY, the hash of its rendered request's first
    `chars` characters (a row that cannot be rendered: of nothing)."""
    for batch in batches:
        keys = []
        for row in batch.to_pylist(maps_as_pydicts="lossy"):  # as the tasks read it
            try:
                text = orjson.dumps(kind.request(row)).decode()[:chars]
            except Exception:  # a bad row: it becomes an error row in its task anyway
                text = ""
            keys.append(_key_of(text.encode()))
        yield batch.append_column(KEY, pa.array(keys, pa.int64()))


def task_values(spark: SparkSession, tasks: int) -> list[int]:
    """For each task index t, a number whose Spark hash partitioning over `tasks`
    partitions (Murmur3, seed 42, as `repartition(n, column)` uses) lands in partition t."""
    from pyspark.sql import functions as F

    span = 64 * tasks
    while True:
        found = (
            spark.range(0, span)
            .select("id", F.pmod(F.hash("id"), F.lit(tasks)).alias("p"))
            .groupBy("p")
            .agg(F.min("id").alias("id"))
            .collect()
        )
        values = {row["p"]: row["id"] for row in found}
        if len(values) == tasks:
            return [values[t] for t in range(tasks)]
        span *= 4


def group_by_prefix(
    spark: SparkSession,
    df: DataFrame,
    spec: PrefixSpec,
    id_column: str,
    tasks: int,
    kind: RequestKind,
) -> DataFrame:
    """`df` in `tasks` partitions, each prefix group whole where it fits and in sequence
    (see the module's text); says how balanced the tasks are on stderr."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    def quoted(name: str) -> Any:
        return F.col("`" + name.replace("`", "``") + "`")

    if spec.columns is not None:
        # each column with whether it is null: (a, null) and (null, a) are other groups
        parts = [x for c in spec.columns for x in (quoted(c), quoted(c).isNull())]
        keyed = df.withColumn(KEY, F.xxhash64(*parts))
    else:
        assert spec.chars is not None
        schema = T.StructType([*df.schema.fields, T.StructField(KEY, T.LongType())])
        keyed = map_in_arrow(df, partial(rendered_keys, kind=kind, chars=spec.chars), schema)
    counted = keyed.groupBy(KEY).count().limit(MAX_GROUPS + 1).collect()
    if len(counted) > MAX_GROUPS:
        raise SpecError(
            f"prefix: more than {MAX_GROUPS:,} prefix groups, too many to plan on the driver; "
            "group by coarser prefix.columns (a document id, not a row id), or leave prefix out"
        )
    plan = PrefixPlan.make(sorted((r[KEY], r["count"]) for r in counted), tasks)
    print(plan.line(), file=sys.stderr, flush=True)
    values = task_values(spark, tasks)
    pieces = spark.createDataFrame(
        [(p.key, p.first, p.first + p.rows, values[p.task]) for p in plan.pieces],
        f"{SPARE} bigint, {FIRST} bigint, {LAST} bigint, {TASK} bigint",
    )
    order = Window.partitionBy(KEY).orderBy(quoted(id_column))
    numbered = keyed.withColumn(INDEX, F.row_number().over(order) - 1)
    placed = numbered.join(
        F.broadcast(pieces),
        (numbered[KEY] == pieces[SPARE])
        & (numbered[INDEX] >= pieces[FIRST])
        & (numbered[INDEX] < pieces[LAST]),
        "left",  # a row the count did not see (an input that grew) is still sent
    )
    # such a row goes to a task by its key: its group stays together all the same
    spare = F.element_at(
        F.array(*[F.lit(v) for v in values]), (F.pmod(F.col(KEY), F.lit(tasks)) + 1).cast("int")
    )
    return (
        placed.withColumn(TASK, F.coalesce(F.col(TASK), spare))
        .repartition(tasks, TASK)
        .sortWithinPartitions(KEY, INDEX)
        .drop(KEY, INDEX, TASK, SPARE, FIRST, LAST)
    )
