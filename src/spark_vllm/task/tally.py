"""A task's account of its rows, and how it tells the driver (the task side only).

A task counts its rows once, in a `Tally`, which two readers get in their own shape: the
summary gets the tally itself, added to a Spark accumulator (`TallyParam`) that keeps the
tallies of the task attempts that succeeded (see driver.summary); live progress gets
`Tally.counts()`, the numbers only, which the task POSTs to the driver's progress
endpoint every `progress.interval_s` (`ProgressReporter`) for the driver to show their
sum (see driver.progress). The budget's lease is in task.budget.

Nothing here imports the driver's code: this module travels with every task.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import aiohttp
import orjson
from pyspark import TaskContext
from pyspark.accumulators import AccumulatorParam

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

    def fit_window(self) -> None:
        """At a task's end: its window as the rows it could have in flight, no more
        than its rows (a window of 128 over a 3-row task had 3 in flight at most)."""
        if self.window is not None:
            low, high = self.window
            self.window = (min(low, self.rows), min(high, self.rows))

    def add_kind(self, kind: str, count: int, example: str) -> None:
        """`count` more failed rows of `kind`; the first example id seen stays."""
        known, first = self.kinds.get(kind, (0, example))
        self.kinds[kind] = (known + count, first)

    def breakdown(self) -> list[tuple[str, int, str]]:
        """(kind, failed rows, an example id), the most common kind first."""
        ranked = sorted(self.kinds.items(), key=lambda item: (-item[1][0], item[0]))
        return [(kind, count, example) for kind, (count, example) in ranked]

    def counts(self, in_flight: int, outage_s: float) -> Counts:
        """The live report of these counts (see `Counts`), with the rows sent and not yet
        answered and the seconds the sidecar was found down, which the task knows."""
        return Counts(
            self.rows, self.succeeded, self.failed, self.prompt_tokens, self.completion_tokens,
            retries=self.retries, in_flight=in_flight, outage_ms=round(outage_s * 1000),
        )  # fmt: skip

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
