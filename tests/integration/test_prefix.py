"""Prefix-aware scheduling on real Spark: a prefix group lands in one task and in
sequence, a group too large for one task's share is cut into shares, and the job's
answers do not depend on it (real vLLM, temperature 0)."""

from __future__ import annotations

from collections import defaultdict

import pytest
from pyspark.sql import functions as F

from spark_vllm import run_job, spec_from_dict
from spark_vllm.driver.job import arrange
from tests.conftest import sample_rows
from tests.integration.jobs import assert_one_row_per_input, read_rows, spec_doc

pytestmark = pytest.mark.integration

SIZES = [40, 9, 9, 8, 7, 5, 5, 3, 2, 1, 1, 1]  # 91 rows in 12 documents
TASKS = 4  # a share of 23 rows: only the first document is larger


def documents(seed_text: str = "Spark reads the lake and vLLM answers.") -> list[dict]:
    rows = []
    for doc, size in enumerate(SIZES):
        text = f"Document {doc:02d}. " + seed_text * 8
        for q in range(size):
            rows.append(
                {"id": f"d{doc:02d}-q{q:02d}", "doc": f"d{doc:02d}", "document": text,
                 "question": f"Question {q} about document {doc}?"}
            )  # fmt: skip
    return rows


def placement(spark, tmp_path, prefix: dict) -> dict[str, list[tuple[int, int]]]:
    """doc → [(task, position in the task)] of its rows, as arrange() places them."""
    rows = documents()
    doc = spec_doc(
        tmp_path, "http://127.0.0.1:1/v1", rows, partitions=TASKS, prefix=prefix,
        prompt={"template": "{{ document }}\n\nQuestion: {{ question }}"},
    )  # fmt: skip
    spec = spec_from_dict(doc)
    df = spark.createDataFrame(rows).select("id", "doc", "document", "question")
    placed = arrange(df, spec, spark).withColumns(
        {"task": F.spark_partition_id(), "pos": F.monotonically_increasing_id()}
    )
    found: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for row in placed.select("id", "doc", "task", "pos").collect():
        found[row["doc"]].append((row["task"], row["pos"]))
    assert sum(len(v) for v in found.values()) == len(rows)
    return found


def in_sequence(spots: list[tuple[int, int]], task_rows: dict[int, list[int]]) -> bool:
    """Whether the rows at `spots` are back to back within each task they are in."""
    for task in {t for t, _ in spots}:
        mine = sorted(p for t, p in spots if t == task)
        order = task_rows[task]
        start = order.index(mine[0])
        if order[start : start + len(mine)] != mine:
            return False
    return True


@pytest.mark.parametrize("prefix", [{"columns": ["doc"]}, {"chars": 120}])
def test_a_prefix_group_lands_in_one_task_and_in_sequence(spark, tmp_path, capsys, prefix):
    found = placement(spark, tmp_path, prefix)
    task_rows: dict[int, list[int]] = defaultdict(list)
    for spots in found.values():
        for task, pos in spots:
            task_rows[task].append(pos)
    task_rows = {t: sorted(p) for t, p in task_rows.items()}
    for doc, spots in found.items():
        tasks = {t for t, _ in spots}
        if doc == "d00":  # 40 rows: cut into a share of 23 and the rest
            assert len(tasks) == 2, spots
        else:
            assert len(tasks) == 1, (doc, spots)
        assert in_sequence(spots, task_rows), (doc, spots)
    loads = sorted(len(p) for p in task_rows.values())
    assert max(loads) <= 23 + 9, loads
    said = capsys.readouterr().err
    assert f"spark-vllm prefix groups: 12 groups (1 split) in {TASKS} tasks" in said


def test_no_row_and_no_column_is_lost_and_nulls_group_by_position(spark, tmp_path, capsys):
    """Columns named like the planner's own helpers stay; rows whose prefix columns are
    null form groups of their own, told apart by which column is null."""
    rows = [
        {"id": f"r{i}", "a": None if i % 3 == 0 else "x", "b": None if i % 3 == 1 else "x",
         "first": i, "last": -i, "question": f"q{i}"}
        for i in range(30)
    ]  # fmt: skip
    doc = spec_doc(
        tmp_path, "http://127.0.0.1:1/v1", rows, partitions=3,
        prefix={"columns": ["a", "b"]}, output={"path": str(tmp_path / "o"),
        "keep_columns": ["first", "last"]},
    )  # fmt: skip
    df = spark.createDataFrame(rows).select("id", "a", "b", "first", "last", "question")
    placed = arrange(df, spec_from_dict(doc), spark)
    assert placed.columns == df.columns

    def content(frame):
        return sorted(tuple(r) for r in frame.collect())

    assert content(placed) == content(df)
    # (null, x), (x, null) and (x, x): three groups, not two
    assert "spark-vllm prefix groups: 3 groups" in capsys.readouterr().err


def test_the_answers_do_not_depend_on_the_order(spark, vllm_server, tmp_path, capsys):
    rows = sample_rows(60)
    for i, row in enumerate(rows):
        row["topic_doc"] = f"doc{i % 6}"
    for name in ("plain", "grouped"):
        (tmp_path / name).mkdir()
    plain = spec_doc(tmp_path / "plain", vllm_server, rows, partitions=3)
    grouped = spec_doc(
        tmp_path / "grouped", vllm_server, rows, partitions=3,
        prefix={"columns": ["topic_doc"]},
    )  # fmt: skip
    first = run_job(spark, spec_from_dict(plain))
    second = run_job(spark, spec_from_dict(grouped))
    assert "spark-vllm prefix groups: 6 groups (0 split) in 3 tasks" in capsys.readouterr().err
    assert first.rows == second.rows == 60
    a = {r["id"]: r for r in read_rows(tmp_path / "plain" / "out")}
    b = {r["id"]: r for r in read_rows(tmp_path / "grouped" / "out")}
    assert_one_row_per_input(list(b.values()), rows)
    assert {i: r["prompt_tokens"] for i, r in a.items()} == {
        i: r["prompt_tokens"] for i, r in b.items()
    }
    assert {i: r["response"] for i, r in a.items()} == {i: r["response"] for i, r in b.items()}
