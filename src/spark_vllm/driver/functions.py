"""Column functions for any PySpark job: `df.withColumn("answer", chat("question", model=...))`
and `df.withColumn("vec", embed("text", model=...))`.

They run the job's own partition runner (bounded window of requests in flight, adaptive
by default, retries, the outage gate, one error per failed row) inside an Arrow UDF, and
hand results back in input order, one struct per row. chat() gives

    response, finish_reason, prompt_tokens, completion_tokens, latency_ms, attempts, error

and embed() gives

    embedding (array<float>), latency_ms, attempts, error

A row that fails has `error` set and `response` / `embedding` null; the query goes on.
Each executor needs the vLLM server at `base_url` (the sidecar on 127.0.0.1:8000 by
default); embed() needs one serving an embedding model (`--runner pooling`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from spark_vllm.request.fields import unknown_field
from spark_vllm.request.kinds import Chat, Embedding, RequestKind
from spark_vllm.request.prompt import PromptBuilder
from spark_vllm.spec import (
    DEFAULT_BASE_URL,
    ConcurrencySpec,
    EmbeddingSpec,
    RetrySpec,
    TimeoutSpec,
    default,
)
from spark_vllm.task.retry import RetryPolicy
from spark_vllm.task.runner import Concurrency, Endpoint, TaskConfig, Timeouts, run_partition

_INDEX = "__spark_vllm_index"
_PROMPT = "prompt"

# The struct each row gets: the job's result columns for its kind.
RESULT_TYPE = T.StructType(list(Chat.fields))
EMBEDDING_TYPE = T.StructType(list(Embedding.fields))


class _InOrder:
    """Puts the runner's results (in completion order) back in input-batch order."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema  # of the runner's result batches
        self.bounds: list[int] = [0]  # bounds[k]: index of batch k's first row
        self.left: list[int] = []  # rows of batch k still running
        self.done: list[pa.RecordBatch] = []
        self.emitted = 0  # batches handed back so far

    def feed(self, arrays: Iterator[pa.Array]) -> Iterator[pa.RecordBatch]:
        """Number the rows of every input batch and remember where each batch starts."""
        for array in arrays:
            start = self.bounds[-1]
            self.bounds.append(start + len(array))
            self.left.append(len(array))
            index = pa.array(range(start, start + len(array)), type=pa.int64())
            yield pa.RecordBatch.from_arrays([index, array], names=[_INDEX, _PROMPT])

    def take(self, batch: pa.RecordBatch) -> Iterator[pa.Array]:
        """Record finished rows; yield every input batch that is now complete, in order."""
        self.done.append(batch)
        for i in batch.column(_INDEX).to_pylist():
            self.left[bisect.bisect_right(self.bounds, i) - 1] -= 1
        while self.emitted < len(self.left) and self.left[self.emitted] == 0:
            yield self._emit(self.emitted)
            self.emitted += 1

    def _emit(self, k: int) -> pa.Array:
        lo, hi = self.bounds[k], self.bounds[k + 1]
        table = pa.Table.from_batches(self.done, schema=self.schema)
        index = table.column(_INDEX)
        mine = pc.and_(pc.greater_equal(index, lo), pc.less(index, hi))
        rest = table.filter(pc.invert(mine))
        self.done = rest.to_batches()
        rows = table.filter(mine).sort_by(_INDEX)
        names = [name for name in self.schema.names if name != _INDEX]
        return pa.StructArray.from_arrays(
            [rows.column(name).combine_chunks() for name in names], names=names
        )


def _answers(arrays: Iterator[pa.Array], cfg: TaskConfig) -> Iterator[pa.Array]:
    # The runner gives every row a result (it checks), so every input batch comes out.
    order = _InOrder(cfg.output_schema)
    for batch in run_partition(order.feed(arrays), cfg):
        yield from order.take(batch)
    yield from order.take(pa.RecordBatch.from_pylist([], schema=cfg.output_schema))  # empty inputs


