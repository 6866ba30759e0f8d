"""Live progress of a running job: the tasks report their counts to the driver as they
go, and the driver shows the sum.

Spark's accumulators reach the driver only when a task ends, and one task may stream a
partition of millions of rows. So every task POSTs its running counts to a small HTTP
endpoint on the driver (`ProgressBoard`) every `progress.interval_s` and once more when
it ends; the driver prints the sum every `interval_s` (`ProgressPrinter`): a bar on a
terminal, one plain line otherwise. What the driver shows is therefore at most two
intervals old. The same channel works in `local[*]` and on Kubernetes, where executors
reach the driver's pod as they do for Spark's own RPC.

The endpoint listens where Spark's driver listens (`spark.driver.bindAddress`, else
`spark.driver.host`), on an ephemeral port unless `progress.port` names one, and takes
only requests bearing the run's random token (`Authorization: Bearer ...`), which travels
to the tasks inside their TaskConfig. Reports are best-effort: a lost one only delays
the count, and the summary comes from Spark's accumulator, not from here. A task that
Spark runs again reports from zero under a newer task attempt id, which replaces the
counts of the attempt before it.

With `metrics.enabled`, the same endpoint serves the sum to Prometheus (`GET /metrics`,
`JobCollector`) to scrapers bearing the token in `metrics.token_env`, while the run
sends.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any

import orjson

from spark_vllm.task.budget import Budget
from spark_vllm.task.tally import REPORT_TIMEOUT_S, Counts, ProgressTarget, TaskReport

log = logging.getLogger(__name__)

# The largest report body the endpoint reads, in bytes (a report is about 200).
MAX_REPORT_BYTES = 16 * 1024
# Connections the driver's endpoint serves at once (a thread each); one more waits up to
# SLOT_WAIT_S for a slot, then is closed: a flood of connections cannot start threads
# without end.
MAX_CONNECTIONS = 128
SLOT_WAIT_S = 1.0


@dataclass(frozen=True)
class JobMetrics:
    """What the board's `GET /metrics` needs: the bearer token a scraper sends, and what
    the run is (`run_id`, `model`, `task`, rows it sends: `to_send`)."""

    token: str
    run_id: str
    model: str
    task: str
    to_send: int


class ProgressBoard:
    """The driver's end: an HTTP endpoint the tasks report to, and their sum.

    Listens on `bind`:`port` (0: any free port) from construction until `close()`;
    `target` is what the tasks are given (`host` is the address they reach the driver
    at). With `metrics`, it also serves the sum to Prometheus at `GET /metrics` (see
    `JobCollector`) to requests bearing `metrics.token`. Thread-safe."""

    def __init__(
        self,
        host: str,
        bind: str,
        port: int,
        interval_s: float,
        metrics: JobMetrics | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.token = secrets.token_urlsafe(32)
        self.metrics = metrics
        self.budget = budget
        # Rows granted under the budget, by task (stage, partition): (attempt, rows).
        self._grants: dict[tuple[int, int], tuple[int, int]] = {}
        self.budget_reached = False
        self._registry: Any = None
        if metrics is not None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(JobCollector(self, metrics))
        self._lock = threading.Lock()
        self._latest: dict[tuple[int, int], TaskReport] = {}
        server = _Server6 if ":" in bind else _Server
        self._server = server((bind, port), partial(_Handler, self))
        self._server.daemon_threads = True
        self._closed = False
        port = self._server.server_address[1]
        url_host = f"[{host}]" if ":" in host else host
        self.target = ProgressTarget(f"http://{url_host}:{port}/progress", self.token, interval_s)
        self._thread = threading.Thread(
            target=partial(self._server.serve_forever, poll_interval=0.1),
            name="spark-vllm-progress",
            daemon=True,
        )
        self._thread.start()

    def report(self, report: TaskReport) -> None:
        """Keep `report` unless a newer attempt of its task has reported already, or the
        same attempt reported more rows (its counts only grow; reports may cross)."""
        key = (report.stage, report.partition)
        with self._lock:
            known = self._latest.get(key)
            if (
                known is None
                or known.task_attempt < report.task_attempt
                or (
                    known.task_attempt == report.task_attempt
                    and known.counts.rows <= report.counts.rows
                )
            ):
                self._latest[key] = report

    def lease(self, report: TaskReport, want: int) -> tuple[int, bool]:
        """(rows the task may send next, whether the budget is reached): at most `want`
        rows, never more than max_rows over the latest attempt of every task, none once
        the answered rows' prompt tokens reach max_prompt_tokens, and no more than the
        output budget covers at `reserve` tokens for every row granted and not yet
        answered. 0 rows and not reached: rows out hold the output budget; ask again
        once answers are in. `report` is the asking task's counts now; an attempt that
        Spark replaced is told the budget is reached (its rows are the new attempt's)."""
        self.report(report)
        budget = self.budget
        if budget is None:
            return want, False
        key = (report.stage, report.partition)
        with self._lock:
            attempt, _ = self._grants.get(key, (report.task_attempt, 0))
            if attempt > report.task_attempt:
                return 0, True
            if attempt < report.task_attempt:  # Spark runs the task again: it starts anew
                self._grants[key] = (report.task_attempt, 0)
            total = Counts()
            for known in self._latest.values():
                total.add(known.counts)
            granted = sum(rows for _, rows in self._grants.values())
            grant, reached = budget.grant(want, granted, total)
            _, had = self._grants.get(key, (report.task_attempt, 0))
            self._grants[key] = (report.task_attempt, had + grant)
            self.budget_reached = self.budget_reached or reached
            return grant, reached

    def totals(self) -> tuple[Counts, int]:
        """The counts summed over the latest attempt of every task, and how many tasks
        reported."""
        total = Counts()
        with self._lock:
            reports = list(self._latest.values())
        for report in reports:
            total.add(report.counts)
        return total, len(reports)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The job's metrics in the text format `accept` asks for (Prometheus text or
        OpenMetrics): (body, content type). Only with `metrics`."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        return encoder(self._registry), content_type

    def close(self) -> None:
        """Stop listening (again: nothing)."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS of them at once."""

    def server_activate(self) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(timeout=SLOT_WAIT_S):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    """POST /progress with the run's bearer token and a TaskReport's JSON; with metrics,
    GET /metrics with the metrics token. Every request, whatever its method or path, is
    refused without a token."""

    timeout = REPORT_TIMEOUT_S  # an idle connection does not hold a thread

    def __init__(self, board: ProgressBoard, *args: Any, **kwargs: Any) -> None:
        self.board = board
        super().__init__(*args, **kwargs)

    def _bears(self, token: str) -> bool:
        given = self.headers.get("Authorization", "").encode()
        return hmac.compare_digest(given, f"Bearer {token}".encode())

    def _authorized(self) -> bool:
        if self._bears(self.board.token):
            return True
        self._answer(401, "a progress report needs the run's bearer token")
        return False

    def _not_allowed(self) -> None:
        if self._authorized():
            self._answer(405, "only POST /progress")

    do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def do_GET(self) -> None:
        metrics = self.board.metrics
        if metrics is None or self.path.split("?", 1)[0] != "/metrics":
            return self._not_allowed()
        if not self._bears(metrics.token):
            return self._answer(401, "GET /metrics needs the bearer token of metrics.token_env")
        body, content_type = self.board.exposition(self.headers.get("Accept", ""))
        return self._send(200, content_type, body)

    def do_POST(self) -> None:
        if not self._authorized():
            return None
        if self.path not in ("/progress", "/lease"):
            return self._answer(404, "not found: POST /progress")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._answer(411, "a progress report needs a Content-Length")
        if not 0 < length <= MAX_REPORT_BYTES:
            return self._answer(413, f"a progress report is 1 to {MAX_REPORT_BYTES} bytes")
        try:
            body = self.rfile.read(length)
            if self.path == "/lease":
                want = orjson.loads(body).get("want")
                if not isinstance(want, int) or isinstance(want, bool) or want < 1:
                    raise ValueError(f"a lease asks for want >= 1 rows, found {want!r}")
                granted, reached = self.board.lease(TaskReport.from_json(body), want)
                answer = orjson.dumps({"granted": granted, "reached": reached})
                return self._send(200, "application/json", answer)
            self.board.report(TaskReport.from_json(body))
        except (ValueError, AttributeError) as exc:
            return self._answer(400, str(exc))
        return self._answer(204, "")

    def _answer(self, status: int, message: str) -> None:
        self._send(status, "text/plain; charset=utf-8", message.encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        """Answer; a client that hung up first (a scraper past its timeout) is no error."""
        try:
            self.send_response(status)
            if body:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # the base's name
        log.debug("progress endpoint: " + format, *args)


class JobCollector:
    """The board's sum as Prometheus metrics (read at each scrape), named and typed by
    Prometheus' conventions:

    - spark_vllm_rows_total{outcome="succeeded"|"failed"} (counter): rows with a result
    - spark_vllm_rows_to_send (gauge): rows this run sends
    - spark_vllm_prompt_tokens_total, spark_vllm_completion_tokens_total (counters)
    - spark_vllm_retries_total (counter): tries after a request's first
    - spark_vllm_sidecar_outage_seconds_total (counter): seconds tasks found their
      sidecar down, summed over tasks
    - spark_vllm_rows_in_flight (gauge): rows sent and not yet answered
    - spark_vllm_tasks_reporting (gauge): tasks that have reported
    - spark_vllm_run_info{run_id, model, task} (gauge, 1)

    A task that Spark runs again reports from zero, so a counter may drop: Prometheus'
    rate() reads a drop as a counter reset."""

    def __init__(self, board: ProgressBoard, metrics: JobMetrics) -> None:
        self.board = board
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        counts, tasks = self.board.totals()
        m = self.metrics
        info = GaugeMetricFamily(
            "spark_vllm_run_info", "The run the job metrics are of.",
            labels=["run_id", "model", "task"],
        )  # fmt: skip
        info.add_metric([m.run_id, m.model, m.task], 1)
        yield info
        rows = CounterMetricFamily(
            "spark_vllm_rows", "Rows with a result, by outcome.", labels=["outcome"]
        )
        rows.add_metric(["succeeded"], counts.succeeded)
        rows.add_metric(["failed"], counts.failed)
        yield rows
        yield GaugeMetricFamily("spark_vllm_rows_to_send", "Rows this run sends.", m.to_send)
        yield CounterMetricFamily(
            "spark_vllm_prompt_tokens", "Prompt tokens of the rows with a result.",
            counts.prompt_tokens,
        )  # fmt: skip
        yield CounterMetricFamily(
            "spark_vllm_completion_tokens", "Completion (output) tokens of the rows with a result.",
            counts.completion_tokens,
        )  # fmt: skip
        yield CounterMetricFamily(
            "spark_vllm_retries", "Tries after a request's first.", counts.retries
        )
        yield CounterMetricFamily(
            "spark_vllm_sidecar_outage_seconds",
            "Seconds tasks found their vLLM sidecar down, summed over tasks.",
            counts.outage_ms / 1000,
        )
        yield GaugeMetricFamily(
            "spark_vllm_rows_in_flight", "Rows sent and not yet answered.", counts.in_flight
        )
        yield GaugeMetricFamily(
            "spark_vllm_tasks_reporting", "Tasks that have reported progress.", tasks
        )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class ProgressPrinter:
    """Shows the board's sum every `interval_s` on `stream` while the run sends, and once
    more at its end: a tqdm bar when `stream` is a terminal, else one line each time, e.g.

        spark-vllm progress: 12,000/100,000 rows (12.0 %), 11,990 succeeded, 10 failed,
        412.3 rows/s, 26,387 out tokens/s, ETA 3m33s

    (one line). `to_send` is the rows this run sends; `tokens` False leaves tokens out
    (embedding)."""

    def __init__(
        self,
        board: ProgressBoard,
        to_send: int,
        interval_s: float,
        tokens: bool = True,
        stream: IO[str] | None = None,
    ) -> None:
        self.board = board
        self.to_send = to_send
        self.interval_s = interval_s
        self.tokens = tokens
        self.stream = stream if stream is not None else sys.stderr
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        self._started = 0.0
        self._last: Counts | None = None  # the counts of the line printed last

    def __enter__(self) -> ProgressPrinter:
        self._started = time.monotonic()
        if _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.to_send, unit="rows", file=self.stream, dynamic_ncols=True,
                desc="spark-vllm", mininterval=0,
            )  # fmt: skip
        self._thread = threading.Thread(target=self._loop, name="spark-vllm-printer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.show(final=True)  # where the run ended, however short it was
        if self._bar is not None:
            self._bar.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.show()

    def line(self, counts: Counts, elapsed_s: float) -> str:
        rate = counts.rows / elapsed_s if elapsed_s > 0 else 0.0
        share = 100 * counts.rows / self.to_send if self.to_send else 100.0
        parts = [
            f"spark-vllm progress: {counts.rows:,}/{self.to_send:,} rows ({share:.1f} %)",
            f"{counts.succeeded:,} succeeded",
            f"{counts.failed:,} failed",
            f"{rate:,.1f} rows/s",
        ]
        if self.tokens:
            parts.append(f"{counts.completion_tokens / max(elapsed_s, 1e-9):,.0f} out tokens/s")
        left = self.to_send - counts.rows
        parts.append(f"ETA {_duration(left / rate)}" if rate > 0 and left > 0 else "ETA -")
        return ", ".join(parts)

    def show(self, final: bool = False) -> None:
        """One line (or the bar) of the counts now; `final`: only when they changed since
        the line before, so a run's last line is not printed twice."""
        counts, _ = self.board.totals()
        if final and counts == self._last:
            return
        self._last = counts
        elapsed = time.monotonic() - self._started
        if self._bar is not None:
            self._bar.n = counts.rows
            note = f"{counts.failed:,} failed"
            if self.tokens:
                note += f", {counts.completion_tokens / max(elapsed, 1e-9):,.0f} out tokens/s"
            self._bar.set_postfix_str(note, refresh=False)
            self._bar.refresh()
            return
        print(self.line(counts, elapsed), file=self.stream, flush=True)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
