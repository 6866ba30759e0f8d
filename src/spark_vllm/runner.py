"""The partition runner: what one Spark task does with its slice of the input.

It waits for the sidecar, then streams the partition through a bounded window of
requests in flight (never the whole partition in memory, never one request at a
time) and yields result rows as they complete, in Arrow record batches. Every input
row gives exactly one result row; a row that fails is a row with `error` set.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import queue
import threading
from collections.abc import Coroutine, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import pyarrow as pa

from spark_vllm import openai_batch
from spark_vllm.adaptive import AdaptiveWindow, WindowPolicy
from spark_vllm.client import Result, SidecarClient, read_api_key, server_root, wait_ready
from spark_vllm.prompt import PromptBuilder, RowError
from spark_vllm.retry import RetryPolicy
from spark_vllm.spec import LOGPROBS_COLUMN, result_columns, unstored_field
from spark_vllm.structured import AnswerError, AnswerParser

T = TypeVar("T")

# Result rows are handed back to Spark in batches of at most this many rows.
FLUSH_ROWS = 256

# Request fields a row's sampling column may not set: the job builds these itself.
RESERVED_FIELDS = frozenset({"model", "messages", "prompt", "input"})
# Set per row, these would change the output's columns from row to row.
COLUMN_FIELDS = frozenset({"logprobs", "top_logprobs"})


class RowFailed(RuntimeError):
    """A row failed and the job says on_error: fail."""


class ErrorBudgetExceeded(RuntimeError):
    """More of a task's rows failed than max_error_rate allows."""


