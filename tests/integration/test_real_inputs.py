"""Inputs as people's files and conversations hold them (issue: real-world inputs), run
through the real job against the real vLLM: accepted with the right values, or refused
before any request with every problem named."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from spark_vllm import SpecError, run_job, spec_from_dict
from spark_vllm.storage import inputs
from tests.conftest import SERVED_NAME
from tests.integration.faultproxy import FaultProxy, Faults
from tests.integration.jobs import (
    batch_line,
    batch_output,
    batch_spec,
    read_rows,
    run_cli,
    spec_doc,
    write_batch,
)

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
HELLO = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello world!"},
]


def chat_line(custom_id, **body):
    return batch_line(custom_id, CHAT, {"messages": HELLO, "max_tokens": 4, **body})


# 1. OpenAI batch files: the format's contract, checked before any request.


def test_a_batch_file_that_breaks_the_format_is_refused_naming_every_line(vllm_server, tmp_path):
    lines = [
        json.dumps(chat_line("a")),
        json.dumps({k: v for k, v in chat_line("x").items() if k != "custom_id"}),
        json.dumps(chat_line("")),
        json.dumps(chat_line("a")),
        "",  # a blank line: counted, not a problem
        json.dumps({**chat_line("b"), "body": "not an object"}),
        json.dumps(chat_line("c")),
        json.dumps(chat_line("c")),
        json.dumps(chat_line("c")),
    ]
    (tmp_path / "batch.jsonl").write_text("\n".join(lines) + "\n")
    with FaultProxy(vllm_server) as proxy:
        doc = {
            "input": {"format": "openai-batch", "path": str(tmp_path / "batch.jsonl")},
            "output": {"path": str(tmp_path / "out")},
            "endpoint": {"base_url": proxy.base_url, "model": SERVED_NAME},
        }
        done = run_cli(doc, tmp_path)
        posts = proxy.posts
    assert done.returncode == 2, done.stderr
    assert posts == 0
    assert not (tmp_path / "out").exists()
    message = done.stderr
    assert "is not a valid OpenAI batch file (5 problems)" in message
    for said in (
        "batch.jsonl:2: custom_id is missing",
        "batch.jsonl:3: custom_id is empty",
        "batch.jsonl:6: body must be a JSON object, got a string",
        "custom_id 'c' is on 3 lines: batch.jsonl:7, batch.jsonl:8, batch.jsonl:9",
        "custom_id 'a' is on 2 lines: batch.jsonl:1, batch.jsonl:4",
    ):
        assert said in message, message


def test_the_same_rules_hold_on_a_rerun_and_a_byte_order_mark_is_no_problem(
    spark, vllm_server, tmp_path
):
    spec = batch_spec(tmp_path, vllm_server, SERVED_NAME, [chat_line("a"), chat_line("b")])
    path = Path(spec.input.path)
    path.write_text("\ufeff" + path.read_text(), encoding="utf-8")
    assert run_job(spark, spec).succeeded == 2
    with path.open("a") as fh:
        fh.write(json.dumps(chat_line("b")) + "\n")
    with pytest.raises(
        SpecError, match=r"custom_id 'b' is on 2 lines: batch.jsonl:2, batch.jsonl:3"
    ):
        run_job(spark, spec)


# 7. vLLM's own run-batch test inputs, for the tiny model: every output line must pass
# vLLM's BatchRequestOutput model, as vLLM's tests assert of its own output.


def test_vllms_run_batch_inputs_give_lines_that_its_output_model_accepts(
    spark, vllm_server, tmp_path
):
    from vllm.entrypoints.launchers.run_batch import BatchRequestOutput

    weather = {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}},
                "required": ["location"],
            },
        },
    }
    lines = [
        chat_line("request-1"),
        chat_line("request-2", messages=[{**HELLO[0], "content": "You are unhelpful."}, HELLO[1]]),
        chat_line("request-3", model="NonExistModel"),  # the sidecar's model answers
        batch_line("request-4", "/bad_url", {"messages": HELLO}),
        chat_line("request-5", stream="True"),
        chat_line("request-6", tools=[weather], tool_choice="auto"),
        batch_line("request-7", "/v1/embeddings", {"input": "Hello world!"}),
    ]
    spec = batch_spec(tmp_path, vllm_server, SERVED_NAME, lines)
    summary = run_job(spark, spec)
    assert summary.rows == 7
    out = {}
    for part in sorted((tmp_path / "out").glob("run=*/part-*")):
        for text in part.read_text().splitlines():
            BatchRequestOutput.model_validate_json(text)  # raises if vLLM's model refuses
            out[json.loads(text)["custom_id"]] = json.loads(text)
    assert sorted(out) == [f"request-{i}" for i in range(1, 8)]
    for ok in ("request-1", "request-2", "request-3"):
        assert out[ok]["error"] is None and out[ok]["response"]["status_code"] == 200
    for bad, words in (("request-4", "url: expected one of"), ("request-5", "cannot stream")):
        assert out[bad]["response"] is None
        assert out[bad]["error"]["code"] == "invalid_request"
        assert words in out[bad]["error"]["message"]
    # The tiny model has no tool parser: vLLM refuses the line with a 400.
    refused = out["request-6"]
    assert refused["response"]["status_code"] == 400 and refused["response"]["body"] is None
    assert refused["error"]["code"] == "http_400" and refused["error"]["message"]
    assert out["request-7"]["response"]["status_code"] == 404


def test_vllms_invalid_run_batch_input_is_refused_and_its_empty_file_is_no_rows(
    spark, vllm_server, tmp_path
):
    first = {
        "invalid_field": "request-1",
        **{k: v for k, v in chat_line("").items() if k != "custom_id"},
    }
    spec = batch_spec(tmp_path, vllm_server, SERVED_NAME, [first, chat_line("request-2")])
    with pytest.raises(SpecError) as info:
        run_job(spark, spec)
    assert "batch.jsonl:1: unknown key 'invalid_field'" in str(info.value)
    assert "custom_id is missing" in str(info.value)

    write_batch(Path(spec.input.path), [])
    summary = run_job(spark, spec)
    assert (summary.rows, summary.note) == (0, "the input is empty")
    assert batch_output(tmp_path / "out") == []


# 2. Conversations: every message shape the chat-completions API takes, sent as it is.


def test_conversations_of_every_shape_are_sent_as_they_are(spark, vllm_server, tmp_path):
    call = {"id": "c1", "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
    question = "Name a colour."
    rows = [
        {"id": "text", "messages": [{"role": "user", "content": question}]},
        {"id": "parts", "messages": [{"role": "user", "content": [{"type": "text", "text": question}]}]},  # noqa: E501
        {"id": "plain", "messages": question},
        {"id": "bracket", "messages": "[1] " + question},
        {
            "id": "tools",
            "messages": [
                {"role": "developer", "content": "Use the tools."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
        },
    ]  # fmt: skip
    doc = spec_doc(tmp_path, vllm_server, rows, prompt={"column": "messages"},
                   output={"keep_columns": []})  # fmt: skip
    summary = run_job(spark, spec_from_dict(doc))
    out = {r["id"]: r for r in read_rows(tmp_path / "out")}
    assert summary.failed == 0, {k: r["error"] for k, r in out.items()}
    # A list of parts is the same conversation as its text: the same prompt, token for
    # token (not the list's JSON text), and so is the plain string.
    assert out["parts"]["prompt_tokens"] == out["text"]["prompt_tokens"]
    assert out["plain"]["prompt_tokens"] == out["text"]["prompt_tokens"]
    assert out["bracket"]["prompt_tokens"] > out["text"]["prompt_tokens"]


# 3. Reading inputs: the user's file, not Spark's defaults.


def test_csv_is_read_as_rfc_4180_writes_it(spark, vllm_server, tmp_path):
    data = tmp_path / "in.csv"
    data.write_text(
        'id,question\r\n'
        '007,"He said ""hi""\nthen left"\r\n'
        '2,"a, b"\r\n'
        '3,plain\r\n'
    )  # fmt: skip
    doc = spec_doc(tmp_path, vllm_server, [], input={"format": "csv", "path": str(data)},
                   output={"keep_columns": ["question"]})  # fmt: skip
    summary = run_job(spark, spec_from_dict(doc))
    assert (summary.rows, summary.failed) == (3, 0)
    out = {r["id"]: r["question"] for r in read_rows(tmp_path / "out")}
    assert out == {"007": 'He said "hi"\nthen left', "2": "a, b", "3": "plain"}


@pytest.mark.parametrize(
    "kind", ["empty-jsonl", "empty-parquet-folder", "header-only-csv", "empty-table"]
)
def test_an_empty_input_is_a_job_of_no_rows(spark, tmp_path, kind):
    if kind == "empty-jsonl":
        (tmp_path / "in.jsonl").write_bytes(b"")
        source = {"format": "jsonl", "path": str(tmp_path / "in.jsonl")}
    elif kind == "empty-parquet-folder":
        (tmp_path / "folder").mkdir()
        source = {"format": "parquet", "path": str(tmp_path / "folder")}
    elif kind == "header-only-csv":
        (tmp_path / "in.csv").write_text("id,question\n")
        source = {"format": "csv", "path": str(tmp_path / "in.csv")}
    else:
        name = f"empty_{uuid.uuid4().hex}"
        spark.createDataFrame([], "id string, question string").write.saveAsTable(
            name, path=str(tmp_path / "table")
        )
        source = {"format": "table", "table": name, "path": None}
    # No server at all: nothing is sent, so nothing waits for one.
    doc = spec_doc(tmp_path, "http://127.0.0.1:9/v1", [], input=source,
                   output={"keep_columns": []}, timeouts={"ready_s": 600})  # fmt: skip
    summary = run_job(spark, spec_from_dict(doc))
    assert (summary.rows, summary.note) == (0, "the input is empty")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("run=*"))


def test_an_input_path_that_is_not_there_is_named(spark, tmp_path):
    doc = spec_doc(tmp_path, "http://127.0.0.1:9/v1", [],
                   input={"format": "parquet", "path": str(tmp_path / "nope")})  # fmt: skip
    with pytest.raises(SpecError, match=r"input.path '.*nope' does not exist"):
        run_job(spark, spec_from_dict(doc))
    # A glob that matches nothing too; and the command says so without a Java stack
    # trace first (Spark's reader logged 90 lines of FileNotFoundException before).
    doc["input"] = {"format": "jsonl", "path": str(tmp_path / "nope" / "*.jsonl")}
    done = run_cli(doc, tmp_path)
    assert done.returncode == 2
    assert "does not exist" in done.stderr
    assert "FileNotFoundException" not in done.stderr and "\tat " not in done.stderr


def test_jsonl_lines_that_are_not_json_objects_are_refused_by_file_and_line(spark, tmp_path):
    """A user's JSONL with a cut-off line was refused only as `found None` ids: Spark
    keeps such a line as a corrupt record, a row of nulls. Now the lines are named as
    Spark's own parser finds them, and DROPMALFORMED leaves them out on purpose."""
    good = [{"id": str(i), "question": f"q{i}"} for i in range(3)]
    lines = [json.dumps(good[0]), '{"id": "1", "question": ', "", json.dumps(good[1]),
             "[1, 2]", "{'id': '2', 'question': 'single quotes: Spark reads them'}"]  # fmt: skip
    data = tmp_path / "lines.jsonl"
    data.write_text("\n".join(lines) + "\n")
    doc = spec_doc(tmp_path, "http://127.0.0.1:9/v1", [], output={"keep_columns": []},
                   input={"format": "jsonl", "path": str(data)})  # fmt: skip
    with pytest.raises(SpecError) as refused:
        run_job(spark, spec_from_dict(doc))
    text = str(refused.value)
    assert "has 2 lines that Spark cannot read as a JSON object" in text
    assert 'lines.jsonl:2: \'{"id": "1", "question": \'' in text
    assert "lines.jsonl:5: '[1, 2]'" in text
    assert "lines.jsonl:6" not in text and "DROPMALFORMED" in text
    doc["input"]["options"] = {"mode": "DROPMALFORMED"}
    plan_only = inputs.read_input(spark, spec_from_dict(doc))
    assert plan_only is not None
    assert sorted(r["id"] for r in plan_only.collect()) == ["0", "1", "2"]


