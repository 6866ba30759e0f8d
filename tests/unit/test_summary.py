"""A run's summary: failures by kind, the tally the tasks send, the JSON document."""

from __future__ import annotations

import json

import pytest

from spark_vllm.driver.summary import Summary
from spark_vllm.task.tally import Tally, error_kind

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (
            "HTTP 400: This model's maximum context length is 512 tokens. However, you "
            "requested 2049 tokens",
            "HTTP 400 This model's maximum context length is",
        ),
        ("HTTP 404: The model `nope` does not exist.", "HTTP 404 The model `nope` does not exist"),
        ("HTTP 500: ", "HTTP 500"),
        (
            "gave up after 3 attempts; last: HTTP 503: Service Unavailable",
            "gave up: HTTP 503 Service Unavailable",
        ),
        ("gave up after 5 attempts; last: request timed out", "gave up: timeout"),
        ("gave up after 5 attempts; last: cannot connect: Connection refused",
         "gave up: cannot connect"),
        ("bad input: rendered prompt is empty", "bad input"),
        ("bad input: column 'messages' is null", "bad input"),
        ("bad answer: field 'score' is not an integer", "bad answer"),
        ("unexpected response (JSONDecodeError('x')): <html>", "unexpected response"),
        ("request timed out", "timeout"),
        ("HTTP 504: upstream request timed out", "HTTP 504 upstream request timed out"),
        ("no one saw what came to pass, twice", "no one saw what came to"),
    ],
)  # fmt: skip
def test_errors_are_grouped_by_kind(error, kind):
    assert error_kind(error) == kind


def test_tallies_keep_each_kind_with_its_count_and_one_example_id():
    first, second = Tally(), Tally()
    first.count("bad input: rendered prompt is empty", (0, 0), "a")
    first.count("HTTP 400: too long for the model", (0, 0), "b")
    first.count(None, (10, 5), "c")
    second.count("HTTP 400: too long for the model", (0, 0), "d")
    second.count("HTTP 400: too long for the model", (0, 0), "e")
    second.retries = 3
    first.outage_s, first.window = 1.5, (64, 128)
    second.outage_s, second.window = 2.0, (16, 96)
    total = Tally().merge(first.shipped()).merge(second.shipped()).merge(Tally())
    assert total.breakdown() == [
        ("HTTP 400 too long for the model", 3, "b"),
        ("bad input", 1, "a"),
    ]
    assert (total.rows, total.failed, total.retries, total.prompt_tokens) == (5, 4, 3, 10)
    # outage adds up over tasks; the window spans the smallest and largest any task used
    assert (total.outage_s, total.window) == (3.5, (16, 128))


def test_the_json_document_gives_back_the_summary_it_was_made_of():
    summary = Summary(
        rows=30, succeeded=27, failed=3, prompt_tokens=900, completion_tokens=480,
        wall_s=12.3456, output="/data/out (parquet)",
        errors=[("HTTP 400: too long", 2), ("bad input: empty", 1)],
        skipped=5, run_id="20261130T120000000000Z", output_ids=35, output_failed=3,
        breakdown=[("HTTP 400 too long", 2, "7"), ("bad input", 1, "2")], retries=4,
        outage_s=7.25, window=(32, 512), status="succeeded", task="chat", model="tiny",
        settings_sha256="ab" * 32,
        finished_at="2026-11-30T12:00:12+00:00", versions={"pyspark": "4.2.0"},
    )  # fmt: skip
    document = json.loads(json.dumps(summary.to_dict()))  # as it is stored and read
    assert document["failed_by_kind"][0] == {
        "kind": "HTTP 400 too long",
        "rows": 2,
        "example_id": "7",
    }
    assert document["output_tokens_per_s"] == round(480 / 12.3456, 3)
    assert (document["sidecar_outage_s"], document["window"]) == (7.25, {"min": 32, "max": 512})
    assert Summary.from_dict(document) == summary
    embedding = Summary(10, 10, 0, 0, 0, 1.0, "o", tokens=False)
    data = json.loads(json.dumps(embedding.to_dict()))
    assert (data["prompt_tokens"], data["output_tokens_per_s"]) == (None, None)
    assert Summary.from_dict(data) == embedding


def test_the_printed_summary_lists_failures_by_kind_and_says_how_the_run_ended():
    summary = Summary(3, 1, 2, 0, 0, 2.0, "out", run_id="r", retries=1, status="interrupted",
                      breakdown=[("HTTP 400 too long", 2, "x")])  # fmt: skip
    text = summary.render()
    assert text.splitlines()[0] == "spark-vllm summary (run r, interrupted)"
    assert "  retries       1 (tries after a request's first)" in text
    assert "sidecar down" not in text and "window" not in text  # not known: not shown
    summary.outage_s, summary.window = 12.04, (8, 256)
    text = summary.render()
    assert "  sidecar down  12.0 s (summed over tasks)" in text
    assert "  window        8-256 rows in flight per task" in text
    assert "  failed rows by kind:\n    2 x HTTP 400 too long (e.g. id x)" in text


def test_rows_per_second_count_the_answering_time_not_the_wait_for_vllm():
    """A run that waited 100 s of its 130 for vLLM to start answered 300 rows in 30 s:
    10 rows/s, not 2.31; the summary says both times."""
    summary = Summary(300, 300, 0, 3000, 6000, 130.0, "out", run_id="r", waiting_s=100.0)
    assert summary.answering_s == 30.0
    assert summary.rows_per_s == 10.0
    assert summary.output_tokens_per_s == 200.0
    text = summary.render()
    assert "  wall time     130.0 s\n  waiting       100.0 s (for the vLLM server" in text
    assert "  answering     30.0 s (reading, sending, writing)" in text
    assert "  rows/s        10.00 (over the answering time)" in text
    document = summary.to_dict()
    assert (document["waiting_s"], document["answering_s"], document["rows_per_s"]) == (
        100.0,
        30.0,
        10.0,
    )
    assert Summary.from_dict(document).waiting_s == 100.0
    del document["waiting_s"]  # a summary left by an earlier version
    assert Summary.from_dict(document).waiting_s == 0.0


def test_a_tasks_window_is_no_wider_than_its_rows():
    """A 3-row task printed `window 128-128`: it had 3 rows in flight at most."""
    small, large = Tally(), Tally()
    for _ in range(3):
        small.count(None, (1, 1))
    for _ in range(150):
        large.count(None, (1, 1))
    small.add_window((128, 128))
    large.add_window((128, 128))
    large.add_window((192, 192))
    small.fit_window()
    large.fit_window()
    assert (small.window, large.window) == ((3, 3), (128, 150))
    assert Tally().merge(small).merge(large).window == (3, 150)
