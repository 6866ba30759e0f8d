"""The shape of an OpenAI batch file's lines, judged before any request."""

import json

import pytest

from spark_vllm import RowError
from spark_vllm.request.openai_batch import check_line, output_line, request
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
