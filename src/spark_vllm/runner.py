"""The partition runner: what one Spark task does with its slice of the input.

It waits for the sidecar, then streams the partition through a bounded window of
requests in flight (never the whole partition in memory, never one request at a
time) and yields result rows as they complete, in Arrow record batches. Every input
row gives exactly one result row; a row that fails is a row with `error` set.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import pyarrow as pa

from spark_vllm.client import Result, SidecarClient, read_api_key, wait_ready
from spark_vllm.prompt import PromptBuilder, RowError
from spark_vllm.retry import RetryPolicy

T = TypeVar("T")

# Result rows are handed back to Spark in batches of at most this many rows.
FLUSH_ROWS = 256


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


def _row_out(cfg: TaskConfig, row: dict[str, Any], result: Result) -> dict[str, Any]:
    out = {cfg.id_column: row[cfg.id_column]}
    for name in cfg.keep_columns:
        out[name] = row[name]
    out.update(
        response=result.response,
        finish_reason=result.finish_reason,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        latency_ms=result.latency_ms,
        attempts=result.attempts,
        error=result.error,
    )
    return out


def _put_done(
    done: queue.SimpleQueue[tuple[dict[str, Any], Future[Result]]],
    row: dict[str, Any],
    fut: Future[Result],
) -> None:
    done.put((row, fut))


def run_partition(batches: Iterator[pa.RecordBatch], cfg: TaskConfig) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: input batches in, result batches out, one row per input row."""
    api_key = read_api_key(cfg.api_key_env)
    wait_ready(cfg.base_url, cfg.model, cfg.ready_timeout_s, api_key)
    builder = PromptBuilder(cfg.task, cfg.template, cfg.system, cfg.prompt_column)
    client = SidecarClient(
        cfg.base_url,
        cfg.model,
        cfg.task,
        cfg.sampling,
        cfg.policy,
        cfg.request_timeout_s,
        cfg.connect_timeout_s,
        pool_size=cfg.window,
        api_key=api_key,
        outage_s=cfg.outage_timeout_s,
    )
    done: queue.SimpleQueue[tuple[dict[str, Any], Future[Result]]] = queue.SimpleQueue()
    out: list[dict[str, Any]] = []
    pending = 0

    seen = failed = 0

    def collect(row: dict[str, Any], result: Result) -> None:
        nonlocal seen, failed
        seen += 1
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
        out.append(_row_out(cfg, row, result))

    def take_one() -> None:
        nonlocal pending
        row, fut = done.get()
        pending -= 1
        collect(row, fut.result())

    def flush() -> pa.RecordBatch:
        batch = pa.RecordBatch.from_pylist(out, schema=cfg.output_schema)
        out.clear()
        return batch

    loop = _LoopThread()
    try:
        loop.submit(client.__aenter__()).result()
        for batch in batches:
            for row in batch.to_pylist():
                try:
                    fields = builder.build(row)
                    if cfg.seed_auto:
                        fields["seed"] = row_seed(row[cfg.id_column])
                except RowError as exc:
                    collect(row, Result(error=f"bad input: {exc}"))
                else:
                    while pending >= cfg.window:
                        take_one()
                    fut = loop.submit(client.call(fields))
                    fut.add_done_callback(partial(_put_done, done, row))
                    pending += 1
                while not done.empty():
                    take_one()
                if len(out) >= cfg.flush_rows:
                    yield flush()
        while pending:
            take_one()
            if len(out) >= cfg.flush_rows:
                yield flush()
        if out:
            yield flush()
    finally:
        try:
            loop.submit(client.__aexit__(None, None, None)).result(timeout=30)
        finally:
            loop.close()
