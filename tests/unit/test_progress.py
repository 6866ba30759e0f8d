"""The progress channel: the driver's board, a task's reporter, and the printed line."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
import urllib.error
import urllib.request

import orjson
import pytest

from spark_vllm.driver.local_server import free_port  # internal: a port nobody listens on
from spark_vllm.driver.progress import JobMetrics, ProgressBoard, ProgressPrinter
from spark_vllm.task.budget import GRANTED, STOP, WAIT, Budget, BudgetLease
from spark_vllm.task.tally import (
    Counts,
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

    with caplog.at_level(logging.WARNING, logger="spark_vllm.driver.progress"):
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


def test_a_report_carries_retries_rows_in_flight_and_outage(board):
    counts = Counts(7, 6, 1, 70, 35, retries=4, in_flight=32, outage_ms=1500)
    assert TaskReport.from_json(TaskReport(1, 2, 3, counts).to_json()).counts == counts
    assert post(board, TaskReport(1, 2, 3, counts).to_json())[0] == 204
    assert board.totals() == (counts, 1)


METRICS_TOKEN = "scraper-token"  # a test's


@pytest.fixture
def metered():
    metrics = JobMetrics(METRICS_TOKEN, run_id="r1", model="tiny", task="chat", to_send=100)
    board = ProgressBoard("127.0.0.1", "127.0.0.1", 0, interval_s=0.05, metrics=metrics)
    yield board
    board.close()


def scrape(board: ProgressBoard, token: str | None, accept: str = "") -> tuple[int, str, str]:
    """GET /metrics as Prometheus does: (status, content type, text)."""
    request = urllib.request.Request(board.target.url.replace("/progress", "/metrics"))
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_the_board_serves_the_job_metrics_to_a_scraper_with_the_token(metered):
    from prometheus_client.parser import text_string_to_metric_families

    post(metered, TaskReport(3, 0, 1, Counts(40, 38, 2, 400, 200, 3, 8, 2500)).to_json())
    post(metered, TaskReport(3, 1, 2, Counts(10, 10, 0, 100, 50, 0, 4, 0)).to_json())
    status, content_type, text = scrape(metered, METRICS_TOKEN)
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("spark_vllm_rows_total", (("outcome", "succeeded"),))] == 48
    assert samples[("spark_vllm_rows_total", (("outcome", "failed"),))] == 2
    assert samples[("spark_vllm_rows_to_send", ())] == 100
    assert samples[("spark_vllm_prompt_tokens_total", ())] == 500
    assert samples[("spark_vllm_completion_tokens_total", ())] == 250
    assert samples[("spark_vllm_retries_total", ())] == 3
    assert samples[("spark_vllm_sidecar_outage_seconds_total", ())] == 2.5
    assert samples[("spark_vllm_rows_in_flight", ())] == 12
    assert samples[("spark_vllm_tasks_reporting", ())] == 2
    info = (("model", "tiny"), ("run_id", "r1"), ("task", "chat"))
    assert samples[("spark_vllm_run_info", info)] == 1
    assert "# TYPE spark_vllm_rows_total counter" in text
    # OpenMetrics for a scraper that asks for it
    status, content_type, text = scrape(metered, METRICS_TOKEN, "application/openmetrics-text")
    assert (status, content_type.split(";")[0]) == (200, "application/openmetrics-text")
    assert text.endswith("# EOF\n")


@pytest.mark.parametrize("token", [None, "", "wrong", "progress"])
def test_metrics_need_the_metrics_token_and_no_other(metered, token):
    if token == "progress":  # the tasks' token opens /progress only
        token = metered.token
    status, _, text = scrape(metered, token)
    assert status == 401
    assert "metrics.token_env" in text
    assert "spark_vllm" not in text


def test_the_metrics_token_cannot_report_progress(metered):
    status, _ = post(metered, report(0, 1, 5), METRICS_TOKEN)
    assert status == 401
    assert metered.totals() == (Counts(), 0)


def test_without_metrics_the_board_serves_none(board):
    status, text = post(board, None, None, path="/metrics", method="GET")
    assert (status, text) == (405, "only POST /progress")


def lease(
    board: ProgressBoard, partition: int, want: int, counts: Counts, attempt: int = 1
) -> tuple[int, bool]:
    """Ask as a task under a budget does: POST /lease with its counts and `want`;
    (rows granted, budget reached)."""
    body = orjson.loads(TaskReport(3, partition, attempt, counts).to_json())
    body["want"] = want
    status, text = post(board, orjson.dumps(body), path="/lease")
    assert status == 200, text
    answer = orjson.loads(text)
    return int(answer["granted"]), bool(answer["reached"])


def budget_board(budget: Budget):
    return ProgressBoard("127.0.0.1", "127.0.0.1", 0, interval_s=0.05, budget=budget)


def test_a_row_budget_is_granted_exactly_across_tasks():
    board = budget_board(Budget(max_rows=100))
    try:
        assert lease(board, 0, 64, Counts()) == (64, False)
        assert lease(board, 1, 64, Counts()) == (36, False)  # what is left
        assert not board.budget_reached
        assert lease(board, 0, 64, Counts(64, 64)) == (0, True)
        assert board.budget_reached
    finally:
        board.close()


def test_a_task_run_again_takes_over_the_rows_its_failed_attempt_was_granted():
    board = budget_board(Budget(max_rows=50))
    try:
        assert lease(board, 0, 40, Counts(), attempt=1) == (40, False)
        # attempt 1 died; Spark runs the task again: its 40 rows are not spent twice
        assert lease(board, 0, 40, Counts(), attempt=5) == (40, False)
        assert lease(board, 1, 40, Counts()) == (10, False)
        assert lease(board, 0, 40, Counts(), attempt=1) == (0, True)  # the old attempt: stop
    finally:
        board.close()


def test_the_output_budget_holds_max_tokens_for_every_row_not_yet_answered():
    """max_output_tokens 100 at 16 tokens a row: six rows may be out at once. Another
    task waits (nothing granted, budget not reached) until answers free what they did
    not use; once what is left cannot cover one row, the budget is reached."""
    board = budget_board(Budget(max_output_tokens=100, reserve=16))
    try:
        assert lease(board, 0, 64, Counts()) == (6, False)  # 6 x 16 = 96 held
        assert lease(board, 1, 64, Counts()) == (0, False)  # wait: rows are out
        assert not board.budget_reached
        # the six rows answered with 5 tokens each: 70 left, four rows' worth
        assert lease(board, 1, 64, Counts()) == (0, False)  # the driver has not heard yet
        assert lease(board, 0, 64, Counts(6, 6, 0, 60, 30)) == (4, False)
        # those four used 16 each: 6 left, less than a row's worth
        assert lease(board, 0, 64, Counts(10, 10, 0, 100, 94)) == (0, True)
        assert board.budget_reached
    finally:
        board.close()


def test_prompt_tokens_past_their_budget_stop_the_grants():
    board = budget_board(Budget(max_prompt_tokens=1000))
    try:
        assert lease(board, 0, 10, Counts()) == (10, False)
        assert lease(board, 0, 10, Counts(10, 10, 0, 999, 50)) == (10, False)
        assert lease(board, 0, 10, Counts(20, 20, 0, 1500, 90)) == (0, True)
    finally:
        board.close()


@pytest.mark.parametrize("want", [0, -1, "3", None, True])
def test_a_lease_asks_for_at_least_one_row(board, want):
    body = orjson.loads(TaskReport(3, 0, 1, Counts()).to_json())
    body["want"] = want
    status, text = post(board, orjson.dumps(body), path="/lease")
    assert status == 400
    assert "want >= 1" in text


def test_a_task_stops_taking_rows_once_the_budget_is_reached():
    board = budget_board(Budget(max_rows=5))
    try:
        taker = BudgetLease(board.target, lambda: (3, 0, 1))
        taken = [taker.take(in_hand=100, counts=Counts) for _ in range(8)]
        assert taken == [GRANTED] * 5 + [STOP] * 3
        assert taker.exhausted
    finally:
        board.close()


def test_a_task_waits_while_rows_out_hold_the_output_budget():
    board = budget_board(Budget(max_output_tokens=40, reserve=16))
    try:
        first = BudgetLease(board.target, lambda: (3, 0, 1))
        second = BudgetLease(board.target, lambda: (3, 1, 1))
        assert [first.take(10, Counts) for _ in range(3)] == [GRANTED, GRANTED, WAIT]
        assert second.take(10, Counts) == WAIT
        assert not second.exhausted
        # the first task's two rows came back with 4 tokens each: 32 left, two rows' worth;
        # it holds one more row (its last), the other one is the second task's
        assert first.take(1, lambda: Counts(2, 2, 0, 20, 8)) == GRANTED
        assert second.take(10, Counts) == GRANTED
        assert second.take(10, Counts) == WAIT
    finally:
        board.close()


def test_a_task_that_cannot_ask_the_driver_fails_rather_than_pass_the_budget(monkeypatch):
    from spark_vllm.driver import progress
    from spark_vllm.errors import BudgetUnavailable

    monkeypatch.setattr(progress.time, "sleep", lambda s: None)  # no backoff in a test
    target = ProgressTarget(f"http://127.0.0.1:{free_port()}/progress", "t", 1.0)
    with pytest.raises(BudgetUnavailable, match="cannot be asked"):
        BudgetLease(target, lambda: (0, 0, 0)).take(10, Counts)


def test_a_flood_of_idle_connections_starts_no_more_threads_than_the_bound(monkeypatch):
    import socket

    from spark_vllm.driver import progress

    monkeypatch.setattr(progress, "MAX_CONNECTIONS", 4, raising=False)
    monkeypatch.setattr(progress, "SLOT_WAIT_S", 0.01, raising=False)
    board = ProgressBoard("127.0.0.1", "127.0.0.1", 0, interval_s=0.05)
    host, port = board._server.server_address[:2]
    before = threading.active_count()
    idle = [socket.create_connection((host, port)) for _ in range(12)]
    try:
        time.sleep(0.5)
        assert threading.active_count() - before <= 4
    finally:
        for sock in idle:
            sock.close()
        board.close()


def test_a_budgets_grant_alone() -> None:
    """Budget.grant, the arithmetic the driver's lease endpoint applies (see the lease tests
    above for the endpoint): max_rows counts rows granted, max_prompt_tokens the answered
    rows' prompts, max_output_tokens the answers plus `reserve` per row out."""
    rows = Budget(max_rows=10)
    assert rows.grant(4, 0, Counts()) == (4, False)
    assert rows.grant(4, 8, Counts(rows=8)) == (2, False)
    assert rows.grant(4, 10, Counts(rows=10)) == (0, True)
    prompts = Budget(max_prompt_tokens=100)
    assert prompts.grant(4, 3, Counts(rows=3, prompt_tokens=99)) == (4, False)
    assert prompts.grant(4, 3, Counts(rows=3, prompt_tokens=100)) == (0, True)
    out = Budget(max_output_tokens=100, reserve=10)
    # 2 rows out hold 20 of the 100: 8 more fit
    assert out.grant(64, 2, Counts()) == (8, False)
    # 95 answered: 5 left, less than one row's reserve
    assert out.grant(64, 10, Counts(rows=10, completion_tokens=95)) == (0, True)
    # 60 answered, 4 rows out hold the other 40: wait for answers, not reached
    assert out.grant(64, 10, Counts(rows=6, completion_tokens=60)) == (0, False)


def test_the_last_progress_line_is_not_printed_twice(board):
    """The printer's last line at the run's end comes only when the counts moved since
    the line before; the same counts once more were a duplicated final line."""
    out = io.StringIO()
    with ProgressPrinter(board, to_send=10, interval_s=0.3, stream=out):
        post(board, report(0, 1, 10))
        time.sleep(0.45)  # one line of the loop's, at 0.3 s, holds the end already
    lines = out.getvalue().splitlines()
    finished = [line for line in lines if "10/10 rows" in line]
    assert len(finished) == 1, lines
