"""The OpenAI batch file format: what OpenAI's Batch API and `vllm run-batch` read and write.

Input, one JSON object per line:

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

Output, one line per input line:

    {"id": "...", "custom_id": "r1",
     "response": {"status_code": 200, "request_id": "...", "body": {...}},
     "error": null}

The file's shape is checked before any request (`check_line`): every line a JSON object,
`custom_id` a non-empty string, unique in the file, `method` and `url` strings, `body` an
object; a problem anywhere refuses the whole file, naming each line. What a well-formed
line asks for is then judged line by line, as `vllm run-batch` does: a method other than
POST, a url the sidecar does not serve, or `stream` in the body gets an output line with
`response: null` and `error.code` "invalid_request".

Each line's body goes to the sidecar as it is, at the url it names (chat, completions,
embeddings, score or rerank; a file may mix them), except `model`, which is the job's
`endpoint.model`: the sidecar serves one model. An answered line keeps the answer's body;
a line whose request failed keeps the HTTP status under `response` with `body: null` (the
shape vLLM's own `BatchRequestOutput` model accepts) and gets `error: {code, message}`
with vLLM's message.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from spark_vllm.errors import LONE_SURROGATE, RowError
from spark_vllm.request.result import Result

ID_COLUMN = "custom_id"
# The columns of each input line; `body` is the line's body object as JSON text.
INPUT_SCHEMA = T.StructType(
    [
        T.StructField(ID_COLUMN, T.StringType()),
        T.StructField("method", T.StringType()),
        T.StructField("url", T.StringType()),
        T.StructField("body", T.StringType()),
    ]
)
# Where a line was read (its file, the start of the split it was read in, its index in
# that split, blank lines counted) and what is wrong with its shape (null: nothing).
FILE, BLOCK, POSITION, PROBLEM = "_file", "_block", "_position", "_problem"
PARSED_SCHEMA = T.StructType(
    [
        *INPUT_SCHEMA.fields,
        T.StructField(FILE, T.StringType()),
        T.StructField(BLOCK, T.LongType()),
        T.StructField(POSITION, T.LongType()),
        T.StructField(PROBLEM, T.StringType()),
    ]
)
_PARSED_ARROW = to_arrow_schema(PARSED_SCHEMA)
# The keys a line has; anything else is refused (a misspelt custom_id, say).
LINE_KEYS = ("custom_id", "method", "url", "body")
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
# The urls a line may name, relative to the server's root (vLLM serves score and rerank
# both with and without /v1, and rerank under /v2 too).
URLS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/score",
    "/score",
    "/v1/rerank",
    "/rerank",
    "/v2/rerank",
)
# The line's example, for messages.
EXAMPLE = (
    '{"custom_id": "request-1", "method": "POST", "url": "/v1/chat/completions", '
    '"body": {"messages": [...]}}'
)
# Problems shown in one refusal; the rest are counted.
SHOWN_PROBLEMS = 20


def _kind(value: Any) -> str:
    """A JSON value's type, for messages."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string"}.get(
        type(value), "an array" if isinstance(value, list) else "an object"
    )


def check_line(text: str) -> tuple[dict[str, str | None], str | None]:
    """One input line: its fields (the body as JSON text) and what is wrong with its
    shape (None: nothing). Only the shape is judged here; see `request`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return {}, f"not JSON ({exc.msg} at column {exc.colno}): {text[:80]!r}"
    if not isinstance(value, dict):
        return {}, f"expected a JSON object, got {_kind(value)}: {text[:80]!r}"
    problems = [
        f"unknown key {key!r} (a line has {', '.join(LINE_KEYS)})"
        for key in value
        if key not in LINE_KEYS
    ]
    custom_id = value.get(ID_COLUMN)
    if custom_id is None:
        problems.append("custom_id is missing")
    elif not isinstance(custom_id, str):
        problems.append(f"custom_id must be a string, got {_kind(custom_id)} ({custom_id!r})")
    elif custom_id == "":
        problems.append("custom_id is empty")
    elif not _utf8(custom_id):
        problems.append(f"custom_id {custom_id!r} holds {LONE_SURROGATE}")
        custom_id = None
    for key in ("method", "url"):
        if value.get(key) is None:
            problems.append(f"{key} is missing")
        elif not isinstance(value[key], str):
            problems.append(f"{key} must be a string, got {_kind(value[key])}")
    body = value.get("body")
    if not isinstance(body, dict):
        problems.append(f"body must be a JSON object, got {_kind(body)}")
    fields = {
        ID_COLUMN: custom_id if isinstance(custom_id, str) else None,
        "method": _shown(value.get("method")),
        "url": _shown(value.get("url")),
        "body": _body_text(body) if isinstance(body, dict) else None,
    }
    return fields, "; ".join(problems) or None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(value: Any) -> str | None:
    """A method or url as Arrow can hold it: a lone surrogate shown as its escape (such a
    value is no method or url `request` accepts, so the line is an invalid_request)."""
    if not isinstance(value, str):
        return None
    return value if _utf8(value) else value.encode("utf-8", "backslashreplace").decode("utf-8")


def _body_text(body: dict[str, Any]) -> str:
    """The body as JSON text; with a lone surrogate in it, escaped as in the line, so the
    line reaches `request`, which makes it an invalid_request (one line, not the job)."""
    text = json.dumps(body, ensure_ascii=False)
    return text if _utf8(text) else json.dumps(body)


class LineCounter:
    """Each line's index in the split it was read in, from (file, split start) pairs in
    the order Spark's text source hands them over: one split's lines in order, one split
    after another, so counting within a split places every line (blank ones counted)."""

    def __init__(self) -> None:
        self.where: tuple[str, int] | None = None
        self.position = -1

    def __call__(self, file: str, block: int) -> int:
        if (file, block) != self.where:
            self.where, self.position = (file, block), 0
        else:
            self.position += 1
        return self.position


def parse_lines(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: rows of (text, file, split start) in, PARSED_SCHEMA rows out.

    Lines are placed by LineCounter. Blank lines are counted but give no row; a
    byte-order mark at the start of a file is dropped.
    """
    count = LineCounter()
    for batch in batches:
        out: dict[str, list[Any]] = {name: [] for name in _PARSED_ARROW.names}
        texts, files, blocks = (batch.column(i).to_pylist() for i in range(3))
        for text, file, block in zip(texts, files, blocks, strict=True):
            position = count(file, block)
            if text is None or not text.strip():
                continue
            if block == 0 and position == 0:
                text = text.removeprefix("\ufeff")
            fields, problem = check_line(text)
            for name in INPUT_SCHEMA.fieldNames():
                out[name].append(fields.get(name))
            out[FILE].append(file)
            out[BLOCK].append(block)
            out[POSITION].append(position)
            out[PROBLEM].append(problem)
        yield pa.RecordBatch.from_pydict(out, schema=_PARSED_ARROW)


