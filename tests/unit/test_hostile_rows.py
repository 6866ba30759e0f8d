"""Hostile values in one row: each becomes that row's error row, never its task's failure.

`row_request` is what the partition runner and the plan's counting call for every row:
whatever a row's values make rendering, parsing or serialising raise comes back as a
RowError (a failed row is data), and a template's bounds stop it in well under a second.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from spark_vllm import RowError, spec_from_dict
from spark_vllm.driver.job import kind_for
from spark_vllm.request.kinds import BatchLine, Generating, row_request
from spark_vllm.request.result import Result

pytestmark = pytest.mark.unit

DEEP = 100_000  # far past Python's recursion limit; a few hundred KB of text


def kind(**prompt: Any) -> Any:
    doc: dict[str, Any] = {
        "input": {"format": "parquet", "path": "in", "id_column": "id"},
        "output": {"path": "out"},
        "endpoint": {"model": "m"},
        "prompt": prompt or {"template": "{{ q }}"},
    }
    return kind_for(spec_from_dict(doc))


def refused(k: Any, row: dict[str, Any], match: str) -> None:
    start = time.monotonic()
    with pytest.raises(RowError, match=match):
        row_request(k, row)
    assert time.monotonic() - start < 5


def test_a_deeply_nested_json_conversation_is_an_error_row():
    chat = kind(column="m")
    refused(chat, {"id": 1, "m": '[{"a":' + "[" * DEEP + "]" * DEEP + "}]"}, "nested too deeply")
    # a list nested in Python (a struct column can be deep too)
    value: Any = "x"
    for _ in range(DEEP):
        value = [value]
    refused(chat, {"id": 1, "m": [{"role": "user", "content": "x", "extra": value}]}, "deeply")


def test_a_deeply_nested_sampling_column_is_an_error_row():
    doc = {
        "input": {"format": "parquet", "path": "in", "id_column": "id"},
        "output": {"path": "out"},
        "endpoint": {"model": "m"},
        "prompt": {"template": "{{ q }}"},
        "sampling_column": "s",
    }
    k = kind_for(spec_from_dict(doc))
    refused(k, {"id": 1, "q": "hi", "s": '{"a":' + "[" * DEEP + "]" * DEEP + "}"}, "nested")


def test_a_huge_string_blown_up_by_a_template_is_an_error_row():
    refused(kind(template="{{ q * 3 }}"), {"id": 1, "q": "x" * 600_000}, "output bound")
    refused(
        kind(template="{% for i in range(100) %}{{ q }}{% endfor %}"),
        {"id": 1, "q": "x" * 100_000},
        "characters of output",
    )


@pytest.mark.parametrize("text", ["\ud800", "ok \udfff ok"])
def test_a_lone_surrogate_is_an_error_row_not_a_failed_request(text):
    said = "cannot become a request: a text in it holds a lone UTF-16 surrogate"
    refused(kind(), {"id": 1, "q": text}, said)
    # a JSON Lines conversation column is kept as its JSON text, escapes and all
    conversation = '[{"role": "user", "content": "\\ud800"}]'
    refused(kind(column="m"), {"id": 1, "m": conversation}, said)


def test_bytes_that_are_not_utf8_are_an_error_row():
    refused(kind(column="q"), {"id": 1, "q": b"\xff\xfe\xfd"}, "got bytes")
    refused(
        kind(content=[{"image": "q"}], max_image_bytes=1000),
        {"id": 1, "q": b"\xff\xfe\xfd"},
        "not an image",
    )


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("{% for i in range(9999) %}{% for j in range(9999) %}{% endfor %}{% endfor %}", "steps"),
        ("{% for i in range(10**9) %}{% endfor %}", "range"),
        ("{{ 9**9**9 }}", "power"),
        ("{{ q|center(10**9) }}", "size argument"),
        ("{{ '{:>999999999}'.format(q) }}", "format width"),
        ("{{ '%999999999s' % q }}", "format width"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
        ("{{ q.__class__.__init__.__globals__ }}", "template"),
        ("{{ q.upper.__self__ }}", "template"),
        ("{% set _ = l.append(1) %}", "SecurityError"),
        (
            "{% set ns = namespace(s=q * 1000) %}{% for i in range(40) %}"
            "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
            "output bound",
        ),
        ("{% macro f(s) %}{{ f(s + s) }}{% endmacro %}{{ f(q * 1000) }}", "output bound"),
        ("{{ range(10000)|join(q * 1000) }}", "output bound"),
        ("{{ (q * 1000)|replace('', q * 1000) }}", "output bound"),
        ("{{ (q * 1000).join(range(10000)|map('string')) }}", "output bound"),
        ("{{ [q * 1000] * 1000000 }}", "output bound"),
    ],
)
def test_a_template_that_loops_explodes_or_reaches_for_internals_is_an_error_row(template, why):
    refused(kind(template=template), {"id": 1, "q": "x", "l": []}, why)


def test_non_json_where_json_is_expected_is_an_error_row():
    refused(kind(column="m"), {"id": 1, "m": "[{ not json"}, "not a JSON messages list")
    batch = BatchLine("m")
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": "{no"}
    refused(batch, line, "cannot become a request")
    refused(batch, {**line, "body": "[1, 2]"}, "cannot become a request")


def test_an_answer_that_cannot_be_read_fails_its_row_only():
    doc = {
        "input": {"format": "parquet", "path": "in", "id_column": "id"},
        "output": {"path": "out"},
        "endpoint": {"model": "m"},
        "prompt": {"template": "{{ q }}"},
        "structured_output": {
            "json_schema": {"type": "object", "properties": {"a": {"type": "string"}}}
        },
    }
    k = kind_for(spec_from_dict(doc))
    assert isinstance(k, Generating)
    result = Result(values={"response": '{"a":' + "[" * DEEP + "]" * DEEP + "}"})
    k.finish({"id": 1, "q": "x"}, result)
    assert result.error is not None and result.error.startswith("bad answer")


def test_a_valid_row_still_becomes_its_request():
    assert row_request(kind(), {"id": 1, "q": "hello"}) == {
        "messages": [{"role": "user", "content": "hello"}]
    }
    assert json.loads(json.dumps(row_request(kind(column="m"), {"id": 1, "m": "plain"})))


def test_a_task_of_hostile_rows_ends_with_one_error_row_each_and_never_calls_the_sidecar():
    import pyarrow as pa
    from pyspark.sql import types as T
    from pyspark.sql.pandas.types import to_arrow_schema

    from spark_vllm.request.kinds import Chat
    from spark_vllm.request.prompt import PromptBuilder
    from spark_vllm.task.runner import Endpoint, TaskConfig, Timeouts, run_partition

    k = Chat("m", PromptBuilder("chat", column="m"))
    schema = T.StructType([T.StructField("id", T.StringType()), *k.result_fields()])
    cfg = TaskConfig(
        kind=k,
        endpoint=Endpoint("http://127.0.0.1:9/v1"),  # nothing listens: no row gets there
        id_column="id",
        output_schema=to_arrow_schema(schema),
        timeouts=Timeouts(ready_s=1),
    )
    deep = '[{"a":' + "[" * DEEP + "]" * DEEP + "}]"
    values = [deep, "[{ no", "   ", '[{"role": "x", "content": "y"}]']
    ids = [str(i) for i in range(len(values))]
    batch = pa.RecordBatch.from_pydict({"id": ids, "m": values})
    out = pa.Table.from_batches(list(run_partition(iter([batch]), cfg))).to_pylist()
    assert [r["id"] for r in out] == ids
    assert all(r["error"].startswith("bad input: ") for r in out), out
