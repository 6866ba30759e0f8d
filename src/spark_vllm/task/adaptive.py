"""Adaptive concurrency: each task sizes its window of requests from the sidecar's queue.

vLLM batches the requests it is running (`vllm:num_requests_running`) and queues the rest
(`vllm:num_requests_waiting`). The GPU is saturated when the queue is non-empty; every
request beyond a short queue only adds latency and memory. So each task polls the
sidecar's `/metrics` and steers the requests in flight on the whole executor toward
"batch full, queue short":

- queue empty, the KV cache not full, and the task's own requests all admitted (not
  still in transit): the engine could take more, so the window grows
  (by half while the batch is below the largest size seen saturated; once it is there, by
  the task's share of half a short queue);
- queue longer than `max(2, running / 8)`: the window shrinks to the task's share of
  "running + half that queue". Tasks on one executor see the same queue; each takes its
  share (its requests in flight over all requests), so together they shrink by the
  excess once, not once per task;
- otherwise it holds.

No model or GPU is named anywhere: the engine's own counters decide. The last window a
Python worker learned is where its next task starts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"

# `name{labels} value` or `name value`, one sample per line (Prometheus text format).
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)", re.M)

# The window each Python worker last settled on, per sidecar: the next task starts there.
_LEARNED: dict[str, int] = {}


@dataclass(frozen=True)
class EngineLoad:
    """What the sidecar reports: requests batched, requests queued, KV cache in use (0-1)."""

    running: float
    waiting: float
    kv_usage: float | None = None


def parse_metrics(text: str) -> EngineLoad | None:
    """The engine's load from /metrics text; None when the counters are not there.

    Samples of one name are summed over their label sets (one per engine or model).
    """
    sums: dict[str, float] = {}
    for name, value in _SAMPLE.findall(text):
        if name in (RUNNING, WAITING, KV_USAGE):
            try:
                sums[name] = sums.get(name, 0.0) + float(value)
            except ValueError:
                continue
    if RUNNING not in sums or WAITING not in sums:
        return None
    return EngineLoad(sums[RUNNING], sums[WAITING], sums.get(KV_USAGE))


@dataclass
class WindowPolicy:
    """Decides a task's next window from the engine's load; pure, so it is unit-tested."""

    minimum: int
    maximum: int
    kv_full: float = 0.95
    grow_factor: float = 1.5
    # The largest batch seen while requests were queued: the engine's saturation point.
    saturated_at: float = 0.0

    def short_queue(self, load: EngineLoad) -> float:
        return max(2.0, load.running / 8)

    def next(self, window: int, in_flight: int, load: EngineLoad) -> int:
        if load.waiting > 0:
            self.saturated_at = max(self.saturated_at, load.running)
        total = max(1.0, load.running + load.waiting)
        share = min(1.0, in_flight / total)
        high = self.short_queue(load)
        kv_full = load.kv_usage is not None and load.kv_usage >= self.kv_full
        if load.waiting > high:
            wanted = load.running + high / 2
            new = min(window, math.ceil(in_flight * wanted / total))
        elif (
            load.waiting == 0
            and not kv_full
            and in_flight >= 0.75 * window
            # every request this task sent has reached the engine: none still in transit
            and load.running >= in_flight
        ):
            if load.running < self.saturated_at or self.saturated_at == 0:
                new = math.ceil(window * self.grow_factor)
            else:  # batch full, queue empty: add the task's share of a short queue
                new = window + max(1, round(high / 2 * share))
        else:
            new = window
        return max(self.minimum, min(self.maximum, new))


log = logging.getLogger(__name__)


@dataclass
class AdaptiveWindow:
    """A task's window, re-decided every `interval_s` from the sidecar's /metrics.

    `limit` is read by the task's feeding loop; `run` is the poller, on the task's event
    loop. When /metrics cannot be read or lacks vLLM's counters, the window stays where
    it is (a warning says why) and the task goes on.
    """

    key: str
    policy: WindowPolicy
    initial: int
    interval_s: float = 0.5
    limit: int = 0
    low: int = 0
    high: int = 0
    polls: int = 0
    stopped: str | None = None

    def __post_init__(self) -> None:
        learned = _LEARNED.get(self.key, self.initial)
        start = max(self.policy.minimum, min(self.policy.maximum, learned))
        self.limit = self.low = self.high = start

    def update(self, in_flight: int, load: EngineLoad) -> None:
        self.limit = self.policy.next(self.limit, in_flight, load)
        self.low = min(self.low, self.limit)
        self.high = max(self.high, self.limit)
        self.polls += 1
        _LEARNED[self.key] = self.limit

    async def run(self, fetch: Callable[[], Awaitable[str]], in_flight: Callable[[], int]) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                text = await fetch()
            except Exception as exc:  # any failure: keep the window, try again
                failures += 1
                if failures >= 20:
                    self.stop(f"{self.key} failed 20 times in a row, last: {exc!r}")
                    return
                continue
            failures = 0
            load = parse_metrics(text)
            if load is None:
                self.stop(f"{self.key} has no {RUNNING} / {WAITING}; is it a vLLM server?")
                return
            self.update(in_flight(), load)

    def stop(self, reason: str) -> None:
        self.stopped = reason
        log.warning("spark-vllm: adaptive concurrency off, window stays %d: %s", self.limit, reason)
