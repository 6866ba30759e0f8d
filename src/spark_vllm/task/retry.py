"""Which failures are retried, and how long to wait between tries.

Transient: the connection was refused or reset, the request timed out, or the server
answered 429, 500, 502, 503 or 504. Anything else (a 400 for a prompt longer than the
context, say) is the row's own fault and is not retried.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from spark_vllm.spec import RetrySpec, default

TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
# Answers that may mean the server behind them is down: a proxy's 502/504, vLLM's 503, and
# vLLM's 500 "EngineCore encountered an issue" (EngineDeadError) in the seconds between its
# engine process dying and the API server exiting, while /health already answers 503.
# Worth a look at /health before spending a retry; a 429 says the server is up.
SERVER_DOWN_STATUS = frozenset({500, 502, 503, 504})


def is_transient_status(status: int) -> bool:
    return status in TRANSIENT_STATUS


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = default(RetrySpec, "attempts")
    initial_s: float = default(RetrySpec, "backoff_initial_s")
    max_s: float = default(RetrySpec, "backoff_max_s")
    multiplier: float = default(RetrySpec, "backoff_multiplier")

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.initial_s <= 0 or self.max_s <= 0:
            raise ValueError("backoff times must be positive")

    def should_retry(self, attempt: int) -> bool:
        """After failed try number `attempt` (1-based), is there another?"""
        return attempt < self.attempts

    def ceiling(self, attempt: int) -> float:
        """The longest wait after failed try number `attempt`."""
        return float(min(self.max_s, self.initial_s * self.multiplier ** (attempt - 1)))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Wait after failed try `attempt`: uniform in [ceiling/2, ceiling] ("equal jitter").

        Jitter spreads the retries of many rows that failed together (a restarting
        sidecar) so they do not return as one burst.
        """
        top = self.ceiling(attempt)
        return (rng or random).uniform(top / 2, top)