def _config(
    kind: RequestKind,
    *,
    base_url: str,
    window: int,
    adaptive: bool,
    max_window: int,
    retries: int,
    request_timeout_s: float,
    ready_timeout_s: float,
    api_key_env: str | None,
) -> TaskConfig:
    for name, value in (("window", window), ("max_window", max_window), ("retries", retries)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    schema = T.StructType([T.StructField(_INDEX, T.LongType()), *kind.result_fields()])
    return TaskConfig(
        kind=kind,
        endpoint=Endpoint(base_url.rstrip("/"), api_key_env),
        id_column=_INDEX,
        output_schema=to_arrow_schema(schema),
        retries=RetryPolicy(attempts=retries),
        timeouts=Timeouts(ready_s=ready_timeout_s, request_s=request_timeout_s),
        concurrency=Concurrency(per_task=window, adaptive=adaptive, max_per_task=max_window),
    )


def chat(
    prompt: Column | str,
    *,
    model: str,
    base_url: str = DEFAULT_BASE_URL,
    system: str | None = None,
    sampling: dict[str, Any] | None = None,
    window: int = 64,
    adaptive: bool = True,
    max_window: int = default(ConcurrencySpec, "max_per_task"),
    retries: int = default(RetrySpec, "attempts"),
    request_timeout_s: float = default(TimeoutSpec, "request_s"),
    ready_timeout_s: float = default(TimeoutSpec, "ready_s"),
    api_key_env: str | None = None,
) -> Column:
    """A chat completion per row of `prompt`: a user message (string), or a whole
    conversation (an array of {role, content} structs, or a JSON string of one).

    `system` is a system message put before a string prompt; `sampling` holds request
    fields sent with every row (max_tokens, temperature, ignore_eos, ...): ValueError for
    one vLLM's chat request does not have. `window` is
    where each task's requests in flight start; with `adaptive`, they follow vLLM's queue
    up to `max_window`, as in the job (`concurrency.mode: adaptive`).
    """
    wrong = [
        f"sampling[{key!r}] {why}"
        for key in sampling or {}
        if (why := unknown_field(key, "chat")) is not None
    ]
    if wrong:  # vLLM would ignore them: a misspelled key samples at its default
        raise ValueError("\n".join(wrong))
    kind = Chat(model, PromptBuilder("chat", system=system, column=_PROMPT), sampling)
    cfg = _config(
        kind,
        base_url=base_url,
        window=window,
        adaptive=adaptive,
        max_window=max_window,  # the runner opens at most max(max_window, window)
        retries=retries,
        request_timeout_s=request_timeout_s,
        ready_timeout_s=ready_timeout_s,
        api_key_env=api_key_env,
    )
    return _apply(cfg, RESULT_TYPE, prompt)


def embed(
    text: Column | str,
    *,
    model: str,
    base_url: str = DEFAULT_BASE_URL,
    batch_size: int = default(EmbeddingSpec, "batch_size"),
    dimensions: int | None = None,
    truncate_prompt_tokens: int | None = None,
    window: int = 256,
    adaptive: bool = True,
    max_window: int = default(ConcurrencySpec, "max_per_task"),
    retries: int = default(RetrySpec, "attempts"),
    request_timeout_s: float = default(TimeoutSpec, "request_s"),
    ready_timeout_s: float = default(TimeoutSpec, "ready_s"),
    api_key_env: str | None = None,
) -> Column:
    """An embedding per row of the string column `text`, `batch_size` rows per
    /v1/embeddings request, as in the job (`task: embedding`).

    `window` counts rows in flight. A request that vLLM refuses as a whole (one input
    too long, say) is split, so only the bad rows get an error. `dimensions` and
    `truncate_prompt_tokens` go to vLLM with every request.
    """
    options = EmbeddingSpec(
        batch_size=batch_size, dimensions=dimensions, truncate_prompt_tokens=truncate_prompt_tokens
    )
    builder = PromptBuilder("embedding", column=_PROMPT)
    kind = Embedding(model, builder, options.request_fields(), batch_size=options.batch_size)
    cfg = _config(
        kind,
        base_url=base_url,
        window=window,
        adaptive=adaptive,
        max_window=max_window,
        retries=retries,
        request_timeout_s=request_timeout_s,
        ready_timeout_s=ready_timeout_s,
        api_key_env=api_key_env,
    )
    return _apply(cfg, EMBEDDING_TYPE, text)


def _apply(cfg: TaskConfig, result_type: T.StructType, column: Column | str) -> Column:
    from pyspark.sql.pandas.functions import arrow_udf

    # The type hints make it an iterator UDF: the runner's window spans the input batches.
    def answers(arrays: Iterator[pa.Array]) -> Iterator[pa.Array]:
        return _answers(arrays, cfg)

    udf = arrow_udf(answers, result_type)  # type: ignore[call-overload]  # stubs lag 4.1
    result: Column = udf(F.col(column) if isinstance(column, str) else column)
    return result


__all__ = ["EMBEDDING_TYPE", "RESULT_TYPE", "chat", "embed"]