# 4. Request fields that change the answer's shape: logprobs are stored.


def test_logprobs_land_in_a_column_for_chat_and_completion(spark, vllm_server, tmp_path):
    rows = [{"id": str(i), "question": f"Count to {i}."} for i in range(4)]
    doc = spec_doc(tmp_path, vllm_server, rows, output={"keep_columns": []},
                   sampling={"max_tokens": 3, "ignore_eos": True, "logprobs": True,
                             "top_logprobs": 2})  # fmt: skip
    run_job(spark, spec_from_dict(doc))
    for row in read_rows(tmp_path / "out"):
        assert row["error"] is None
        assert len(row["logprobs"]) == 3
        for token in row["logprobs"]:
            assert isinstance(token["token"], str) and token["logprob"] <= 0
            assert len(token["top_logprobs"]) == 2
    doc = spec_doc(tmp_path, vllm_server, rows, task="completion",
                   prompt={"template": "{{ question }}"},
                   output={"path": str(tmp_path / "out2"), "keep_columns": []},
                   sampling={"max_tokens": 3, "ignore_eos": True, "logprobs": 1})  # fmt: skip
    run_job(spark, spec_from_dict(doc))
    for row in read_rows(tmp_path / "out2"):
        assert [len(t["top_logprobs"]) >= 1 for t in row["logprobs"]] == [True] * 3


