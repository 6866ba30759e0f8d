"""The partition runner: what one Spark task does with its slice of the input.

It streams the partition through a bounded window of requests in flight (never the
whole partition in memory, never one request at a time) and yields result rows as they
complete, in Arrow record batches. It waits for the sidecar only once a row needs
sending. Every input row it takes gives exactly one result row — checked here, for the
job and the column functions alike; a row that fails is a row with `error` set. Under a
budget it takes only the rows the driver grants (`BudgetLease`): once none are granted,
the rest of the partition stays unsent, for a later run. What a row
becomes, and what its answer gives, is its kind's business (see kinds).
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa

from spark_vllm.errors import ContextExceeded, ErrorBudgetExceeded, RowError, RowFailed
from spark_vllm.request.kinds import RequestKind, row_request
from spark_vllm.request.result import Result
from spark_vllm.spec import ConcurrencySpec, JobSpec, TimeoutSpec, default
from spark_vllm.task.adaptive import AdaptiveWindow, WindowPolicy
from spark_vllm.task.budget import GRANTED, WAIT, BudgetLease
from spark_vllm.task.client import (
    SidecarClient,
    read_api_key,
    served_context,
    server_root,
    wait_ready,
)
from spark_vllm.task.lora import Adapters
from spark_vllm.task.retry import RetryPolicy
from spark_vllm.task.tally import (
    REPORT_TIMEOUT_S,
    Counts,
    ProgressReporter,
    ProgressTarget,
    Tally,
    task_identity,
)

T = TypeVar("T")

# Result rows are handed back to Spark in batches of at most this many rows.
FLUSH_ROWS = 256
# Seconds a task with nothing out waits before asking the budget again.
LEASE_RETRY_S = 0.5


@dataclass(frozen=True)
class Endpoint:
    """The sidecar: its OpenAI-compatible base URL, and the environment variable holding
    its API key (the spec's `endpoint`; the model is the kind's)."""

    base_url: str
    api_key_env: str | None = None


@dataclass(frozen=True)
class Timeouts:
    """The spec's `timeouts`, in seconds."""

    ready_s: float = default(TimeoutSpec, "ready_s")
    request_s: float = default(TimeoutSpec, "request_s")
    connect_s: float = default(TimeoutSpec, "connect_s")
    outage_s: float = default(TimeoutSpec, "outage_s")


@dataclass(frozen=True)
class Concurrency:
    """Requests in flight for one task: where the window starts (`per_task`), and with
    `adaptive`, how far the sidecar's /metrics may open it (`max_per_task`)."""

    per_task: int = 64  # the spec's per_executor, split across an executor's task slots
    adaptive: bool = default(ConcurrencySpec, "mode") == "adaptive"
    max_per_task: int = default(ConcurrencySpec, "max_per_task")
    metrics_interval_s: float = default(ConcurrencySpec, "metrics_interval_s")


@dataclass(frozen=True)
class ErrorPolicy:
    """What a failed row does: `record` it, or `fail` the task; and the error budget."""

    on_error: str = default(JobSpec, "on_error")
    max_error_rate: float | None = default(JobSpec, "max_error_rate")
    error_rate_min_rows: int = default(JobSpec, "error_rate_min_rows")


@dataclass(frozen=True)
class TaskConfig:
    """Everything a task needs, built on the driver and shipped to the executors."""

    kind: RequestKind
    endpoint: Endpoint
    id_column: str
    output_schema: pa.Schema
    keep_columns: tuple[str, ...] = ()
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    timeouts: Timeouts = field(default_factory=Timeouts)
    concurrency: Concurrency = field(default_factory=Concurrency)
    errors: ErrorPolicy = field(default_factory=ErrorPolicy)
    flush_rows: int = FLUSH_ROWS
    # A Spark accumulator of task.tally.Tally: what the task counted goes there at its end.
    tally: Any = None
    # The driver's progress endpoint: the task reports its counts there as it goes.
    progress: ProgressTarget | None = None
    # Under a budget, the task leases its rows from the driver's endpoint (`progress`).
    budget: bool = False
    # The largest max_tokens a row asks for (the spec's, or a per-row column's largest):
    # checked against the served model's context before the task's first request.
    max_tokens: int | None = None
    # lora: rows go to adapters; those not served yet are loaded from these paths
    # (name, path) on first use (see `lora`).
    lora: bool = False
    lora_modules: tuple[tuple[str, str], ...] = ()


