"""Helpers for the integration tests: job specs, running the CLI, reading the output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml
from deltalake import DeltaTable

from spark_vllm import JobSpec, read_results, spec_from_dict
from tests.conftest import SERVED_NAME, write_jsonl

MAX_TOKENS = 16


def spec_doc(tmp_path: Path, base_url: str, rows: list[dict[str, Any]], **changes: Any) -> dict:
    doc: dict[str, Any] = {
        "input": {
            "format": "jsonl",
            "path": str(write_jsonl(tmp_path / "in.jsonl", rows)),
            "id_column": "id",
        },
        "output": {"format": "parquet", "path": str(tmp_path / "out"), "keep_columns": ["topic"]},
        "endpoint": {"base_url": base_url, "model": SERVED_NAME},
        "prompt": {"system": "Answer briefly.", "template": "{{ question }}"},
        "sampling": {"max_tokens": MAX_TOKENS, "temperature": 0.0},
        "concurrency": {"per_executor": 32},
        "retries": {"attempts": 3, "backoff_initial_s": 0.2},
        "timeouts": {"ready_s": 30},
        "partitions": 2,
    }
    for key, value in changes.items():
        # Sections merge key by key, but a prompt replaces the default one whole.
        if isinstance(value, dict) and isinstance(doc.get(key), dict) and key != "prompt":
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return doc


def task_config(
    base_url: str,
    *,
    window: int = 1,
    sampling: dict[str, Any] | None = None,
    adaptive: bool = False,
    max_window: int = 0,
    metrics_interval_s: float = 0.5,
) -> Any:
    """A TaskConfig for driving `run_partition` directly (internal: one task without a
    Spark job, to measure its window): chat over `question`, id `id`."""
    from pyspark.sql import types as T
    from pyspark.sql.pandas.types import to_arrow_schema

    from spark_vllm.request.kinds import Chat
    from spark_vllm.request.prompt import PromptBuilder
    from spark_vllm.task.retry import RetryPolicy
    from spark_vllm.task.runner import Concurrency, Endpoint, TaskConfig, Timeouts

    kind = Chat(
        SERVED_NAME,
        PromptBuilder("chat", template="{{ question }}"),
        sampling if sampling is not None else {"max_tokens": 8, "ignore_eos": True},
    )
    schema = T.StructType([T.StructField("id", T.StringType()), *kind.result_fields()])
    return TaskConfig(
        kind=kind,
        endpoint=Endpoint(base_url),
        id_column="id",
        output_schema=to_arrow_schema(schema),
        retries=RetryPolicy(attempts=2),
        timeouts=Timeouts(ready_s=30, request_s=120, connect_s=5),
        concurrency=Concurrency(
            per_task=window,
            adaptive=adaptive,
            max_per_task=max_window,
            metrics_interval_s=metrics_interval_s,
        ),
        flush_rows=8,
    )


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every row under an output path, all runs (the raw attempts, not the latest view)."""
    return pq.read_table(path).to_pylist()


def latest_rows(spark: Any, path: Path, id_column: str = "id") -> list[dict[str, Any]]:
    """The output through the project's reader: one row per id, the latest attempt."""
    return [r.asDict() for r in read_results(spark, str(path), id_column).collect()]


def assert_one_row_per_input(out: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    ids = [r["id"] for r in out]
    assert len(ids) == len(set(ids)), "an id appears twice in the output"
    assert sorted(ids) == sorted(r["id"] for r in rows)


def run_cli(
    spec: dict, tmp_path: Path, *args: str, timeout: float = 240, command: str = "run"
) -> subprocess.CompletedProcess:
    """`spark-vllm COMMAND job.yaml ARGS` in a process of its own."""
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return subprocess.run(
        [sys.executable, "-m", "spark_vllm.cli", command, str(path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )


def batch_line(custom_id: str, url: str, body: Any, method: str = "POST") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": method, "url": url, "body": body}


def write_batch(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def batch_spec(tmp_path: Path, base_url: str, model: str, lines: list[dict[str, Any]]) -> JobSpec:
    """A job over an OpenAI batch file holding `lines`."""
    return spec_from_dict(
        {
            "input": {
                "format": "openai-batch",
                "path": str(write_batch(tmp_path / "batch.jsonl", lines)),
            },
            "output": {"path": str(tmp_path / "out")},
            "endpoint": {"base_url": base_url, "model": model},
            "retries": {"attempts": 2, "backoff_initial_s": 0.2},
            "timeouts": {"ready_s": 30},
            "partitions": 2,
        }
    )


def batch_output(path: Path) -> list[dict[str, Any]]:
    """Every output line of every run, parsed, with its run folder."""
    found = []
    for part in sorted(path.glob("run=*/part-*")):
        for text in part.read_text().splitlines():
            found.append({**json.loads(text), "_run": part.parent.name})
    return found


def table_rows(path: Path) -> list[dict[str, Any]]:
    """The table's current version, read by delta-rs (no Spark)."""
    return DeltaTable(str(path)).to_pyarrow_table().to_pylist()


def run_commits(path: Path, operation: str = "WRITE") -> list[dict[str, Any]]:
    """The table's commits of `operation` (WRITE: those that appended rows; MERGE: the
    upserts), oldest first, as delta-rs reads its log."""
    history = DeltaTable(str(path)).history()
    return sorted((c for c in history if c["operation"] == operation), key=lambda c: c["version"])