def row_seed(row_id: Any) -> int:
    """A sampling seed derived from the row id (`seed: auto`): same id, same seed."""
    digest = hashlib.sha256(str(row_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class TaskConfig:
    """Everything a task needs, built on the driver and shipped to executors."""

    base_url: str
    model: str
    task: str
    sampling: dict[str, Any]
    template: str | None
    system: str | None
    prompt_column: str | None
    policy: RetryPolicy
    window: int
    ready_timeout_s: float
    request_timeout_s: float
    connect_timeout_s: float
    on_error: str
    id_column: str
    keep_columns: tuple[str, ...]
    output_schema: pa.Schema
    api_key_env: str | None = None
    flush_rows: int = FLUSH_ROWS
    outage_timeout_s: float | None = None
    seed_auto: bool = False
    max_error_rate: float | None = None
    error_rate_min_rows: int = 50
    adaptive: bool = False
    max_window: int = 0  # adaptive: the largest window a task may open (0: `window`)
    metrics_interval_s: float = 0.5
    sampling_column: str | None = None
    answer_schema: dict[str, Any] | None = None  # structured output: the JSON schema
    answer_fields: tuple[str, ...] = ()  # its top-level properties, one column each
    batch_size: int = 1  # rows per request (embedding; the generating tasks send one)
    logprobs: bool = False  # sampling.logprobs: a logprobs column


class _LoopThread:
    """A private asyncio event loop on a daemon thread, fed from synchronous code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        async def _cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.submit(_cancel_rest()).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


def row_sampling(value: Any, column: str) -> dict[str, Any]:
    """A row's sampling overrides from its sampling column: struct, map or JSON object.

    Null (or a null field) overrides nothing; anything else that is not a mapping with
    string keys is a RowError naming the column.
    """
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(f"sampling column {column!r} is not a JSON object: {exc.msg}") from None
    elif isinstance(value, list) and all(isinstance(kv, tuple) and len(kv) == 2 for kv in value):
        value = dict(value)  # an Arrow map arrives as a list of (key, value) pairs
    if not isinstance(value, Mapping):
        raise RowError(
            f'sampling column {column!r}: expected an object such as {{"max_tokens": 64}}, '
            f"got {type(value).__name__}"
        )
    fields = {str(k): v for k, v in value.items() if v is not None}
    reserved = sorted((RESERVED_FIELDS | COLUMN_FIELDS).intersection(fields))
    if reserved:
        raise RowError(
            f"sampling column {column!r} may not set {reserved}: the job sets the prompt "
            "and the model itself, and log-probabilities are set for the whole job "
            "(sampling.logprobs)"
        )
    for key, val in fields.items():
        reason = unstored_field(key, val)
        if reason is not None:
            raise RowError(f"sampling column {column!r} sets {key}={val!r}: {reason}")
    return fields


class _Columns:
    """Result rows gathered column by column, flushed as one Arrow record batch."""

    def __init__(self, cfg: TaskConfig) -> None:
        self.schema = cfg.output_schema
        self.copied = (cfg.id_column, *cfg.keep_columns)
        self.answer_fields = cfg.answer_fields
        self.results = result_columns(cfg.task) + ((LOGPROBS_COLUMN,) if cfg.logprobs else ())
        self.data: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        self.rows = 0

    def add(
        self, row: dict[str, Any], result: Result, answer: dict[str, Any] | None = None
    ) -> None:
        data = self.data
        for name in self.copied:
            data[name].append(row[name])
        for name in self.results:
            data[name].append(getattr(result, name))
        for name in self.answer_fields:
            data[name].append(answer.get(name) if answer is not None else None)
        self.rows += 1

    def flush(self) -> pa.RecordBatch:
        batch = pa.RecordBatch.from_pydict(self.data, schema=self.schema)
        for values in self.data.values():
            values.clear()
        self.rows = 0
        return batch


Rows = list[dict[str, Any]]


def _put_done(
    done: queue.SimpleQueue[tuple[Rows, Future[list[Result]]]],
    rows: Rows,
    fut: Future[list[Result]],
) -> None:
    done.put((rows, fut))


async def _one(call: Coroutine[Any, Any, Result]) -> list[Result]:
    return [await call]


def answer_parser(cfg: TaskConfig) -> AnswerParser | None:
    """The structured-output parser, typed like the answer's output columns."""
    if cfg.answer_schema is None:
        return None
    fields = [cfg.output_schema.field(name) for name in cfg.answer_fields]
    return AnswerParser(cfg.answer_schema, pa.struct(fields))


def window_for(cfg: TaskConfig) -> AdaptiveWindow | None:
    """The task's adaptive window, or None for a fixed one."""
    if not cfg.adaptive:
        return None
    policy = WindowPolicy(minimum=1, maximum=max(cfg.max_window, cfg.window))
    return AdaptiveWindow(
        key=server_root(cfg.base_url) + "/metrics",
        policy=policy,
        initial=cfg.window,
        interval_s=cfg.metrics_interval_s,
    )


def build_request(builder: PromptBuilder | None, cfg: TaskConfig, row: dict[str, Any]) -> Any:
    """What to send for one row: its request fields (prompt, per-row sampling, seed), the
    input text (embedding) or (path, body) (openai-batch); RowError if it can't."""
    if builder is None:
        return openai_batch.request(row)
    fields = builder.build(row)
    if cfg.task == "embedding":
        return fields["input"]
    if cfg.sampling_column is not None:
        fields.update(row_sampling(row.get(cfg.sampling_column), cfg.sampling_column))
    if cfg.seed_auto and "seed" not in fields:
        fields["seed"] = row_seed(row[cfg.id_column])
    return fields


def run_partition(batches: Iterator[pa.RecordBatch], cfg: TaskConfig) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: input batches in, result batches out, one row per input row."""
    api_key = read_api_key(cfg.api_key_env)
    lines = cfg.task == "openai-batch"
    builder = (
        None if lines else PromptBuilder(cfg.task, cfg.template, cfg.system, cfg.prompt_column)
    )
    adaptive = window_for(cfg)
    client = SidecarClient(
        cfg.base_url,
        cfg.model,
        cfg.task,
        cfg.sampling,
        cfg.policy,
        cfg.request_timeout_s,
        cfg.connect_timeout_s,
        pool_size=adaptive.policy.maximum + 1 if adaptive else cfg.window,  # +1: /metrics
        api_key=api_key,
        outage_s=cfg.outage_timeout_s,
        logprobs=cfg.logprobs,
    )
    done: queue.SimpleQueue[tuple[Rows, Future[list[Result]]]] = queue.SimpleQueue()
    out = _Columns(cfg)
    pending = 0
    parser = answer_parser(cfg)

    seen = failed = 0

    def collect(row: dict[str, Any], result: Result) -> None:
        nonlocal seen, failed
        seen += 1
        answer = None
        if parser is not None and result.error is None:
            try:
                answer = parser.parse(result.response)
            except AnswerError as exc:
                result.error = f"bad answer: {exc}"
        if result.error is not None:
            failed += 1
            if cfg.on_error == "fail":
                raise RowFailed(
                    f"row {cfg.id_column}={row[cfg.id_column]!r} failed: {result.error} "
                    "(the job spec says on_error: fail)"
                )
            rate = cfg.max_error_rate
            if rate is not None and seen >= cfg.error_rate_min_rows and failed > rate * seen:
                raise ErrorBudgetExceeded(
                    f"{failed} of {seen} rows failed in this task, more than max_error_rate "
                    f"{rate:g}; last error: {result.error}"
                )
        if lines:
            result.line = openai_batch.output_line(row[cfg.id_column], result)
        out.add(row, result, answer)

    def take_one(timeout: float | None = None) -> None:
        nonlocal pending
        try:
            rows, fut = done.get(timeout=timeout)
        except queue.Empty:
            return
        pending -= len(rows)
        for row, result in zip(rows, fut.result(), strict=True):
            collect(row, result)

    def window() -> int:
        return adaptive.limit if adaptive is not None else cfg.window

    # Rows waiting to go out together (embedding: up to batch_size per request).
    group: Rows = []
    inputs: list[Any] = []

    started = False

    def start() -> None:
        """Wait for the sidecar, once a row needs sending: a task with no rows, or none
        that can become a request, never waits for it."""
        nonlocal started
        wait_ready(cfg.base_url, cfg.model, cfg.ready_timeout_s, api_key)
        if adaptive is not None:
            loop.submit(adaptive.run(client.fetch_metrics, lambda: pending))
        started = True

    def send() -> None:
        """Send the group once the window has room (requests in flight count in rows)."""
        nonlocal pending, group, inputs
        if not started:
            start()
        while pending >= window():
            # Wake now and then: an adaptive window may have grown meanwhile.
            take_one(timeout=cfg.metrics_interval_s if adaptive else None)
        if cfg.task == "embedding":
            fut = loop.submit(client.embed(inputs))
        elif lines:
            fut = loop.submit(_one(client.call_raw(*inputs[0])))
        else:
            fut = loop.submit(_one(client.call(inputs[0])))
        fut.add_done_callback(partial(_put_done, done, group))
        pending += len(group)
        group, inputs = [], []

    loop = _LoopThread()
    try:
        loop.submit(client.__aenter__()).result()
        for batch in batches:
            for row in batch.to_pylist():
                try:
                    fields = build_request(builder, cfg, row)
                except RowError as exc:
                    collect(row, Result(error=f"bad input: {exc}"))
                else:
                    group.append(row)
                    inputs.append(fields)
                    if len(group) >= cfg.batch_size:
                        send()
                while not done.empty():
                    take_one()
                if out.rows >= cfg.flush_rows:
                    yield out.flush()
        if group:
            send()
        while pending:
            take_one()
            if out.rows >= cfg.flush_rows:
                yield out.flush()
        if out.rows:
            yield out.flush()
    finally:
        try:
            loop.submit(client.__aexit__(None, None, None)).result(timeout=30)
        finally:
            loop.close()