def read_lines(lines: DataFrame) -> DataFrame:
    """The input lines, parsed and placed: `lines` holds (value, file, split start)."""
    return lines.mapInArrow(parse_lines, PARSED_SCHEMA)


def place(lines: DataFrame, file: str, block: int, position: int) -> str:
    """`name:line` of a line, from where it was read."""
    before = 0
    if block > 0:  # a file read in several splits: count the lines of the splits before
        before = lines.where((F.col(FILE) == file) & (F.col(BLOCK) < block)).count()
    return f"{file.rstrip('/').rsplit('/', 1)[-1]}:{before + position + 1}"


def shape_problems(parsed: DataFrame, lines: DataFrame) -> tuple[list[str], int]:
    """What breaks the format in the file: (up to SHOWN_PROBLEMS messages, how many in all).

    Lines whose shape is wrong are named one by one; a custom_id on several lines is
    named with its lines (the id is the row id: resume and the output need it unique).
    """
    order = [F.col(FILE), F.col(BLOCK), F.col(POSITION)]
    bad = parsed.where(F.col(PROBLEM).isNotNull()).orderBy(*order).limit(SHOWN_PROBLEMS + 1)
    shown = [f"{place(lines, r[FILE], r[BLOCK], r[POSITION])}: {r[PROBLEM]}" for r in bad.collect()]
    total = len(shown)
    if total > SHOWN_PROBLEMS:
        total = parsed.where(F.col(PROBLEM).isNotNull()).count()
        shown = shown[:SHOWN_PROBLEMS]
    named = parsed.where(F.col(PROBLEM).isNull() & F.col(ID_COLUMN).isNotNull())
    repeated = (
        named.groupBy(ID_COLUMN)
        .count()
        .where(F.col("count") > 1)
        .orderBy(F.desc("count"), ID_COLUMN)
        .limit(SHOWN_PROBLEMS)
        .collect()
    )
    if repeated:
        ids = [r[ID_COLUMN] for r in repeated]
        where: dict[str, list[str]] = {i: [] for i in ids}
        for r in named.where(F.col(ID_COLUMN).isin(ids)).orderBy(*order).collect():
            if len(where[r[ID_COLUMN]]) < 5:
                where[r[ID_COLUMN]].append(place(lines, r[FILE], r[BLOCK], r[POSITION]))
        for r in repeated:
            places = ", ".join(where[r[ID_COLUMN]]) + (", …" if r["count"] > 5 else "")
            shown.append(f"custom_id {r[ID_COLUMN]!r} is on {r['count']} lines: {places}")
        total += len(repeated)
    return shown, total


def request(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(url under the server's root, body) for one well-formed line; RowError naming
    what the sidecar cannot be asked (the line then gets an invalid_request answer)."""
    method = row.get("method")
    if method != "POST":
        raise RowError("method: expected 'POST'")
    url = row.get("url")
    if url not in URLS:
        raise RowError(f"url: expected one of {list(URLS)}")
    body = json.loads(row["body"])
    # Only a body kept escaped (_body_text) can hold a lone surrogate.
    if "\\u" in row["body"] and not _utf8(json.dumps(body, ensure_ascii=False)):
        raise RowError(f"body: a text in it holds {LONE_SURROGATE}")
    if body.get("stream"):
        raise RowError("body.stream: a batch line cannot stream; remove it or set it false")
    body.pop("model", None)  # the sidecar's model (endpoint.model) answers every line
    return url, body


def _error_code(result: Result) -> str:
    if result.status is None:
        return "invalid_request" if result.attempts == 0 else "request_failed"
    return f"http_{result.status}"


def output_line(custom_id: str, result: Result, answer: Any = None) -> str:
    """The output line for one input line, as JSON text.

    The body of a 200 answer (`answer`, when it was parsed already) is kept whole; an
    error answer's status is kept with `body: null` and vLLM's message goes to `error`
    (so vLLM's `BatchRequestOutput` validates every line)."""
    response = None
    if result.status is not None:
        body = answer
        if result.status == 200 and body is None and result.body is not None:
            try:
                body = orjson.loads(result.body)
            except orjson.JSONDecodeError:
                body = None
        if result.status != 200:
            body = None
        response = {"status_code": result.status, "request_id": result.request_id, "body": body}
    error = None
    if result.error is not None:
        error = {"code": _error_code(result), "message": result.error}
    line = {
        "id": f"spark-vllm-{uuid.uuid4().hex}",
        ID_COLUMN: custom_id,
        "response": response,
        "error": error,
    }
    return orjson.dumps(line).decode("utf-8")
