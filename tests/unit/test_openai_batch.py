"""The shape of an OpenAI batch file's lines, judged before any request."""

import json

import pyarrow as pa
import pytest

from spark_vllm import RowError
from spark_vllm.request.kinds import BatchLine, row_request
from spark_vllm.request.openai_batch import (
    ID_COLUMN,
    PROBLEM,
    check_line,
    output_line,
    parse_lines,
    request,
)
from spark_vllm.request.result import Result

pytestmark = pytest.mark.unit

GOOD = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {"a": 1}}


def line(**changes):
    value = {**GOOD, **changes}
    return json.dumps({k: v for k, v in value.items() if v is not ...})


def test_a_well_formed_line_gives_its_fields_and_the_body_as_json_text():
    fields, problem = check_line(line(body={"messages": [], "max_tokens": 4}))
    assert problem is None
    assert fields == {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": '{"messages": [], "max_tokens": 4}',
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (line(custom_id=...), "custom_id is missing"),
        (line(custom_id=None), "custom_id is missing"),
        (line(custom_id=""), "custom_id is empty"),
        (line(custom_id=7), "custom_id must be a string, got a number (7)"),
        (line(method=...), "method is missing"),
        (line(url=["/v1/chat/completions"]), "url must be a string, got an array"),
        (line(body=...), "body must be a JSON object, got null"),
        (line(body="{}"), "body must be a JSON object, got a string"),
        (line(body=[1]), "body must be a JSON object, got an array"),
        (line(invalid_field="x"), "unknown key 'invalid_field'"),
        ('["custom_id", "r1"]', "expected a JSON object, got an array"),
        ("not json at all", "not JSON (Expecting value at column 1)"),
        ('{"custom_id": "r1",', "not JSON"),
    ],
)
def test_a_line_of_the_wrong_shape_is_named_with_its_problem(text, problem):
    _, found = check_line(text)
    assert found is not None and problem in found


def test_every_problem_of_a_line_is_named_at_once():
    # vLLM's own run-batch test input: the first line's custom_id is misspelt.
    _, found = check_line(line(custom_id=..., invalid_field="request-1"))
    assert found == (
        "unknown key 'invalid_field' (a line has custom_id, method, url, body); "
        "custom_id is missing"
    )


@pytest.mark.parametrize(
    ("row", "cause"),
    [
        ({"method": "GET", "url": "/v1/completions", "body": "{}"}, "method: expected 'POST'"),
        ({"method": "POST", "url": "/bad_url", "body": "{}"}, "url: expected one of"),
        ({"method": "POST", "url": "/v1/responses", "body": "{}"}, "url: expected one of"),
        # vLLM's run-batch test sends the string "True".
        (
            {"method": "POST", "url": "/v1/chat/completions", "body": '{"stream": "True"}'},
            "cannot stream",
        ),
    ],
)
def test_a_request_the_sidecar_cannot_take_is_a_row_error(row, cause):
    with pytest.raises(RowError, match=cause):
        request(row)


def test_the_body_goes_to_its_url_under_the_server_root_with_the_model_left_to_the_job():
    url, body = request(
        {"method": "POST", "url": "/v1/rerank", "body": '{"model": "x", "query": "q"}'}
    )
    assert (url, body) == ("/v1/rerank", {"query": "q"})


def test_an_error_answer_keeps_its_status_with_a_null_body_and_the_message_in_error():
    result = Result(
        status=400,
        body='{"error": {"message": "tools need a parser", "code": 400}}',
        request_id="req-1",
        error="HTTP 400: tools need a parser",
        attempts=1,
    )
    out = json.loads(output_line("r1", result))
    assert out["response"] == {"status_code": 400, "request_id": "req-1", "body": None}
    assert out["error"] == {"code": "http_400", "message": "HTTP 400: tools need a parser"}


def test_a_200_answer_keeps_its_body_whole():
    result = Result(status=200, body='{"object": "chat.completion"}', request_id="r", attempts=1)
    out = json.loads(output_line("r1", result))
    assert out["response"]["body"] == {"object": "chat.completion"}
    assert out["error"] is None


# A lone UTF-16 surrogate escaped in the JSON text, as some writers emit half an emoji.
HALF_EMOJI = '{"messages": [{"role": "user", "content": "hi \\ud83d"}]}'


def parsed(*texts: str) -> list[dict]:
    batch = pa.RecordBatch.from_pydict(
        {"value": list(texts), "file": ["in.jsonl"] * len(texts), "block": [0] * len(texts)}
    )
    return [row for out in parse_lines(iter([batch])) for row in out.to_pylist()]


def test_a_lone_surrogate_in_a_body_is_that_lines_invalid_request_not_the_jobs_failure():
    good = line(custom_id="a")
    half = line(custom_id="b").replace('{"a": 1}', HALF_EMOJI)
    assert "\\ud83d" in half  # escaped in the line's text, as the writer wrote it
    rows = parsed(good, half, line(custom_id="c"))
    assert [r[ID_COLUMN] for r in rows] == ["a", "b", "c"]
    assert [r[PROBLEM] for r in rows] == [None, None, None]  # the file's shape is fine
    with pytest.raises(RowError, match="body: a text in it holds a lone UTF-16 surrogate"):
        request(rows[1])
    with pytest.raises(RowError, match="lone UTF-16 surrogate"):
        row_request(BatchLine("m"), rows[1])
    assert request(rows[0]) == ("/v1/chat/completions", {"a": 1})
    # a paired surrogate is a character: the line is sent as it is
    pair = line(custom_id="d").replace('{"a": 1}', '{"q": "\\ud83d\\ude00"}')
    (row,) = parsed(pair)
    assert request(row) == ("/v1/chat/completions", {"q": "\U0001f600"})


def test_a_lone_surrogate_in_a_method_or_url_is_an_invalid_request_too():
    method, url = parsed(
        line(custom_id="m").replace('"POST"', '"PO\\udc00ST"'),
        line(custom_id="u").replace('"/v1/chat/completions"', '"/v1/chat\\ud800"'),
    )
    assert method["method"] == "PO\\udc00ST" and method[PROBLEM] is None
    with pytest.raises(RowError, match="method: expected 'POST'"):
        request(method)
    with pytest.raises(RowError, match="url: expected one of"):
        request(url)


def test_a_lone_surrogate_in_a_custom_id_is_a_problem_of_the_file_named_by_its_line():
    (row,) = parsed(line(custom_id="id-\udfff"))
    assert row[ID_COLUMN] is None
    assert "custom_id 'id-\\udfff' holds a lone UTF-16 surrogate" in row[PROBLEM]
