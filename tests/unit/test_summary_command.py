"""`spark-vllm summary`: a stored summary printed again, without Spark for a local output."""

from __future__ import annotations

import json

import pytest
import yaml

from spark_vllm.cli import main
from spark_vllm.driver.summary import Summary
from spark_vllm.storage.results import SUMMARIES

pytestmark = pytest.mark.unit


def test_the_summary_of_a_local_output_is_read_without_spark(tmp_path, capsys, monkeypatch):
    """It started a Spark session (half a minute of start-up lines) to read a JSON file."""
    out = tmp_path / "out"
    (out / SUMMARIES).mkdir(parents=True)
    for run, rows in (("20261207T100000000000Z", 3), ("20261207T110000000000Z", 5)):
        summary = Summary(rows, rows, 0, 10, 20, 4.0, str(out), run_id=run, waiting_s=1.0)
        (out / SUMMARIES / f"{run}.json").write_text(json.dumps(summary.to_dict()))
    spec = tmp_path / "job.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "input": {"format": "jsonl", "path": str(tmp_path / "in.jsonl")},
                "output": {"path": str(out)},
                "endpoint": {"model": "m"},
                "prompt": {"template": "{{ q }}"},
            }
        )
    )

    def no_spark(spec: object) -> None:
        raise AssertionError("a Spark session was started")

    monkeypatch.setattr("spark_vllm.cli.spark_session", no_spark)
    assert main(["summary", str(spec)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("spark-vllm summary (run 20261207T110000000000Z)\n  rows          5")
    assert "  rows/s        1.67 (over the answering time)" in printed
    assert main(["summary", str(spec), "--all"]) == 0
    assert capsys.readouterr().out.count("spark-vllm summary (run ") == 2
    assert main(["summary", str(spec), "--run", "nope"]) == 1
    assert "holds no summary of run 'nope'" in capsys.readouterr().err
