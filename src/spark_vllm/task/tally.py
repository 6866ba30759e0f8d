"""A task's account of its rows, and how it tells the driver (the task side only).

Two counts, for two readers. `Counts` is what a task has done so far: it POSTs them to
the driver's progress endpoint every `progress.interval_s` (`ProgressReporter`) and the
driver shows their sum (see progress). `Tally` is the summary's count: each task adds its
own to a Spark accumulator (`TallyParam`), which keeps the tallies of the task attempts
that succeeded (see summary). `BudgetLease` is the task's end of the job's `budget`: it
asks the driver's endpoint for rows before it sends them.

Nothing here imports the driver's code: this module travels with every task.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import aiohttp
import orjson
from pyspark import TaskContext
from pyspark.accumulators import AccumulatorParam

from spark_vllm.errors import BudgetUnavailable
from spark_vllm.redact import redact

log = logging.getLogger(__name__)

# Seconds a report may take (a task's HTTP client), and the endpoint waits on a socket.
REPORT_TIMEOUT_S = 5.0
# Error messages are counted by their first characters, with URL passwords and password-like
# parameters taken out (row errors name columns and row ids, never values: see prompt, images),
# and a task reports its most common ones only.
ERROR_CHARS = 300
ERRORS_PER_TASK = 50
# Words of a server's message that name the kind of an HTTP error.
KIND_WORDS = 6


@dataclass(frozen=True)
class ProgressTarget:
    """Where a task reports (`url`, with `token`) and how often (`interval_s`, seconds)."""

    url: str
    token: str
    interval_s: float


@dataclass
class Counts:
    """Rows a task (or, summed, the job) has a result for so far and their tokens; tries
    after a request's first (`retries`); rows sent and not yet answered (`in_flight`);
    and milliseconds the task found its sidecar down (`outage_ms`)."""

    rows: int = 0
    succeeded: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    in_flight: int = 0
    outage_ms: int = 0

    def add(self, other: Counts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True)
class TaskReport:
    """One task attempt's counts so far. Spark runs a task again under a new, larger
    `task_attempt` (its task attempt id); `stage` and `partition` say which task."""

    stage: int
    partition: int
    task_attempt: int
    counts: Counts

    def to_json(self) -> bytes:
        counts = {f.name: getattr(self.counts, f.name) for f in fields(self.counts)}
        task = {"stage": self.stage, "partition": self.partition, "attempt": self.task_attempt}
        return orjson.dumps({"task": task, "counts": counts})

    @classmethod
    def from_json(cls, body: bytes) -> TaskReport:
        """Raises ValueError naming what is wrong with `body`."""
        try:
            data = orjson.loads(body)
            task, counts = data["task"], data["counts"]
            numbers = {f.name: counts[f.name] for f in fields(Counts)}
            ids = (task["stage"], task["partition"], task["attempt"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"a progress report is JSON with task and counts: {exc}") from exc
        values = [*ids, *numbers.values()]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ValueError(f"a progress report holds counts >= 0, found {data!r}")
        return cls(*ids, Counts(**numbers))


# Rows a task asks the budget for at a time (at most what its current batch still holds).
LEASE_ROWS = 64
# How long a task waits for rows out to free the output budget before it stops, seconds.
LEASE_WAIT_S = 300.0
# What `BudgetLease.take` says: send the row, wait and ask again, or stop.
GRANTED, WAIT, STOP = "granted", "wait", "stop"


class BudgetLease:
    """A task's end of the budget: `take()` before each row it sends. It asks the driver
    for up to LEASE_ROWS rows at a time (never more than the rows in hand) and says
    GRANTED, WAIT (the rows out hold the output budget: let answers come in, then take
    again) or STOP (the budget is reached, or nothing freed it for LEASE_WAIT_S).
    Synchronous, from the task's thread, past any HTTP proxy; a driver that cannot be
    asked fails the task (the budget would not hold)."""

    def __init__(self, target: ProgressTarget, task: Callable[[], tuple[int, int, int]]) -> None:
        self.url = target.url.rsplit("/", 1)[0] + "/lease"
        self.token = target.token
        self._task = task
        self.allowance = 0
        self.exhausted = False
        self._waiting_since: float | None = None
        # straight to the driver's pod, past any HTTP proxy of the environment
        self._direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def take(self, in_hand: int, counts: Callable[[], Counts]) -> str:
        if self.allowance > 0:
            self.allowance -= 1
            return GRANTED
        if self.exhausted:
            return STOP
        granted, reached = self._ask(max(1, min(LEASE_ROWS, in_hand)), counts())
        if granted > 0:
            self.allowance, self._waiting_since = granted - 1, None
            return GRANTED
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        if reached or now - self._waiting_since > LEASE_WAIT_S:
            self.exhausted = True
            return STOP
        return WAIT

    def _ask(self, want: int, counts: Counts) -> tuple[int, bool]:
        body = orjson.loads(TaskReport(*self._task(), counts).to_json())
        body["want"] = want
        request = urllib.request.Request(  # noqa: S310  # the driver's own http URL
            self.url,
            data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method="POST",
        )
        last: Exception | None = None
        for attempt in range(4):
            if attempt:
                time.sleep(0.5 * 2**attempt)  # the driver busy: a few tries
            try:
                with self._direct.open(request, timeout=REPORT_TIMEOUT_S) as answer:
                    data = orjson.loads(answer.read())
                    return int(data["granted"]), bool(data["reached"])
            except Exception as exc:
                last = exc
        raise BudgetUnavailable(
            f"the driver's budget endpoint {self.url} cannot be asked ({last}); the task "
            "stops rather than pass the budget"
        )


class ProgressReporter:
    """A task's end, on the task's event loop: `run()` POSTs `counts()` every interval
    until cancelled; `send()` reports once (the task's last report). Failures are
    logged, never raised: progress must not fail a task."""

    def __init__(self, target: ProgressTarget, task: Callable[[], tuple[int, int, int]]) -> None:
        self.target = target
        self._task = task  # (stage, partition, task attempt id)
        self._session: Any = None
        self._warned = False

    async def run(self, counts: Callable[[], Counts]) -> None:
        while True:
            await asyncio.sleep(self.target.interval_s)
            await self.send(counts())

    async def finish(self, periodic: asyncio.Future[None] | None, counts: Counts) -> None:
        """Stop the periodic reports (`run`'s task), then send the last one: no earlier
        report can arrive after it."""
        if periodic is not None:
            periodic.cancel()
            await asyncio.gather(periodic, return_exceptions=True)
        await self.send(counts)

    async def send(self, counts: Counts) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REPORT_TIMEOUT_S)
            )
        report = TaskReport(*self._task(), counts)
        headers = {
            "Authorization": f"Bearer {self.target.token}",
            "Content-Type": "application/json",
        }
        try:
            async with self._session.post(
                self.target.url, data=report.to_json(), headers=headers
            ) as answer:
                if answer.status != 204 and not self._warned:
                    self._warned = True
                    text = (await answer.text())[:200]
                    log.warning("progress report refused: HTTP %s %s", answer.status, text)
        except Exception as exc:  # progress must never fail a task
            if not self._warned:
                self._warned = True
                log.warning("progress report to %s failed: %s", self.target.url, exc)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def task_identity() -> tuple[int, int, int]:
    """(stage id, partition id, task attempt id) of the Spark task running this code;
    zeros outside a Spark task."""
    context = TaskContext.get()
    if context is None:
        return (0, 0, 0)
    return (context.stageId(), context.partitionId(), context.taskAttemptId())


def error_kind(error: str) -> str:
    """The kind of a failed row's `error`, for the summary's breakdown: `bad input`,
    `bad answer`, `timeout`, `cannot connect`, `HTTP <status> <first words of the
    server's message>`, or the message's first words; an error retries gave up on keeps
    the kind of its last try with `gave up: ` before it. E.g. "HTTP 400: This model's
    maximum context length is 512 tokens..." → "HTTP 400 This model's maximum context
    length is"."""
    if error.startswith("gave up after ") and "; last: " in error:
        return "gave up: " + error_kind(error.split("; last: ", 1)[1])
    for prefix in ("bad input", "bad answer", "cannot connect", "unexpected response"):
        if error.startswith(prefix):
            return prefix
    if error.startswith("HTTP ") and ": " in error:
        status, message = error.split(": ", 1)
        words = message.split()[:KIND_WORDS]
        return " ".join([status, *words]).rstrip(".,:;")
    if "timed out" in error or error.startswith("TimeoutError"):
        return "timeout"
    return " ".join(error.split()[:KIND_WORDS])


@dataclass
class Tally:
    """What tasks counted of the rows they handed over. `kinds`: failed rows by
    `error_kind`, each with its count and one example id; `retries`: tries after the
    first, summed over requests; `outage_s`: seconds the tasks found their sidecar down,
    summed; `window`: the smallest and largest window of requests in flight a task used
    (rows; None: no task sent)."""

    rows: int = 0
    succeeded: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    kinds: dict[str, tuple[int, str]] = field(default_factory=dict)
    retries: int = 0
    outage_s: float = 0.0
    window: tuple[int, int] | None = None

    def count(self, error: str | None, tokens: tuple[int, int], row_id: object = None) -> None:
        self.rows += 1
        if error is None:
            self.succeeded += 1
        else:
            self.failed += 1
            shown = redact(error)
            self.errors[shown[:ERROR_CHARS]] += 1
            self.add_kind(error_kind(shown), 1, str(row_id))
        self.prompt_tokens += tokens[0]
        self.completion_tokens += tokens[1]

    def merge(self, other: Tally) -> Tally:
        self.rows += other.rows
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.errors.update(other.errors)
        for kind, (count, example) in other.kinds.items():
            self.add_kind(kind, count, example)
        self.retries += other.retries
        self.outage_s += other.outage_s
        self.add_window(other.window)
        return self

    def add_window(self, window: tuple[int, int] | None) -> None:
        """Widen `window` to take in `window` (None: nothing)."""
        if window is None:
            return
        low, high = self.window or window
        self.window = (min(low, window[0]), max(high, window[1]))

    def add_kind(self, kind: str, count: int, example: str) -> None:
        """`count` more failed rows of `kind`; the first example id seen stays."""
        known, first = self.kinds.get(kind, (0, example))
        self.kinds[kind] = (known + count, first)

    def breakdown(self) -> list[tuple[str, int, str]]:
        """(kind, failed rows, an example id), the most common kind first."""
        ranked = sorted(self.kinds.items(), key=lambda item: (-item[1][0], item[0]))
        return [(kind, count, example) for kind, (count, example) in ranked]

    def shipped(self) -> Tally:
        """This tally with only its most common errors and kinds, as a task sends it back."""
        return Tally(
            self.rows,
            self.succeeded,
            self.failed,
            self.prompt_tokens,
            self.completion_tokens,
            Counter(dict(self.errors.most_common(ERRORS_PER_TASK))),
            {kind: (n, ex) for kind, n, ex in self.breakdown()[:ERRORS_PER_TASK]},
            self.retries,
            self.outage_s,
            self.window,
        )


class TallyParam(AccumulatorParam[Tally]):
    """Sums the tasks' tallies in a Spark accumulator."""

    def zero(self, value: Tally) -> Tally:
        return Tally()

    def addInPlace(self, value1: Tally, value2: Tally) -> Tally:
        return value1.merge(value2)
