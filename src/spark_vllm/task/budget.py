"""The job's `budget`, in one place: its limits and how rows are granted under them
(`Budget`, which the driver's progress endpoint holds), a task's end of it
(`BudgetLease`: the task asks the driver for rows before it sends them), and the status
a run that it stopped ends with (`BUDGET_REACHED`; the CLI's exit code 3).

The spec's `budget` keys are `spec.BudgetSpec`; the driver sets the output reserve from
the census (`driver.job.budget_for`). Pure data and the task's HTTP client: no driver code.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from spark_vllm.errors import BudgetUnavailable
from spark_vllm.task.tally import REPORT_TIMEOUT_S, Counts, ProgressTarget, TaskReport

# A run's status when its budget stopped it (it committed what finished).
BUDGET_REACHED = "budget reached"


@dataclass(frozen=True)
class Budget:
    """The spec's `budget`, all tasks together (None: no limit). `reserve` is the output
    tokens a row may cost (its max_tokens), held from `max_output_tokens` from the row's
    grant until its answer is counted."""

    max_rows: int | None = None
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None
    reserve: int = 0

    def grant(self, want: int, granted: int, answered: Counts) -> tuple[int, bool]:
        """(rows a task may send next, whether the budget is reached), for a task that
        asks for `want` rows when the job has granted `granted` rows so far and its tasks
        have answered `answered` (the latest attempt of each, summed): at most `want`,
        never past max_rows; none once the answered rows' prompt tokens reach
        max_prompt_tokens; no more than the output budget left covers at `reserve` tokens
        for every row granted and not yet answered. 0 rows and not reached: rows out hold
        the output budget; ask again once answers are in."""
        waiting = max(granted - answered.rows, 0)
        grant, reached = want, False
        if self.max_rows is not None:
            grant = min(grant, self.max_rows - granted)
            reached = grant <= 0
        if self.max_prompt_tokens is not None and answered.prompt_tokens >= self.max_prompt_tokens:
            grant, reached = 0, True
        if self.max_output_tokens is not None:
            left = self.max_output_tokens - answered.completion_tokens
            free = left - waiting * self.reserve
            grant = min(grant, free // self.reserve if self.reserve else free)
            if left < max(self.reserve, 1) or (grant <= 0 and waiting == 0):
                reached = True  # not one row more, and nothing out to free any
        return (0 if reached else max(grant, 0)), reached


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
