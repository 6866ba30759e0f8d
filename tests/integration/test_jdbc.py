"""format: jdbc in and out, against a real PostgreSQL started here and the real vLLM."""

from __future__ import annotations

import json

import pytest

from spark_vllm import JdbcError, SpecError, plan, run_job, spec_from_dict
from spark_vllm.storage import jdbc
from tests.conftest import SERVED_NAME
from tests.integration.postgres import PASSWORD, USER

pytestmark = pytest.mark.integration

PRODUCTS = 40


@pytest.fixture(scope="module")
def products(postgres):  # type: ignore[no-untyped-def]
    """The source table, once for this module."""
    postgres.psql(
        "CREATE TABLE products (product_id integer PRIMARY KEY, name text, notes text);"
        "INSERT INTO products SELECT n, 'product ' || n, NULL "
        f"FROM generate_series(1, {PRODUCTS}) n;"
        # One row the model cannot take: its prompt is longer than the context.
        "UPDATE products SET name = repeat('very long name ', 400) WHERE product_id = 7;"
    )
    return "products"


@pytest.fixture
def db_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Credentials as the job sees them: environment variables the spec names."""
    monkeypatch.setenv("SHOP_DB_USER", USER)
    monkeypatch.setenv("SHOP_DB_PASSWORD", PASSWORD)
    return {"user_env": "SHOP_DB_USER", "password_env": "SHOP_DB_PASSWORD"}


def jdbc_spec(url: str, base_url: str, creds: dict[str, str], source: dict, target: dict):  # type: ignore[no-untyped-def]
    return spec_from_dict(
        {
            "input": {
                "format": "jdbc",
                "id_column": "product_id",
                "jdbc": {"url": url, **creds, **source},
            },
            "output": {
                "format": "jdbc",
                "keep_columns": ["name"],
                "jdbc": {"url": url, **creds, **target},
            },
            "endpoint": {"base_url": base_url, "model": SERVED_NAME},
            "prompt": {"template": "Describe {{ name }}."},
            "sampling": {"max_tokens": 4, "ignore_eos": True},
            "retries": {"attempts": 2, "backoff_initial_s": 0.2},
            "timeouts": {"ready_s": 30},
        }
    )


def test_table_in_partitioned_read_upsert_out_and_a_resume(
    spark, vllm_server, postgres, products, db_env
):
    source = {
        "table": "products",
        "partition_column": "product_id",
        "lower_bound": 1,
        "upper_bound": PRODUCTS + 1,
        "num_partitions": 3,
    }
    spec = jdbc_spec(postgres.url, vllm_server, db_env, source, {"table": "answers"})
    sql = postgres.psql
    first = run_job(spark, spec)
    assert (first.rows, first.succeeded, first.failed) == (PRODUCTS, PRODUCTS - 1, 1)
    assert first.completion_tokens == 4 * (PRODUCTS - 1)

    rows = sql("SELECT product_id, error IS NULL, run FROM answers")
    table = [r.split("|") for r in rows.splitlines()]
    assert sorted(int(r[0]) for r in table) == list(range(1, PRODUCTS + 1))
    assert {r[2] for r in table} == {first.run_id}
    bad = [r for r in table if r[1] == "f"]
    assert [int(r[0]) for r in bad] == [7]
    answered = sql("SELECT count(*) FROM answers WHERE response IS NOT NULL")
    assert answered == f"{PRODUCTS - 1}\n"
    # The staging table is gone; the run's record (its settings) and its summary stay
    # beside the table.
    tables = sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert sorted(tables.split()) == [
        "answers", "answers__spark_vllm_runs", "answers__spark_vllm_summaries", "products",
    ]  # fmt: skip
    left = json.loads(
        sql(f"SELECT summary FROM answers__spark_vllm_summaries WHERE run = '{first.run_id}'")
    )
    assert (left["rows"], left["failed"], left["status"]) == (PRODUCTS, 1, "succeeded")

    # Fix the bad row at the source; the rerun sends only it and upserts it in place.
    sql("UPDATE products SET name = 'product 7' WHERE product_id = 7")
    second = run_job(spark, spec)
    assert (second.skipped, second.rows, second.failed) == (PRODUCTS - 1, 1, 0)
    assert (second.output_ids, second.output_failed) == (PRODUCTS, 0)
    counts = sql("SELECT count(*), count(DISTINCT product_id) FROM answers")
    assert counts == f"{PRODUCTS}|{PRODUCTS}\n"
    seven = sql("SELECT name, error IS NULL, run FROM answers WHERE product_id = 7")
    assert seven == f"product 7|t|{second.run_id}\n"


def test_query_in_append_and_overwrite_out(spark, vllm_server, postgres, products, db_env):
    source = {"query": "SELECT product_id, name FROM products WHERE product_id <= 5"}
    target = {"table": "log", "write_mode": "append"}
    append = jdbc_spec(postgres.url, vllm_server, db_env, source, target)
    sql = postgres.psql
    run_job(spark, append)
    again = run_job(spark, append)  # every id succeeded: nothing is sent or appended
    assert (again.skipped, again.rows) == (5, 0)
    assert sql("SELECT count(*) FROM log") == "5\n"

    overwrite = append.model_copy(deep=True)
    assert overwrite.output.jdbc is not None
    overwrite.output.jdbc.write_mode = "overwrite"
    replaced = run_job(spark, overwrite)  # replaces the table's rows: nothing skipped
    assert (replaced.skipped, replaced.rows) == (0, 5)
    runs = sql("SELECT count(*), count(DISTINCT run), max(run) FROM log")
    assert runs == f"5|1|{replaced.run_id}\n"


def test_credentials_come_from_the_environment(spark, vllm_server, postgres, products, monkeypatch):
    creds = {"user_env": "SHOP_DB_USER", "password_env": "SHOP_DB_PASSWORD"}
    monkeypatch.setenv("SHOP_DB_USER", USER)
    monkeypatch.delenv("SHOP_DB_PASSWORD", raising=False)
    spec = jdbc_spec(postgres.url, vllm_server, creds, {"table": "products"}, {"table": "x"})
    with pytest.raises(SpecError, match="input.jdbc.password_env names 'SHOP_DB_PASSWORD'"):
        run_job(spark, spec)
    monkeypatch.setenv("SHOP_DB_PASSWORD", "wrong")
    with pytest.raises(
        JdbcError,
        match="input.jdbc: cannot connect to jdbc:postgresql://.*"
        "password authentication failed for user",
    ):
        run_job(spark, spec)


def test_rows_staged_by_a_driver_that_died_are_kept(spark, vllm_server, postgres, products, db_env):
    source = {"query": "SELECT product_id, name FROM products WHERE product_id BETWEEN 11 AND 20"}
    spec = jdbc_spec(postgres.url, vllm_server, db_env, source, {"table": "crashed"})
    # What a driver that died after some tasks committed leaves: its record and a
    # staging table.
    died = plan(spark, spec)
    assert died.progress is not None
    died.progress.close()  # this plan is never executed, which would close it
    jdbc.write_record(spark, spec.output.jdbc, died.record)
    staging = jdbc.write_staging(died.result.limit(4), spec.output.jdbc, died.run_id)
    assert postgres.psql(f"SELECT count(*) FROM {staging}") == "4\n"

    summary = run_job(spark, spec)  # moves the 4 staged answers first, asks for the other 6
    assert (summary.skipped, summary.rows, summary.failed) == (4, 6, 0)
    counts = postgres.psql(
        "SELECT count(*), count(DISTINCT product_id), count(DISTINCT run) FROM crashed"
    )
    assert counts == "10|10|2\n"
    left = postgres.psql("SELECT tablename FROM pg_tables WHERE tablename LIKE 'crashed%'")
    assert sorted(left.split()) == [
        "crashed", "crashed__spark_vllm_runs", "crashed__spark_vllm_summaries",
    ]  # fmt: skip


def test_a_table_written_with_other_settings_is_not_resumed_into(
    spark, vllm_server, postgres, products, db_env
):
    source = {"query": "SELECT product_id, name FROM products WHERE product_id BETWEEN 21 AND 25"}
    spec = jdbc_spec(postgres.url, vllm_server, db_env, source, {"table": "changed"})
    assert run_job(spark, spec).succeeded == 5
    other = spec.model_copy(deep=True)
    assert other.prompt is not None
    other.prompt.template = "Name {{ name }}."
    with pytest.raises(SpecError) as info:
        run_job(spark, other)
    message = str(info.value)
    assert "output.jdbc.table 'changed' holds 5 answer(s)" in message
    assert 'prompt.template: "Describe {{ name }}." → "Name {{ name }}."' in message
    assert "output.jdbc.write_mode: overwrite, or another output.jdbc.table" in message
    assert postgres.psql("SELECT count(DISTINCT run) FROM changed") == "1\n"

    other.output.on_change = "resume"
    adopted = run_job(spark, other)
    assert (adopted.skipped, adopted.rows) == (5, 0)
    other.output.on_change = "refuse"  # adopted once, they count from now on
    assert run_job(spark, other).skipped == 5
