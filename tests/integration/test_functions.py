"""spark_vllm.chat in a plain PySpark query, against the real vLLM."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from spark_vllm import chat
from tests.conftest import SERVED_NAME

pytestmark = pytest.mark.integration


def test_chat_column_answers_every_row_in_its_own_place(spark, vllm_server):
    """Rows are shuffled over partitions; each answer must land on its own row.

    Prompt n is the word "apple" n times, so vLLM's prompt_tokens grow with n: a row
    that got another row's answer would break the order.
    """
    rows = [(n, " ".join(["apple"] * n)) for n in range(1, 41)]
    df = spark.createDataFrame(rows, "n int, question string").repartition(3, "question")
    out = (
        df.withColumn(
            "answer",
            chat(
                "question",
                model=SERVED_NAME,
                base_url=vllm_server,
                sampling={"max_tokens": 4, "ignore_eos": True},
                window=4,
            ),
        )
        .select("n", "answer.*")
        .orderBy("n")
        .collect()
    )
    assert [r["n"] for r in out] == list(range(1, 41))
    assert all(r["error"] is None and r["response"] is not None for r in out)
    assert all(r["completion_tokens"] == 4 for r in out)
    tokens = [r["prompt_tokens"] for r in out]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), tokens


def test_chat_column_takes_conversations_and_records_bad_rows(spark, vllm_server):
    schema = "id int, messages array<struct<role string, content string>>"
    rows = [
        (1, [("system", "Answer briefly."), ("user", "What is Spark?")]),
        (2, None),
        (3, [("user", "What is vLLM?")]),
    ]
    out = {
        r["id"]: r
        for r in spark.createDataFrame(rows, schema)
        .select(
            "id",
            chat(
                F.col("messages"),
                model=SERVED_NAME,
                base_url=vllm_server,
                sampling={"max_tokens": 3},
            ).alias("a"),
        )
        .select("id", "a.*")
        .collect()
    }
    assert out[1]["error"] is None and out[3]["error"] is None
    assert out[1]["prompt_tokens"] > out[3]["prompt_tokens"]
    assert out[2]["response"] is None
    assert out[2]["error"] == "bad input: column 'prompt' is null"
    assert out[2]["attempts"] == 0
