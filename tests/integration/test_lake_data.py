"""Data as lakes hold it (issue 33), through the real job, Spark and vLLM: partition
folders, a column whose type changed between files, column names that differ only in
case or hold dots and spaces, maps and structs, Excel's CSV, PostgreSQL's types. Each
value reaches the prompt (seen at a proxy in front of vLLM) and the output as the
source holds it, or the job is refused before any request, naming the column."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_vllm import SpecError, run_job, spec_from_dict
from tests.conftest import SERVED_NAME
from tests.integration.faultproxy import FaultProxy
from tests.integration.jobs import read_rows, run_cli, spec_doc

pytestmark = pytest.mark.integration


def prompts(proxy: FaultProxy) -> list[str]:
    """The user message of every chat request the job sent."""
    return sorted(json.loads(b)["messages"][-1]["content"] for b in proxy.bodies)


def lake_doc(tmp_path: Path, base_url: str, source: dict, template: str, keep: list[str]) -> dict:
    return spec_doc(
        tmp_path, base_url, [], input=source, prompt={"template": template},
        output={"path": str(tmp_path / f"out-{source['format']}"), "keep_columns": keep},
        sampling={"max_tokens": 2},
    )  # fmt: skip


def test_partitioned_parquet_with_maps_structs_and_bi_names_reaches_the_prompt_as_held(
    spark, vllm_server, tmp_path
):
    nested = pa.schema(
        [
            ("ticket.id", pa.string()),
            ("customer name", pa.string()),
            ("attrs", pa.map_(pa.string(), pa.string())),
            ("meta", pa.struct([("title", pa.string()),
                                ("tags", pa.list_(pa.struct([("k", pa.string())])))])),
        ]
    )  # fmt: skip
    for store, dt, ticket, name, color in (
        ("0042", "2024-01-01", "T-1", "Ann Lee", "red"),
        ("__HIVE_DEFAULT_PARTITION__", "2024-01-02", "T-2", "Bo", "blue"),
    ):
        folder = tmp_path / "lake" / f"store={store}" / f"dt={dt}"
        folder.mkdir(parents=True)
        row = {"ticket.id": ticket, "customer name": name, "attrs": [("color", color)],
               "meta": {"title": f"{ticket} title", "tags": [{"k": "vip"}]}}  # fmt: skip
        pq.write_table(pa.Table.from_pylist([row], schema=nested), folder / "part.parquet")
    template = (
        "Store {{ store if store is not none else 'unknown' }} on {{ dt }}: "
        "{{ row['customer name'] }} wants {{ attrs['color'] }} ({{ meta.title }}, "
        "{{ meta.tags[0].k }})"
    )
    source = {"format": "parquet", "path": str(tmp_path / "lake"), "id_column": "ticket.id"}
    keep = ["store", "dt", "customer name", "attrs", "meta"]
    with FaultProxy(vllm_server) as proxy:
        doc = lake_doc(tmp_path, proxy.base_url, source, template, keep)
        summary = run_job(spark, spec_from_dict(doc))
    assert (summary.rows, summary.failed) == (2, 0)
    assert prompts(proxy) == [
        "Store 0042 on 2024-01-01: Ann Lee wants red (T-1 title, vip)",
        "Store unknown on 2024-01-02: Bo wants blue (T-2 title, vip)",
    ]
    out = {r["ticket.id"]: r for r in read_rows(tmp_path / "out-parquet")}
    assert out["T-1"]["store"] == "0042" and out["T-2"]["store"] is None
    assert out["T-1"]["dt"] == "2024-01-01"
    assert out["T-1"]["customer name"] == "Ann Lee"
    assert out["T-1"]["attrs"] == [("color", "red")]
    assert out["T-1"]["meta"] == {"title": "T-1 title", "tags": [{"k": "vip"}]}


def test_excel_csv_and_jsonl_with_byte_order_marks_and_crlf_in_partition_folders(
    spark, vllm_server, tmp_path
):
    """Excel's "CSV UTF-8": a byte-order mark before the header, CRLF line ends, a quoted
    field with a CRLF inside; and JSON Lines written the same way; in store=0042
    folders."""
    csv_folder = tmp_path / "csv" / "store=0042"
    csv_folder.mkdir(parents=True)
    (csv_folder / "export.csv").write_bytes(
        b'\xef\xbb\xbfid,question\r\n007,"first line\r\nsecond line"\r\n2,plain\r\n'
    )
    jsonl_folder = tmp_path / "jsonl" / "store=0042"
    jsonl_folder.mkdir(parents=True)
    (jsonl_folder / "export.jsonl").write_bytes(
        b'\xef\xbb\xbf{"id": "007", "question": "json"}\r\n{"id": "2", "question": "too"}\r\n'
    )
    template = "{{ store }}|{{ id }}|{{ question }}"
    seen = {}
    for fmt in ("csv", "jsonl"):
        source = {"format": fmt, "path": str(tmp_path / fmt), "id_column": "id"}
        with FaultProxy(vllm_server) as proxy:
            doc = lake_doc(tmp_path, proxy.base_url, source, template, ["question", "store"])
            summary = run_job(spark, spec_from_dict(doc))
        assert (summary.rows, summary.failed) == (2, 0)
        seen[fmt] = prompts(proxy)
        out = {r["id"]: (r["question"], r["store"]) for r in read_rows(tmp_path / f"out-{fmt}")}
        assert "\r" not in repr(out) and set(out) == {"007", "2"}
        assert {store for _, store in out.values()} == {"0042"}
    assert seen["csv"] == ["0042|007|first line\nsecond line", "0042|2|plain"]
    assert seen["jsonl"] == ["0042|007|json", "0042|2|too"]


def test_a_column_whose_type_changed_between_files_is_refused_before_any_request(
    vllm_server, tmp_path
):
    folder = tmp_path / "days"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["a"], "n": pa.array([1], pa.int32())}), folder / "day1.parquet")
    pq.write_table(pa.table({"id": ["b"], "n": pa.array(["x"])}), folder / "day2.parquet")
    source = {"format": "parquet", "path": str(folder), "id_column": "id"}
    with FaultProxy(vllm_server) as proxy:
        done = run_cli(lake_doc(tmp_path, proxy.base_url, source, "{{ n }}", ["n"]), tmp_path)
        posts = proxy.posts
    assert done.returncode == 2, done.stderr
    assert posts == 0
    assert "column 'n': " in done.stderr
    assert "int in day1.parquet" in done.stderr and "string in day2.parquet" in done.stderr
    assert "Traceback" not in done.stderr and "Py4JJavaError" not in done.stderr


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("twins.jsonl", "names differ only in case: 'Id' and 'id'"),
        ("twins.csv", "names differ only in case: 'id' and 'Id'"),
        ("twins.parquet", "names differ only in case: 'id' and 'Id'"),
        ("twice.csv", "names a column more than once: 'question'"),
    ],
)
def test_columns_a_job_cannot_tell_apart_are_refused_naming_them(spark, tmp_path, name, said):
    data = tmp_path / name
    if name == "twins.jsonl":
        data.write_text('{"id": "1", "Id": "x", "question": "q"}\n')
    elif name == "twins.csv":
        data.write_text("id,Id,question\n1,x,q\n")
    elif name == "twins.parquet":
        pq.write_table(pa.table({"id": ["1"], "Id": ["x"], "question": ["q"]}), data)
    else:
        data.write_text("id,question,question\n1,q,r\n")
    source = {"format": name.split(".")[1], "path": str(data), "id_column": "id"}
    doc = lake_doc(tmp_path, "http://127.0.0.1:9/v1", source, "{{ question }}", [])
    with pytest.raises(SpecError, match=said):
        run_job(spark, spec_from_dict(doc))


def test_postgresql_types_reach_the_prompt_as_the_database_holds_them(
    spark, vllm_server, postgres, monkeypatch, tmp_path
):
    from tests.integration.postgres import PASSWORD, USER

    postgres.psql(
        "CREATE TABLE lake_types (id text PRIMARY KEY, big numeric, wide numeric(40,2), "
        "small numeric(10,2), tags text[], doc jsonb, at timestamptz, u uuid, span interval, "
        "price money, nums numeric[]);"
        "INSERT INTO lake_types VALUES ('a', 123456789012345678901234567890123456789012.5, "
        "12345678901234567890123456789012345678.91, 12.50, ARRAY['x', 'y'], "
        "'{\"k\": [1, 2.50]}', '2024-01-01 12:00:00+05:30', "
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1 day 02:00:00', 1234.5, "
        "ARRAY[1.10, 123456789012345678901234567890123456789012]), "
        "('b', 0.333333333333333333333333, 1, 1, '{}', '[]', '2024-06-30 23:59:59.5+00', "
        "'00000000-0000-0000-0000-000000000000', '-3 months', 0, '{}')"
    )
    monkeypatch.setenv("LAKE_DB_USER", USER)
    monkeypatch.setenv("LAKE_DB_PASSWORD", PASSWORD)
    creds = {"user_env": "LAKE_DB_USER", "password_env": "LAKE_DB_PASSWORD"}
    template = " | ".join(
        ["{{ big }}", "{{ wide }}", "{{ small }}", "{{ tags | join(',') }}", "{{ doc }}",
         "{{ at }}", "{{ u }}", "{{ span }}", "{{ price }}", "{{ nums | join(',') }}"]
    )  # fmt: skip
    with FaultProxy(vllm_server) as proxy:
        doc = {
            "input": {"format": "jdbc", "id_column": "id",
                      "jdbc": {"url": postgres.url, "table": "lake_types", **creds}},
            "output": {"path": str(tmp_path / "out"), "keep_columns": ["big", "at"]},
            "endpoint": {"base_url": proxy.base_url, "model": SERVED_NAME},
            "prompt": {"template": template},
            "sampling": {"max_tokens": 2},
            "timeouts": {"ready_s": 30},
        }  # fmt: skip
        summary = run_job(spark, spec_from_dict(doc))
    assert (summary.rows, summary.failed) == (2, 0)
    # timestamptz as PostgreSQL writes it in the connection's time zone (the JVM's: UTC
    # here), with its offset; money in the database's locale (C: dollars).
    assert prompts(proxy) == [
        "0.333333333333333333333333 | 1.00 | 1.00 |  | [] | 2024-06-30 23:59:59.5+00 | "
        "00000000-0000-0000-0000-000000000000 | -3 mons | $0.00 | ",
        "123456789012345678901234567890123456789012.5 | "
        '12345678901234567890123456789012345678.91 | 12.50 | x,y | {"k": [1, 2.50]} | '
        "2024-01-01 06:30:00+00 | a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 | 1 day 02:00:00 | "
        "$1,234.50 | 1.10,123456789012345678901234567890123456789012",
    ]
    kept = {r["id"]: r["big"] for r in read_rows(tmp_path / "out")}
    assert kept == {"a": "123456789012345678901234567890123456789012.5",
                    "b": "0.333333333333333333333333"}  # fmt: skip
