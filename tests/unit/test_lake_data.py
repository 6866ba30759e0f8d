"""Data as lakes hold it, the pure parts (issue 33): columns whose names Spark or jinja2
cannot spell, maps and structs read by key and field, Excel's CSV header, and column
names that differ only in case, found by `validate` without Spark."""

import pyarrow as pa
import pytest

from spark_vllm.errors import PromptError
from spark_vllm.request.prompt import render, template_variables
from tests.unit.test_validate import job, validate

pytestmark = pytest.mark.unit


def test_a_template_reads_a_column_of_any_name_from_row_by_its_quoted_name():
    source = "{{ row['customer name'] }} ({{ row[\"ticket.id\"] }}): {{ question }}"
    assert template_variables(source) == {"customer name", "ticket.id", "question"}
    row = {"customer name": "Ann", "ticket.id": "T-7", "question": "Why?"}
    assert render(source, row) == "Ann (T-7): Why?"
    assert render("{{ row['row'] }}", {"row": "a column named row"}) == "a column named row"


@pytest.mark.parametrize(
    "source", ["{{ row }}", "{{ row[name] }}", "{% for k in row %}{% endfor %}"]
)
def test_row_read_other_than_by_a_quoted_name_is_refused(source):
    with pytest.raises(PromptError, match=r"read one as row\['customer name'\]"):
        template_variables(source)


def test_a_map_column_is_a_dict_and_a_struct_a_dict_to_the_template():
    """As the tasks read a batch (to_pylist with maps as dicts): a map read by key, a
    struct by field, an array of structs by index and field."""
    batch = pa.RecordBatch.from_pylist(
        [{"attrs": [("color", "red")], "meta": {"title": "T", "tags": [{"k": "a"}]}}],
        schema=pa.schema(
            [
                ("attrs", pa.map_(pa.string(), pa.string())),
                (
                    "meta",
                    pa.struct(
                        [
                            ("title", pa.string()),
                            ("tags", pa.list_(pa.struct([("k", pa.string())]))),
                        ]
                    ),
                ),
            ]
        ),
    )
    row = batch.to_pylist(maps_as_pydicts="lossy")[0]
    source = "{{ attrs['color'] }} {{ attrs.color }} {{ meta.title }} {{ meta.tags[0].k }}"
    assert render(source, row) == "red red T a"


def test_an_excel_csv_header_has_no_byte_order_mark(tmp_path, capsys):
    data = tmp_path / "excel.csv"
    data.write_bytes(b'\xef\xbb\xbfid,question\r\n1,"Why?"\r\n')
    code, text = validate(job(tmp_path, "csv", data, id_column="id"), capsys)
    assert code == 0, text


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("in.jsonl", '{"id": "1", "Id": "x", "question": "q"}\n'),
        ("in.csv", "id,Id,question\n1,x,q\n"),
    ],
)
def test_validate_refuses_columns_whose_names_differ_only_in_case(tmp_path, capsys, name, content):
    data = tmp_path / name
    data.write_text(content)
    code, text = validate(job(tmp_path, name.split(".")[1], data, id_column="id"), capsys)
    assert code == 2
    assert "has columns whose names differ only in case: 'id' and 'Id'" in text


def test_database_types_spark_would_change_are_read_as_text():
    from spark_vllm.storage.jdbc import text_columns

    columns = [
        ("big", "numeric", 0),  # unconstrained: PostgreSQL's driver says precision 0
        ("huge", "numeric", 131089),  # or its largest
        ("wide", "numeric", 40),
        ("small", "numeric", 10),
        ("at", "timestamptz", 35),
        ("naive", "timestamp", 29),
        ("price", "money", 0),
        ("span", "interval", 0),
        ("doc", "jsonb", 0),
        ("nums", "_numeric", 0),
        ("tags", "_text", 0),
    ]
    assert text_columns(columns) == {
        "big": "string",
        "huge": "string",
        "wide": "string",
        "at": "string",
        "price": "string",
        "span": "string",
        "nums": "array<string>",
    }


def test_validate_refuses_a_csv_header_naming_a_column_twice(tmp_path, capsys):
    data = tmp_path / "in.csv"
    data.write_text("id,question,question\n1,q,r\n")
    code, text = validate(job(tmp_path, "csv", data, id_column="id"), capsys)
    assert code == 2
    assert "names a column more than once: 'question'" in text


def test_validate_refuses_parquet_files_that_give_a_column_types_that_do_not_merge(
    tmp_path, capsys
):
    import pyarrow.parquet as pq

    folder = tmp_path / "days"
    folder.mkdir()
    pq.write_table(
        pa.table({"id": ["a"], "question": pa.array([1], pa.int32())}), folder / "day1.parquet"
    )
    pq.write_table(pa.table({"id": ["b"], "question": ["x"]}), folder / "day2.parquet")
    code, text = validate(job(tmp_path, "parquet", folder, id_column="id"), capsys)
    assert code == 2
    assert "column 'question': int in day1.parquet; string in day2.parquet" in text
