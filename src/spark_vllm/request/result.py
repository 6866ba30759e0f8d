"""What one row's request came to: its values, or its error, and how the request went.

A request kind fills a `Result` from the answer (see kinds); the sidecar client hands one
back per row (see client); the partition runner turns it into the row's result columns.
Pure data: no I/O, and picklable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    """The outcome of one row's request; `error` is None on success."""

    # What the answer holds for this row, by result column (see the row's kind).
    values: dict[str, Any] = field(default_factory=dict)
    latency_ms: float = 0.0
    attempts: int = 0
    error: str | None = None
    # The error came from failures that retrying might have cured (not from the row).
    error_transient: bool = field(default=False, repr=False)
    # The last HTTP answer: status and body (None: no answer), and the request id sent
    # with the request as X-Request-Id.
    status: int | None = field(default=None, repr=False)
    body: bytes | str | None = field(default=None, repr=False)
    request_id: str | None = field(default=None, repr=False)
