"""format: openai-batch, a request file as prepared for OpenAI's Batch API or vllm run-batch,
run unchanged against the real vLLM."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_vllm import SpecError, run_job
from tests.conftest import SERVED_NAME
from tests.integration.jobs import batch_line as line
from tests.integration.jobs import batch_output as output_lines
from tests.integration.jobs import batch_spec

pytestmark = pytest.mark.integration


def test_batch_file_runs_unchanged_and_each_line_gets_its_answer(spark, vllm_server, tmp_path):
    chat = [
        line(f"chat-{i}", "/v1/chat/completions", {
            "model": "gpt-4o-mini",  # a name from OpenAI: the sidecar's model answers
            "messages": [{"role": "user", "content": "apple " * i}],
            "max_tokens": 4,
            "ignore_eos": True,
        })
        for i in range(1, 7)
    ]  # fmt: skip
    completion = [
        line(f"text-{i}", "/v1/completions", {"prompt": "Once upon", "max_tokens": 3})
        for i in range(2)
    ]
    bad = [
        line("embed-on-chat-model", "/v1/embeddings", {"input": "a kettle"}),
        line("get", "/v1/chat/completions", {"messages": []}, method="GET"),
        line("responses-api", "/v1/responses", {"input": "hi"}),
    ]
    spec = batch_spec(tmp_path, vllm_server, SERVED_NAME, chat + completion + bad)
    assert spec.output.format == "openai-batch"
    summary = run_job(spark, spec)
    assert (summary.rows, summary.succeeded, summary.failed) == (11, 8, 3)
    assert summary.completion_tokens == 6 * 4 + 2 * 3

    out = {x["custom_id"]: x for x in output_lines(tmp_path / "out")}
    assert len(out) == 11 and len(output_lines(tmp_path / "out")) == 11
    for i in range(1, 7):
        got = out[f"chat-{i}"]
        assert got["error"] is None
        assert got["response"]["status_code"] == 200
        assert got["response"]["request_id"].startswith("spark-vllm-")
        body = got["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == SERVED_NAME
        assert body["usage"]["completion_tokens"] == 4
        assert isinstance(body["choices"][0]["message"]["content"], str)
    # Each answer is its own line's: prompt tokens grow with the number of apples.
    tokens = [out[f"chat-{i}"]["response"]["body"]["usage"]["prompt_tokens"] for i in range(1, 7)]
    assert tokens == sorted(tokens) and len(set(tokens)) == 6, tokens
    assert out["text-0"]["response"]["body"]["object"] == "text_completion"

    # A server of a generating model has no /v1/embeddings: the status is kept, vLLM's
    # message goes to `error`, and the body is null (as vLLM's BatchRequestOutput has it).
    refused = out["embed-on-chat-model"]
    assert refused["response"]["status_code"] == 404
    assert refused["response"]["body"] is None
    assert refused["error"] == {"code": "http_404", "message": 'HTTP 404: {"detail":"Not Found"}'}
    for custom_id, words in (("get", "method: expected"), ("responses-api", "url: expected")):
        assert out[custom_id]["response"] is None
        assert out[custom_id]["error"]["code"] == "invalid_request"
        assert words in out[custom_id]["error"]["message"]

    # Run again: the eight answered lines are skipped, the three failed ones tried again.
    again = run_job(spark, spec)
    assert (again.skipped, again.rows, again.failed) == (8, 3, 3)
    assert (again.output_ids, again.output_failed) == (11, 3)


def test_batch_file_with_a_line_that_is_not_json_is_refused(spark, vllm_server, tmp_path):
    spec = batch_spec(tmp_path, vllm_server, SERVED_NAME, [line("a", "/v1/completions", {})])
    Path(spec.input.path).write_text(
        '{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}\n'
        "not json at all\n"
    )
    with pytest.raises(SpecError, match=r"batch.jsonl:2: not JSON \(Expecting value"):
        run_job(spark, spec)