async def _start_task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """`coro` as a task of the running loop (to cancel and await it there later)."""
    return asyncio.get_running_loop().create_task(coro)


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (vLLM brings it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _LoopThread:
    """A private asyncio event loop on a daemon thread, fed from synchronous code."""

    def __init__(self) -> None:
        self.loop = _new_event_loop()
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


class _Columns:
    """Result rows gathered column by column, flushed as one Arrow record batch."""

    def __init__(self, cfg: TaskConfig) -> None:
        self.schema = cfg.output_schema
        self.copied = (cfg.id_column, *cfg.keep_columns)
        self.data: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        self.rows = 0

    def add(self, row: dict[str, Any], values: dict[str, Any]) -> None:
        data = self.data
        for name in self.copied:
            data[name].append(row[name])
        for name, value in values.items():
            data[name].append(value)
        self.rows += 1

    def flush(self) -> pa.RecordBatch:
        batch = pa.RecordBatch.from_pydict(self.data, schema=self.schema)
        for values in self.data.values():
            values.clear()
        self.rows = 0
        return batch


class _Latencies:
    """Request latencies in ms: their mean, and their 95th percentile from a uniform
    sample of at most `keep` (reservoir sampling), so a long task's memory stays flat."""

    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self.count = 0
        self.total = 0.0
        self.sample: list[float] = []
        self._random = random.Random(0)  # noqa: S311  # a sample, not a secret

    def add(self, ms: float) -> None:
        self.count += 1
        self.total += ms
        if len(self.sample) < self.keep:
            self.sample.append(ms)
        else:
            slot = self._random.randrange(self.count)
            if slot < self.keep:
                self.sample[slot] = ms

    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def p95(self) -> float:
        if not self.sample:
            return 0.0
        ranked = sorted(self.sample)
        return ranked[min(len(ranked) - 1, int(0.95 * len(ranked)))]


Rows = list[dict[str, Any]]
# A request's rows, and what came back: their results, or the exception that ended it.
Finished = tuple[Rows, list[Result] | BaseException]


def window_for(cfg: TaskConfig) -> AdaptiveWindow | None:
    """The task's adaptive window, or None for a fixed one."""
    conc = cfg.concurrency
    if not conc.adaptive:
        return None
    policy = WindowPolicy(minimum=1, maximum=max(conc.max_per_task, conc.per_task))
    return AdaptiveWindow(
        key=server_root(cfg.endpoint.base_url) + "/metrics",
        policy=policy,
        initial=conc.per_task,
        interval_s=conc.metrics_interval_s,
    )


class PartitionRunner:
    """One task's partition: rows in, one result row per input row out.

    The task's thread reads rows, builds their requests and gathers results; the event
    loop's thread only sends. They meet in bulk, not row by row: requests go over in one
    hand-off per fill of the window (`_launch`), and finished requests pile up in a
    deque that the task's thread drains whenever it runs, waking it (`_wake`) only when
    it waits. Rows wait in `group` until a request can carry them (`kind.batch_size`);
    requests in flight are counted in rows (`pending`).
    """

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg
        self.kind = cfg.kind
        self.api_key = read_api_key(cfg.endpoint.api_key_env)
        self.adaptive = window_for(cfg)
        pool = self.adaptive.policy.maximum + 1 if self.adaptive else cfg.concurrency.per_task
        self.client = SidecarClient(
            cfg.endpoint.base_url,
            cfg.retries,
            cfg.timeouts.request_s,
            cfg.timeouts.connect_s,
            pool_size=pool,  # +1 for the adaptive window's /metrics polls
            api_key=self.api_key,
            outage_s=cfg.timeouts.outage_s,
        )
        self.out = _Columns(cfg)
        self.group: Rows = []  # rows waiting to go out together
        self.payloads: list[Any] = []  # their requests
        self.outbox: list[tuple[Rows, list[Any]]] = []  # requests not yet handed over
        self.finished: deque[Finished] = deque()  # filled by the loop, drained here
        self._wake = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()  # the loop's requests in flight
        self.rows_in = 0  # input rows read
        self.seen = 0  # rows with a result
        self.failed = 0
        self.pending = 0  # rows in flight (handed over or in the outbox)
        self.started = False
        self.loop: _LoopThread | None = None
        self.tally = Tally()
        self.latencies = _Latencies()
        self.lease: BudgetLease | None = None
        if cfg.budget:
            assert cfg.progress is not None, "a budget is leased from the progress endpoint"
            self.lease = BudgetLease(cfg.progress, task_identity)
        self.in_hand = 0  # rows of the current batch not yet handled
        self.adapters: Adapters | None = None
        if cfg.lora:
            self.adapters = Adapters(
                cfg.endpoint.base_url, self.kind.model, dict(cfg.lora_modules), self.api_key
            )
        self._outage_seen = 0.0  # the outage seconds the adapters were last checked after

    def run(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """The mapInArrow body: result batches, one row per input row."""
        started = time.monotonic()
        self.loop = _LoopThread()
        flush = self.cfg.flush_rows
        target = self.cfg.progress
        reporter = ProgressReporter(target, task_identity) if target is not None else None
        periodic: asyncio.Task[None] | None = None
        try:
            self.loop.submit(self.client.__aenter__()).result()
            if reporter is not None:
                periodic = self.loop.submit(_start_task(reporter.run(self._counts))).result()
            for batch in batches:
                # Maps as dicts, as a template reads them (a Spark map holds no key twice).
                rows = batch.to_pylist(maps_as_pydicts="lossy")
                self.in_hand = len(rows)
                for row in rows:
                    if self.lease is not None and not self._granted():
                        break  # the budget is reached: this row and the rest stay unsent
                    self.in_hand -= 1
                    self.rows_in += 1
                    self._add(row)
                    if self.pending >= self._window():
                        self._make_room()
                    if self.out.rows >= flush:
                        yield self.out.flush()
                self._launch()  # the batch's rows go out even if the window is not full
                self._drain()
                if self.lease is not None and self.lease.exhausted:
                    break
            if self.group:
                self._queue()
            self._launch()
            while self.pending:
                self._wait()
                if self.out.rows >= flush:
                    yield self.out.flush()
            if self.out.rows:
                yield self.out.flush()
            if self.seen != self.rows_in:  # the one-row-per-input invariant
                raise RuntimeError(
                    f"spark-vllm: {self.rows_in} rows went in and {self.seen} results came "
                    "out; this is a bug, please report it"
                )
            if reporter is not None:  # the task's last word: its final counts
                self._quietly(reporter.finish(periodic, self._counts()))
                periodic = None
            self.tally.fit_window()
            print(self.log_line(time.monotonic() - started), file=sys.stderr, flush=True)
            self.tally.outage_s = self._outage_s()
            if self.cfg.tally is not None:
                self.cfg.tally.add(self.tally.shipped())
        finally:
            try:
                if periodic is not None:
                    self.loop.loop.call_soon_threadsafe(periodic.cancel)
                if reporter is not None:
                    self._quietly(reporter.close())
                self.loop.submit(self.client.__aexit__(None, None, None)).result(timeout=30)
            finally:
                self.loop.close()

    def _granted(self) -> bool:
        """Under a budget: may the next row go? While the rows out hold the output
        budget, send what is queued and let answers come in (they free it), then ask
        again."""
        assert self.lease is not None
        while True:
            verdict = self.lease.take(self.in_hand, self._counts)
            if verdict != WAIT:
                return verdict == GRANTED
            self._launch()
            if self.pending:
                self._wait()
            else:
                time.sleep(LEASE_RETRY_S)

    @property
    def window_range(self) -> tuple[int, int] | None:
        """The smallest and largest window the task sent under (None: it sent nothing)."""
        return self.tally.window

    def _quietly(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a progress step on the loop: progress never fails a task (a step that
        fails or hangs is logged and left)."""
        assert self.loop is not None
        try:
            self.loop.submit(coro).result(timeout=2 * REPORT_TIMEOUT_S)
        except Exception as exc:
            print(f"spark-vllm: progress report failed: {exc!r}", file=sys.stderr, flush=True)

    def log_line(self, elapsed_s: float) -> str:
        """The task's line in its executor's log, at its end, e.g. `spark-vllm task:
        stage 3 partition 0 (task 12): 10,000 rows, 3 failed, 5 retries, window 64-256,
        latency mean 812 ms p95 1,930 ms, 41.2 s`."""
        stage, partition, attempt = task_identity()
        t, lat = self.tally, self.latencies
        low, high = self.window_range or (0, 0)
        outage = self._outage_s()
        down = f", sidecar down {outage:.1f} s" if outage else ""
        return (
            f"spark-vllm task: stage {stage} partition {partition} (task {attempt}): "
            f"{t.rows:,} rows, {t.failed:,} failed, {t.retries:,} retries, "
            f"window {low}-{high}, latency mean {lat.mean():,.0f} ms "
            f"p95 {lat.p95():,.0f} ms{down}, {elapsed_s:.1f} s"
        )

    def _counts(self) -> Counts:
        """What the task has a result for so far, sent and found (read from the event
        loop's thread)."""
        return self.tally.counts(in_flight=self.pending, outage_s=self._outage_s())

    def _outage_s(self) -> float:
        """Seconds this task found its sidecar down."""
        gate = self.client.gate
        return gate.down_s() if gate is not None else 0.0

    def _add(self, row: dict[str, Any]) -> None:
        try:
            payload = row_request(self.kind, row)
            if self.adapters is not None:
                if not self.started:
                    self._start()  # the sidecar says which adapters it serves once ready
                down = self._outage_s()
                if down > self._outage_seen:  # it was down since: ask again, load again
                    self._outage_seen = down
                    self.adapters.forget()
                self.adapters.check(payload.get("model") or self.kind.model)
        except RowError as exc:
            self._collect(row, Result(error=f"bad input: {exc}"))
            return
        self.group.append(row)
        self.payloads.append(payload)
        if len(self.group) >= self.kind.batch_size:
            self._queue()

    def _window(self) -> int:
        return self.adaptive.limit if self.adaptive is not None else self.cfg.concurrency.per_task

    def _start(self) -> None:
        """Wait for the sidecar, once a row needs sending: a task with no rows, or none
        that can become a request, never waits for it."""
        assert self.loop is not None
        timeouts = self.cfg.timeouts
        base_url = self.cfg.endpoint.base_url
        wait_ready(base_url, self.kind.model, timeouts.ready_s, self.api_key)
        asked = self.cfg.max_tokens
        truncate = getattr(self.kind, "truncate", False)
        if asked is not None or truncate:
            context = served_context(base_url, self.kind.model, self.api_key)
            if truncate:
                if context is None:
                    raise ContextExceeded(
                        f"on_overlong: truncate needs the served model's context, and "
                        f"{base_url}/models gives no max_model_len for {self.kind.model!r}"
                    )
                self.kind.context = context  # type: ignore[attr-defined]  # Generating's
            if asked is not None and context is not None and asked > context:
                raise ContextExceeded(
                    f"max_tokens {asked} is more than model {self.kind.model!r} at {base_url} "
                    f"holds: its context is {context} tokens (prompt and answer together); "
                    "lower sampling.max_tokens (or the sampling column's) below that"
                )
        if self.adaptive is not None:
            self.loop.submit(self.adaptive.run(self.client.fetch_metrics, lambda: self.pending))
        self.started = True

    def _queue(self) -> None:
        """The group becomes a request, handed over with the next launch."""
        self.outbox.append((self.group, self.payloads))
        self.pending += len(self.group)
        self.group, self.payloads = [], []

    def _launch(self) -> None:
        """Hand the outbox's requests to the event loop, in one call."""
        if not self.outbox:
            return
        assert self.loop is not None
        window = self._window()
        self.tally.add_window((window, window))
        if not self.started:
            self._start()
        self.loop.loop.call_soon_threadsafe(self._send_all, self.outbox)
        self.outbox = []

    def _make_room(self) -> None:
        """Launch what is queued, then wait until the window has room (requests in flight
        count in rows)."""
        self._launch()
        while self.pending >= self._window():
            self._wait()

    def _wait(self) -> None:
        """Sleep until a request finishes, then gather every finished one. An adaptive
        window may grow meanwhile: wake now and then to look."""
        interval = self.cfg.concurrency.metrics_interval_s if self.adaptive else None
        if not self.finished:
            self._wake.wait(interval)
        self._wake.clear()
        self._drain()

    def _drain(self) -> None:
        while self.finished:
            rows, got = self.finished.popleft()
            self.pending -= len(rows)
            if isinstance(got, BaseException):
                raise got
            if got:  # the rows of one request share its tries and its latency
                self.tally.retries += max(got[0].attempts - 1, 0)
                self.latencies.add(got[0].latency_ms)
            for row, result in zip(rows, got, strict=True):
                self._collect(row, result)

    # On the event loop's thread:

    def _send_all(self, requests: list[tuple[Rows, list[Any]]]) -> None:
        loop = asyncio.get_running_loop()
        for rows, payloads in requests:
            task = loop.create_task(self._send(rows, payloads))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, rows: Rows, payloads: list[Any]) -> None:
        try:
            got: list[Result] | BaseException = await self.client.send(self.kind, payloads)
        except Exception as exc:  # SidecarDown, say: the task's failure, raised there
            got = exc
        self.finished.append((rows, got))
        if not self._wake.is_set():
            self._wake.set()

    def _collect(self, row: dict[str, Any], result: Result) -> None:
        """The row's result, completed by its kind and judged by the error policy."""
        try:
            self.kind.finish(row, result)
        except Exception as exc:  # whatever the row's answer makes its kind raise
            result.error = f"bad answer: cannot be read ({type(exc).__name__})"
        self.seen += 1
        errors = self.cfg.errors
        if result.error is not None:
            self.failed += 1
            if errors.on_error == "fail":
                raise RowFailed(
                    f"row {self.cfg.id_column}={row[self.cfg.id_column]!r} failed: "
                    f"{result.error} (the job spec says on_error: fail)"
                )
            rate = errors.max_error_rate
            if (
                rate is not None
                and self.seen >= errors.error_rate_min_rows
                and self.failed > rate * self.seen
            ):
                raise ErrorBudgetExceeded(
                    f"{self.failed} of {self.seen} rows failed in this task, more than "
                    f"max_error_rate {rate:g}; last error: {result.error}"
                )
        self.tally.count(result.error, self.kind.tokens_of(result.values), row[self.cfg.id_column])
        self.out.add(row, self.kind.values(row, result))


def run_partition(batches: Iterator[pa.RecordBatch], cfg: TaskConfig) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: input batches in, result batches out, one row per input row."""
    return PartitionRunner(cfg).run(batches)
