"""What a run shows: live progress while it sends, and its summary after (printed, and
left beside the output as JSON)."""

from __future__ import annotations

import json
import re

import pyspark
import pytest

from spark_vllm import execute, plan, run_job, spec_from_dict
from spark_vllm.driver.summary import Summary
from tests.conftest import SERVED_NAME, sample_rows
from tests.integration.jobs import assert_one_row_per_input, read_rows, run_cli, spec_doc

pytestmark = pytest.mark.integration

LINE = re.compile(r"^spark-vllm progress: ([\d,]+)/([\d,]+) rows .*, ([\d,]+) failed,", re.M)


def progress_lines(text: str) -> list[tuple[int, int]]:
    """(rows done, rows to send) of every progress line in `text`."""
    return [(int(d.replace(",", "")), int(t.replace(",", ""))) for d, t, _ in LINE.findall(text)]


def test_a_single_partition_shows_its_progress_moving_while_it_runs(
    spark, vllm_server, tmp_path, capsys
):
    """One task streams the whole input; the driver's lines must move inside it, not jump
    to the end when the task finishes."""
    rows = sample_rows(160)
    doc = spec_doc(
        tmp_path, vllm_server, rows,
        partitions=1,
        concurrency={"mode": "fixed", "per_executor": 2},
        progress={"interval_s": 0.2},
    )  # fmt: skip
    summary = run_job(spark, spec_from_dict(doc))

    assert_one_row_per_input(read_rows(tmp_path / "out"), rows)
    seen = progress_lines(capsys.readouterr().err)
    assert seen, "no progress line was printed"
    assert {total for _, total in seen} == {160}
    done = [d for d, _ in seen]
    assert done == sorted(done), done  # the count never goes back
    moving = sorted({d for d in done if 0 < d < 160})
    assert len(moving) >= 5, f"progress moved only through {moving} before the end"
    assert summary.rows == 160


def test_progress_off_prints_nothing_and_the_job_still_runs(spark, vllm_server, tmp_path, capsys):
    rows = sample_rows(12)
    doc = spec_doc(tmp_path, vllm_server, rows, progress={"enabled": False, "interval_s": 0.05})
    job = plan(spark, spec_from_dict(doc))
    assert job.progress is None  # no endpoint listens
    summary = execute(spark, spec_from_dict(doc), job)
    assert summary.succeeded == 12
    assert progress_lines(capsys.readouterr().err) == []


def test_the_summary_breaks_failures_down_and_is_left_beside_the_output(
    spark, vllm_server, tmp_path
):
    rows = sample_rows(30)
    rows[7]["question"] = rows[9]["question"] = "word " * 2000  # longer than the context
    rows[2]["question"] = "   "  # renders to nothing: a bad input, never sent
    doc = spec_doc(tmp_path, vllm_server, rows)
    summary = run_job(spark, spec_from_dict(doc))

    kinds = {kind: (count, example) for kind, count, example in summary.breakdown}
    assert kinds.pop("bad input") == (1, rows[2]["id"])
    ((kind, (count, example)),) = kinds.items()
    assert kind.startswith("HTTP 400 ") and "maximum context" in kind, kind
    assert count == 2 and example in (rows[7]["id"], rows[9]["id"])
    assert summary.retries == 0  # a 400 is not retried
    assert summary.outage_s == 0.0  # the sidecar never went down
    low, high = summary.window or (0, 0)
    assert 1 <= low <= high, summary.window  # the windows the tasks sent under
    text = summary.render()
    assert "failed rows by kind:" in text
    assert f"1 x bad input (e.g. id {rows[2]['id']})" in text

    left = list((tmp_path / "out" / "_spark_vllm" / "summaries").glob("*.json"))
    assert [path.stem for path in left] == [summary.run_id]
    document = json.loads(left[0].read_text())
    assert Summary.from_dict(document).render() == text  # the JSON is the printed summary
    assert (document["status"], document["task"], document["model"]) == (
        "succeeded", "chat", SERVED_NAME,
    )  # fmt: skip
    assert document["versions"]["pyspark"] == pyspark.__version__
    assert len(document["settings_sha256"]) == 64
    assert document["failed_by_kind"][0] == {"kind": kind, "rows": 2, "example_id": example}
    assert document["window"] == {"min": low, "max": high}

    shown = run_cli(doc, tmp_path, command="summary")
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert shown.stdout.strip() == text
    shown = run_cli(doc, tmp_path, "--json", command="summary")
    assert json.loads(shown.stdout) == document
    missing = run_cli(doc, tmp_path, "--run", "19990101T000000000000Z", command="summary")
    assert missing.returncode == 1
    assert f"holds no summary of run '19990101T000000000000Z'; it holds {summary.run_id}" in (
        missing.stderr
    )
