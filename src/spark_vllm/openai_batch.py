"""The OpenAI batch file format: what OpenAI's Batch API and `vllm run-batch` read and write.

Input, one JSON object per line:

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

Output, one line per input line:

    {"id": "...", "custom_id": "r1",
     "response": {"status_code": 200, "request_id": "...", "body": {...}},
     "error": null}

Each line's body goes to the sidecar as it is, to the endpoint its url names (chat,
completions or embeddings; a file may mix them), except `model`, which is the job's
`endpoint.model`: the sidecar serves one model. A line whose request failed keeps the
HTTP status and vLLM's error body under `response` (when there was an answer) and gets
`error: {code, message}`; a line that cannot be sent (bad method, url or body) gets
`response: null` and `error.code` "invalid_request".
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from pyspark.sql import types as T

from spark_vllm.client import Result
from spark_vllm.prompt import RowError

ID_COLUMN = "custom_id"
# The columns read from each input line; `body` stays the line's own JSON text.
INPUT_SCHEMA = T.StructType(
    [
        T.StructField(ID_COLUMN, T.StringType()),
        T.StructField("method", T.StringType()),
        T.StructField("url", T.StringType()),
        T.StructField("body", T.StringType()),
    ]
)
# What a task hands to the writer: the finished line, and the error for the summary.
LINE_SCHEMA = T.StructType(
    [
        T.StructField(ID_COLUMN, T.StringType()),
        T.StructField("line", T.StringType()),
        T.StructField("error", T.StringType()),
    ]
)
# The output lines as read back (resume, summary); `response.body` as JSON text.
STORED_SCHEMA = T.StructType(
    [
        T.StructField("id", T.StringType()),
        T.StructField(ID_COLUMN, T.StringType()),
        T.StructField(
            "response",
            T.StructType(
                [
                    T.StructField("status_code", T.IntegerType()),
                    T.StructField("request_id", T.StringType()),
                    T.StructField("body", T.StringType()),
                ]
            ),
        ),
        T.StructField(
            "error",
            T.StructType(
                [T.StructField("code", T.StringType()), T.StructField("message", T.StringType())]
            ),
        ),
    ]
)
# The urls a line may name, and the path under the sidecar's /v1 they go to.
ENDPOINTS = {
    "/v1/chat/completions": "/chat/completions",
    "/v1/completions": "/completions",
    "/v1/embeddings": "/embeddings",
}


def request(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(path under /v1, body) for one input line; RowError naming what is wrong."""
    method = row.get("method")
    if method != "POST":
        raise RowError(f"method {method!r}: expected 'POST'")
    url = row.get("url")
    if url not in ENDPOINTS:
        raise RowError(f"url {url!r}: expected one of {sorted(ENDPOINTS)}")
    text = row.get("body")
    try:
        body = json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise RowError(f"body: expected a JSON object, got {str(text)[:100]!r}")
    if body.get("stream"):
        raise RowError("body.stream: a batch line cannot stream; remove it or set it false")
    body.pop("model", None)  # the sidecar's model (endpoint.model) answers every line
    return ENDPOINTS[url], body


def _error_code(result: Result) -> str:
    if result.status is None:
        return "invalid_request" if result.attempts == 0 else "request_failed"
    return f"http_{result.status}"


def output_line(custom_id: str, result: Result) -> str:
    """The output line for one input line, as JSON text."""
    body: Any = None
    if result.body is not None:
        try:
            body = json.loads(result.body)
        except json.JSONDecodeError:
            body = result.body
    response = None
    if result.status is not None:
        response = {
            "status_code": result.status,
            "request_id": result.request_id,
            "body": body,
        }
    error = None
    if result.error is not None:
        error = {"code": _error_code(result), "message": result.error}
    line = {
        "id": f"spark-vllm-{uuid.uuid4().hex}",
        ID_COLUMN: custom_id,
        "response": response,
        "error": error,
    }
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"))
