"""The progress channel: the driver's board, a task's reporter, and the printed line."""

from __future__ import annotations

import asyncio
import io
import logging
import time
import urllib.error
import urllib.request

import pytest

from spark_vllm.local_server import free_port  # internal: a port nobody listens on
from spark_vllm.progress import (
    Counts,
    ProgressBoard,
    ProgressPrinter,
    ProgressReporter,
    ProgressTarget,
    TaskReport,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def board():
    board = ProgressBoard("127.0.0.1", "127.0.0.1", 0, interval_s=0.05)
    yield board
    board.close()


def post(
    board: ProgressBoard,
    body: bytes | None,
    token: str | None = None,
    path: str = "/progress",
    method: str = "POST",
):
    """Ask like a task would (token None: the run's; "-": no Authorization header at all);
    returns (status, text)."""
    url = board.target.url.replace("/progress", path)
    request = urllib.request.Request(url, data=body, method=method)
    if token != "-":
        request.add_header("Authorization", f"Bearer {board.token if token is None else token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def report(partition: int, attempt: int, rows: int, failed: int = 0) -> bytes:
    counts = Counts(rows, rows - failed, failed, 10 * rows, 5 * rows)
    return TaskReport(3, partition, attempt, counts).to_json()


def test_the_board_sums_the_latest_attempt_of_every_task(board):
    assert post(board, report(0, attempt=1, rows=40))[0] == 204
    assert post(board, report(1, attempt=2, rows=25, failed=5))[0] == 204
    # Spark ran partition 0 again: the new attempt starts from zero and replaces the old
    assert post(board, report(0, attempt=7, rows=3))[0] == 204
    # a late report of the attempt that was replaced changes nothing
    assert post(board, report(0, attempt=1, rows=50))[0] == 204
    # reports of one attempt may cross: its counts only grow, so the larger stays
    assert post(board, report(1, attempt=2, rows=20, failed=5))[0] == 204
    counts, tasks = board.totals()
    assert tasks == 2
    assert counts == Counts(28, succeeded=23, failed=5, prompt_tokens=280, completion_tokens=140)


@pytest.mark.parametrize(
    ("body", "token", "path", "status", "says"),
    [
        (report(0, 1, 5), "not-the-token", "/progress", 401, "bearer token"),
        (report(0, 1, 5), "", "/progress", 401, "bearer token"),
        (report(0, 1, 5), "-", "/progress", 401, "bearer token"),
        (report(0, 1, 5), "not-the-token", "/elsewhere", 401, "bearer token"),
        (report(0, 1, 5), None, "/metrics", 404, "POST /progress"),
        (b"{not json", None, "/progress", 400, "JSON with task and counts"),
        (b'{"task": {"stage": 1, "partition": 0, "attempt": 1}}', None, "/progress", 400, "counts"),
        (
            TaskReport(1, 0, 1, Counts(rows=-1)).to_json(),
            None, "/progress", 400, "counts >= 0",
        ),
        (b"x" * 20_000, None, "/progress", 413, "1 to 16384 bytes"),
    ],
)  # fmt: skip
def test_the_board_refuses_what_is_not_a_report_of_this_run(board, body, token, path, status, says):
    got, text = post(board, body, token, path)
    assert got == status
    assert says in text
    assert board.totals() == (Counts(), 0)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_need_the_token_too_and_are_refused(board, method):
    assert post(board, None, "-", method=method)[0] == 401
    status, text = post(board, None, None, method=method)
    assert (status, text) == (405, "only POST /progress")


def test_a_reporter_posts_its_task_counts_to_the_board(board):
    reporter = ProgressReporter(board.target, lambda: (4, 9, 123))

    async def go() -> None:
        await reporter.send(Counts(12, 11, 1, 100, 60))
        await reporter.close()

    asyncio.run(go())
    assert board.totals() == (Counts(12, 11, 1, 100, 60), 1)


def test_a_reporter_that_cannot_reach_the_driver_warns_once_and_never_raises(caplog):
    target = ProgressTarget(f"http://127.0.0.1:{free_port()}/progress", "t", 0.01)
    reporter = ProgressReporter(target, lambda: (0, 0, 0))

    async def go() -> None:
        for _ in range(3):
            await reporter.send(Counts(1))
        await reporter.close()

    with caplog.at_level(logging.WARNING, logger="spark_vllm.progress"):
        asyncio.run(go())
    warnings = [r for r in caplog.records if "progress report" in r.getMessage()]
    assert len(warnings) == 1
    assert target.url in warnings[0].getMessage()


def test_the_progress_line_names_counts_rates_and_the_time_left(board):
    printer = ProgressPrinter(board, to_send=100_000, interval_s=10, stream=io.StringIO())
    line = printer.line(Counts(12_000, 11_990, 10, 0, 2_400_000), elapsed_s=30.0)
    assert line == (
        "spark-vllm progress: 12,000/100,000 rows (12.0 %), 11,990 succeeded, 10 failed, "
        "400.0 rows/s, 80,000 out tokens/s, ETA 3m40s"
    )
    embedding = ProgressPrinter(board, to_send=10, interval_s=10, tokens=False)
    assert embedding.line(Counts(10, 10), elapsed_s=2.0) == (
        "spark-vllm progress: 10/10 rows (100.0 %), 10 succeeded, 0 failed, 5.0 rows/s, ETA -"
    )
    assert printer.line(Counts(), elapsed_s=0.0).endswith("0.0 rows/s, 0 out tokens/s, ETA -")
    hours = printer.line(Counts(1_000), elapsed_s=100.0)
    assert hours.endswith("ETA 2h45m")


def test_the_printer_prints_a_line_every_interval_off_a_terminal(board):
    out = io.StringIO()
    with ProgressPrinter(board, to_send=50, interval_s=0.05, stream=out):
        for rows in (10, 20, 30):
            post(board, report(0, 1, rows))
            time.sleep(0.12)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 4, lines
    assert all(line.startswith("spark-vllm progress: ") for line in lines)
    assert "30/50 rows (60.0 %)" in lines[-1]