# 5. A 200 answer that is not a success.


def test_an_answer_ended_unfinished_is_retried_then_an_error_row_that_a_rerun_retries(
    spark, vllm_server, tmp_path
):
    rows = [{"id": str(i), "question": f"Question {i}?"} for i in range(8)]
    doc = spec_doc(tmp_path, vllm_server, rows, output={"keep_columns": []})
    with FaultProxy(vllm_server, Faults(unfinished_first=5)) as proxy:
        doc["endpoint"]["base_url"] = proxy.base_url
        summary = run_job(spark, spec_from_dict(doc))
    assert proxy.unfinished == 5 and summary.failed == 0
    assert sum(r["attempts"] for r in read_rows(tmp_path / "out")) == 8 + 5

    doc["output"]["path"] = str(tmp_path / "aborted")
    doc["retries"] = {"attempts": 2, "backoff_initial_s": 0.1}
    with FaultProxy(vllm_server, Faults(unfinished_first=10**6)) as proxy:
        doc["endpoint"]["base_url"] = proxy.base_url
        summary = run_job(spark, spec_from_dict(doc))
    assert summary.failed == 8 and summary.succeeded == 0
    for row in read_rows(tmp_path / "aborted"):
        assert row["error"] == (
            "gave up after 2 attempts; last: the server ended the answer with finish_reason 'abort'"
        )
        assert row["response"] is None
    doc["endpoint"]["base_url"] = vllm_server
    again = run_job(spark, spec_from_dict(doc))
    assert (again.skipped, again.rows, again.failed) == (0, 8, 0)
