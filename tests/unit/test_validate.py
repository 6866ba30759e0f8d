"""`spark-vllm validate`: the spec, then the columns it reads, read without Spark."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from spark_vllm.cli import main
from spark_vllm.spec import spec_from_dict
from spark_vllm.storage.inputs import SAMPLE_LINES, columns_without_spark

pytestmark = pytest.mark.unit


def job(tmp_path, fmt, path, template="{{ question }}", **extra):
    doc = {
        "input": {"format": fmt, "path": str(path), **extra},
        "output": {"path": str(tmp_path / "out")},
        "endpoint": {"model": "m"},
        "prompt": {"template": template},
    }
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(doc))
    return spec_path


def validate(spec_path, capsys, *args):
    code = main(["validate", str(spec_path), *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_template_naming_a_column_the_jsonl_input_lacks_is_refused(tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    data.write_text('{"question": "Why?", "topic": "x"}\n')
    code, text = validate(job(tmp_path, "jsonl", data, "{{ questoin }}"), capsys)
    assert code == 2
    assert "prompt: column(s) ['questoin'] not in the input" in text
    assert "every line of" in text
    code, text = validate(job(tmp_path, "jsonl", data), capsys)
    assert code == 0 and "the columns it reads are in the input" in text


def test_parquet_columns_come_from_the_footer_and_partition_folders(tmp_path, capsys):
    folder = tmp_path / "data" / "day=1"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"question": ["Why?"]}), folder / "part-0.parquet")
    spec = spec_from_dict(
        yaml.safe_load(
            job(tmp_path, "parquet", tmp_path / "data", "{{ question }} {{ day }}").read_text()
        )
    )
    found = columns_without_spark(spec)
    assert found.names == ["question", "day"]
    code, _ = validate(job(tmp_path, "parquet", tmp_path / "data", "{{ nope }}"), capsys)
    assert code == 2


def test_csv_columns_come_from_the_header(tmp_path, capsys):
    data = tmp_path / "in.csv"
    data.write_text('id;"question, long"\n1;"Why?"\n')
    path = job(tmp_path, "csv", data, "{{ question }}", options={"sep": ";"})
    code, text = validate(path, capsys)
    assert code == 2 and "expected one of ['id', 'question, long']" in text


def test_a_column_missing_from_the_first_lines_only_warns(tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    lines = [{"question": "q"}] * SAMPLE_LINES + [{"question": "q", "late": 1}]
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    code, text = validate(job(tmp_path, "jsonl", data, "{{ late }}"), capsys)
    assert code == 0
    assert "warning: prompt: column(s) ['late'] not in the input" in text
    assert f"only the first {SAMPLE_LINES} lines" in text


@pytest.mark.parametrize(
    ("fmt", "path", "said"),
    [
        ("parquet", "s3a://lake/questions/", "is not on this machine's file system"),
        ("jsonl", "/no/such/{a,b}.jsonl", "a glob with {a,b} alternatives"),
    ],
)
def test_what_could_not_be_checked_is_said(tmp_path, capsys, fmt, path, said):
    code, text = validate(job(tmp_path, fmt, path), capsys)
    assert code == 0
    assert "is a valid job spec" in text
    assert "the input's columns were not checked" in text and said in text
    assert "--spark" in text


def test_lines_that_are_not_json_objects_are_named_by_file_and_line(tmp_path, capsys):
    """A user's JSONL with one cut-off line: `validate` named the file valid, and `run`
    then refused it only as a null id; both now name the line."""
    data = tmp_path / "in.jsonl"
    data.write_text('{"question": "a"}\n{"question": "b", \n\n[1, 2]\n{"question": "c"}\n')
    code, text = validate(job(tmp_path, "jsonl", data), capsys)
    assert code == 2
    assert "in.jsonl:2: not JSON (Expecting property name enclosed in double quotes" in text
    assert "in.jsonl:4: not a JSON object but list: '[1, 2]'" in text
    assert "in.jsonl:3" not in text  # a blank line is no row, as for Spark


def test_a_batch_file_is_checked_line_by_line_as_run_checks_it(tmp_path, capsys):
    data = tmp_path / "batch.jsonl"
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {}}
    data.write_text(
        "\ufeff" + json.dumps(line) + "\n"
        + json.dumps({**line, "custom-id": "r2"}) + "\n"
        + "not json\n"
        + json.dumps(line) + "\n"
    )  # fmt: skip
    doc = yaml.safe_load(job(tmp_path, "openai-batch", data).read_text())
    doc.pop("prompt")
    (tmp_path / "batch.yaml").write_text(yaml.safe_dump(doc))
    code, text = validate(tmp_path / "batch.yaml", capsys)
    assert code == 2
    assert "batch.jsonl:1:" not in text  # a byte-order mark is fine
    assert "batch.jsonl:2: unknown key 'custom-id'" in text
    assert "batch.jsonl:3: not JSON" in text
    assert "batch.jsonl:4: custom_id 'r1' is also on batch.jsonl:1" in text


@pytest.mark.parametrize(
    "path",
    ["{tmp}/no-such.jsonl", "file://{tmp}/no-such.jsonl", "{tmp}/data/*.jsonl", "{tmp}/no/*"],
)
def test_a_local_input_path_with_nothing_at_it_is_refused_as_run_refuses_it(tmp_path, capsys, path):
    (tmp_path / "data").mkdir()
    path = path.format(tmp=tmp_path)
    code, text = validate(job(tmp_path, "jsonl", path), capsys)
    assert code == 2
    assert f"spark-vllm: input.path {path!r} does not exist" in text
    assert "valid job spec" not in text


def test_a_batch_file_path_with_nothing_at_it_is_refused(tmp_path, capsys):
    spec_path = tmp_path / "job.yaml"
    doc = {
        "input": {"format": "openai-batch", "path": str(tmp_path / "none.jsonl")},
        "output": {"path": str(tmp_path / "out")},
        "endpoint": {"model": "m"},
    }
    spec_path.write_text(yaml.safe_dump(doc))
    code, text = validate(spec_path, capsys)
    assert code == 2
    assert f"input.path {str(tmp_path / 'none.jsonl')!r} does not exist" in text


def test_a_glob_is_expanded_and_its_files_columns_read(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "b.jsonl").write_text(json.dumps({"question": "q", "other": 1}) + "\n")
    code, text = validate(job(tmp_path, "jsonl", data / "*.jsonl"), capsys)
    assert code == 0 and "the columns it reads are in the input" in text
    code, text = validate(job(tmp_path, "jsonl", data / "*", "{{ nope }}"), capsys)
    assert code == 2 and "nope" in text


def test_input_elsewhere_says_a_missing_local_path_and_passes(tmp_path, capsys):
    """The chart's helm test pod has the spec, not the driver's input volumes."""
    path = "/data/input/questions.jsonl"
    code, text = validate(job(tmp_path, "jsonl", path), capsys, "--input-elsewhere")
    assert code == 0 and "is a valid job spec" in text
    assert f"not checked: input.path {path!r} does not exist here" in text


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_duplicate_and_null_ids_of_a_local_input_are_refused_as_run_refuses_them(
    tmp_path, capsys, fmt
):
    """`validate` said the spec was valid; `run` refused the same ids 13 s later."""
    rows = [
        {"id": "a", "question": "Why?"},
        {"id": "b", "question": "How?"},
        {"id": "a", "question": "When?"},
        {"id": None, "question": "Who?"},
    ]
    data = tmp_path / f"in.{fmt}"
    if fmt == "jsonl":
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        data.write_text(
            "id,question\n" + "".join(f"{r['id'] or ''},{r['question']}\n" for r in rows)
        )
    else:
        pq.write_table(pa.Table.from_pylist(rows), data)
    code, text = validate(job(tmp_path, fmt, data, id_column="id"), capsys)
    assert code == 2, text
    assert (
        "spark-vllm: input.id_column: column 'id' must hold a unique, non-null id per row; "
        "found id 'a' on 2 rows; no id (null) on 1 row." in text
    )
    assert f"(read from every row of {data})" in text
    unique = [r for r in rows if r["question"] in ("Why?", "How?")]
    if fmt == "jsonl":
        data.write_text("".join(json.dumps(r) + "\n" for r in unique))
        code, text = validate(job(tmp_path, fmt, data, id_column="id"), capsys)
        assert code == 0 and "valid job spec" in text


def test_a_file_that_is_not_parquet_given_as_parquet_is_named_not_a_traceback(tmp_path, capsys):
    data = tmp_path / "in.csv"
    data.write_text("id,question\n1,Why?\n")
    code, text = validate(job(tmp_path, "parquet", data), capsys)
    assert code == 2, text
    assert f"input.format is parquet, but {data} is not a parquet file" in text
    assert "Traceback" not in text


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_0_byte_input_file_is_an_empty_job_not_a_missing_column(tmp_path, capsys, fmt):
    """The manual: a 0-byte file is a job of no rows (run exits 0); validate agrees."""
    data = tmp_path / f"empty.{fmt}"
    data.write_bytes(b"")
    code, text = validate(job(tmp_path, fmt, data), capsys)
    assert code == 0, text
    assert "holds only 0-byte files (an empty input)" in text


def test_a_0_byte_parquet_file_is_no_parquet_file(tmp_path, capsys):
    data = tmp_path / "empty.parquet"
    data.write_bytes(b"")
    code, text = validate(job(tmp_path, "parquet", data), capsys)
    assert code == 2, text
    assert "is not a parquet file" in text


def test_a_delta_input_folder_without_a_log_is_refused_as_run_refuses_it(tmp_path, capsys):
    folder = tmp_path / "questions"
    folder.mkdir()
    pq.write_table(pa.table({"question": ["Why?"]}), folder / "part-0.parquet")
    code, text = validate(job(tmp_path, "delta", folder), capsys)
    assert code == 2, text
    assert f"input.path {str(folder)!r} is not a Delta table (no _delta_log folder in it)" in text
    (folder / "_delta_log").mkdir()
    code, text = validate(job(tmp_path, "delta", folder), capsys)
    assert code == 0, text
    assert "input.format delta is read from its log by Spark" in text


def refusal(tmp_path, capsys, lines, template="{{ question }}", **extra):
    """What `validate` says, exit 2, of a JSON Lines input holding `lines`."""
    data = tmp_path / "in.jsonl"
    data.write_text(lines)
    code, text = validate(job(tmp_path, "jsonl", data, template, **extra), capsys)
    assert code == 2, text
    return text


def test_an_id_column_named_run_is_refused_before_the_input_is_read(tmp_path, capsys):
    text = refusal(tmp_path, capsys, '{"run": "r1", "question": "Why?"}\n', id_column="run")
    assert (
        "input.id_column: got 'run'; 'run' would clash with the result column(s) the job "
        "writes itself (names match regardless of case; `run` is the run's id); rename the "
        "input column or unset input.id_column to derive ids"
    ) in text


def test_a_column_with_a_space_written_bare_in_a_template_is_shown_as_row_quoted(tmp_path, capsys):
    text = refusal(tmp_path, capsys, '{"customer name": "Bob"}\n', "Hi {{ customer name }}")
    assert (
        "spark-vllm: invalid job spec:\n  prompt.template does not parse: line 1: expected "
        "token 'end of print statement', got 'name'; a column name with a space is read as "
        "{{ row['customer name'] }}, not {{ customer name }}\n"
    ) in text


def test_ids_1_and_quoted_1_of_a_jsonl_input_are_one_id_as_spark_reads_them(tmp_path, capsys):
    """Spark reads a JSON column of numbers and text as text: `1` and `"1"` are both '1'."""
    lines = '{"id": 1, "question": "Why?"}\n{"id": "1", "question": "How?"}\n'
    assert (
        refusal(tmp_path, capsys, lines, id_column="id")
        == "spark-vllm: input.id_column: column 'id' must hold a unique, non-null id per row; "
        "found id '1' on 2 rows. Fix the input, or unset input.id_column to derive ids"
        f" (read from every row of {tmp_path / 'in.jsonl'})\n"
    )
    data = tmp_path / "in.jsonl"
    data.write_text('{"id": 1, "question": "Why?"}\n{"id": "1.0", "question": "How?"}\n')
    code, text = validate(job(tmp_path, "jsonl", data, id_column="id"), capsys)
    assert code == 0, text


@pytest.mark.parametrize(
    ("extra", "structured", "clash", "columns"),
    [
        (
            {},
            {"json_schema": {"type": "object", "properties": {"ID": {"type": "string"}}}},
            "'ID'",
            "'id'",
        ),
        (
            {"id_column": "question"},
            {"json_schema": {"type": "object", "properties": {
                "Response": {"type": "string"}, "run": {"type": "integer"}}}},
            "'Response', 'run'",
            "'question'",
        ),
    ],
)  # fmt: skip
def test_answer_fields_clashing_with_the_outputs_own_columns_are_refused_as_run_refuses_them(
    tmp_path, capsys, extra, structured, clash, columns
):
    """The id (derived or the input's), the kind's own columns and the run's id, in any
    case: `validate` passed them (and `run` let a field named response through)."""
    data = tmp_path / "in.jsonl"
    data.write_text('{"question": "Why?"}\n')
    path = job(tmp_path, "jsonl", data, **extra)
    doc = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**doc, "structured_output": structured}))
    code, text = validate(path, capsys)
    assert code == 2, text
    assert text == (
        f"spark-vllm: structured_output: field(s) {clash} would clash with the output's own "
        f"columns {columns}, 'response', 'finish_reason', 'prompt_tokens', 'completion_tokens', "
        "'latency_ms', 'attempts', 'error', 'run' (names match regardless of case); rename "
        "them\n"
    )


def test_a_ddl_answer_is_left_to_run_and_validate_passes_it_without_spark(tmp_path, capsys):
    """A `ddl` needs Spark's parser (a JVM): validate does not start one for it."""
    data = tmp_path / "in.jsonl"
    data.write_text('{"question": "Why?"}\n')
    path = job(tmp_path, "jsonl", data)
    doc = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**doc, "structured_output": {"ddl": "label STRING"}}))
    code, text = validate(path, capsys)
    assert code == 0, text
