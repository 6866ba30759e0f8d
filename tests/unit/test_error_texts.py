"""Error texts and summaries never quote a row's values, secrets or URL passwords.

A posted spec chooses its input: a CSV of the pod's token file and a template that fails
on the value would put the token in each row's error, the summary's most common errors
and `GET /jobs/{id}`. Errors name the column (the summary: the row id) instead.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from spark_vllm import RowError, spec_from_dict
from spark_vllm.driver.job import bad_ids_text, kind_for
from spark_vllm.driver.summary import Summary
from spark_vllm.redact import redact
from spark_vllm.request.kinds import row_request
from spark_vllm.spec import JdbcConnection
from spark_vllm.storage.jdbc import Database
from spark_vllm.task.tally import Tally

pytestmark = pytest.mark.unit

SECRET = "eyJhbGciOiJSUzI1NiIsImtpZCI6IkJ4c2VjcmV0In0.c2VjcmV0LXRva2Vu"
SECRET_B64 = base64.b64encode(SECRET.encode()).decode()


def kind(**changes: Any) -> Any:
    doc: dict[str, Any] = {
        "input": {"format": "parquet", "path": "in", "id_column": "id"},
        "output": {"path": "out"},
        "endpoint": {"model": "m"},
        "prompt": {"template": "{{ _c0 }}"},
    }
    doc.update(changes)
    return kind_for(spec_from_dict(doc))


def error_of(k: Any, row: dict[str, Any]) -> str:
    with pytest.raises(RowError) as refused:
        row_request(k, {"id": "row-7", **row})
    return str(refused.value)


# (spec changes, the row): each fails, and its error must not carry SECRET.
CASES = [
    ({"prompt": {"template": "{{ {}[_c0[0:250]] }}"}}, {"_c0": SECRET}),
    ({"prompt": {"template": "{{ _c0.missing }}"}}, {"_c0": {SECRET: 1}}),
    ({"prompt": {"template": "{{ _c0[SECRET] }}"}}, {"_c0": {}, "SECRET": SECRET}),
    ({"prompt": {"template": "{{ _c0 + 1 }}"}}, {"_c0": SECRET}),
    ({"prompt": {"template": "{{ (_c0|int) // 0 }}"}}, {"_c0": SECRET}),
    ({"prompt": {"template": "{{ _c0.format(**x) }}"}}, {"_c0": "{" + SECRET + "}", "x": {}}),
    ({"prompt": {"column": "_c0"}}, {"_c0": f'[{{"role": "{SECRET}", "content": "x"}}]'}),
    ({"prompt": {"column": "_c0"}}, {"_c0": [{"role": "user", "content": [{"t": SECRET}]}]}),
    ({"prompt": {"column": "_c0"}}, {"_c0": f'[{{"role": "user", "content": "{SECRET}"'}),
    ({"prompt": {"content": [{"image": "_c0"}]}}, {"_c0": f"/var/run/{SECRET}/token"}),
    ({"prompt": {"content": [{"image": "_c0"}]}}, {"_c0": f"data:text/{SECRET};base64,AAAA"}),
    ({"prompt": {"content": [{"image": "_c0"}]}}, {"_c0": f"data:image/png;base64,{SECRET_B64}"}),
    ({"prompt": {"content": [{"image": "_c0"}]}}, {"_c0": SECRET.encode()}),
    ({"prompt": {"content": [{"image": "_c0"}]}}, {"_c0": f"weird{SECRET}://x/y.png"}),
    ({"lora": {"column": "a"}}, {"_c0": "x", "a": "   "}),
    ({"sampling_column": "s"}, {"_c0": "x", "s": f'{{"top_k": "{SECRET}", "n": 4}}'}),
    ({"sampling_column": "s"}, {"_c0": "x", "s": f'{{"x": {SECRET}}}'}),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "row"), CASES)
def test_a_failed_rows_error_names_no_value_of_the_row(changes, row):
    text = error_of(kind(**changes), row)
    assert SECRET not in text and SECRET[:12] not in text and "c2VjcmV0" not in text, text


def test_the_template_error_names_the_line_and_the_columns_it_reads():
    text = error_of(kind(prompt={"template": "a\n{{ {}[_c0[0:250]] }}"}), {"_c0": SECRET})
    assert text.startswith("template line 2:") and "'_c0'" in text, text


def test_the_summary_and_its_lines_carry_no_row_value_nor_url_password():
    tally = Tally()
    for i, (changes, row) in enumerate(CASES):
        tally.count(f"bad input: {error_of(kind(**changes), row)}", (0, 0), f"row-{i}")
    tally.count("cannot connect: postgresql://app:hunter2@db:5432/x refused", (0, 0), "r")
    summary = Summary(len(CASES) + 1, 0, len(CASES) + 1, 0, 0, 1.0, "out",
                      errors=tally.errors.most_common(50), breakdown=tally.breakdown())  # fmt: skip
    shown = summary.render() + str(summary.to_json() if hasattr(summary, "to_json") else "")
    assert SECRET not in shown and SECRET[:12] not in shown and "hunter2" not in shown
    assert "row-0" in shown  # the breakdown names an example row by its id


@pytest.mark.parametrize(
    "url",
    [
        "jdbc:postgresql://db:5432/shop?user=app&password=hunter2",
        "jdbc:sqlserver://db:1433;databaseName=shop;user=app;password=hunter2;encrypt=true",
        "jdbc:mysql://app:hunter2@db:3306/shop",
        "jdbc:postgresql://db/shop?PWD=hunter2&ssl=true",
        "https://app:hunter2@example.com/x?token=hunter2",
    ],
)
def test_urls_lose_their_passwords(url):
    shown = redact(f"cannot connect to {url}: refused")
    assert "hunter2" not in shown and "***" in shown
    assert "db" in shown or "example.com" in shown  # the host still says where


class _JavaException:
    def __init__(self, message: str) -> None:
        self.message = message

    def getCause(self) -> None:
        return None

    def getMessage(self) -> str:
        return self.message


def test_a_jdbc_connection_error_names_the_host_but_not_the_password(monkeypatch):
    from py4j.protocol import Py4JJavaError

    monkeypatch.setenv("PW_VAR", "s3cr3t-from-env")
    url = "jdbc:postgresql://db:5432/shop?user=app&password=hunter2"
    conn = JdbcConnection(url=url, password_env="PW_VAR")
    db = Database(None, conn, "input.jdbc")  # type: ignore[arg-type]

    class Refused(Py4JJavaError):
        def __init__(self, message: str) -> None:
            Exception.__init__(self, "An error occurred")
            self.java_exception = _JavaException(message)

        def __str__(self) -> str:
            return "An error occurred"

    def refuse() -> None:
        raise Refused(f"FATAL: password s3cr3t-from-env rejected for {url}")

    monkeypatch.setattr(db, "_open", refuse)
    from spark_vllm.errors import JdbcError

    with pytest.raises(JdbcError) as refused:
        db.check()
    text = str(refused.value)
    assert text.startswith("input.jdbc: cannot connect to jdbc:postgresql://db:5432/shop")
    assert "hunter2" not in text and "s3cr3t-from-env" not in text, text


def test_an_adapter_a_row_names_and_the_sidecar_lacks_is_not_quoted(monkeypatch):
    from spark_vllm.task import lora

    monkeypatch.setattr(lora, "served_models", lambda url, key: {"base", "alpha"})
    adapters = lora.Adapters("http://127.0.0.1:1/v1", "base", {}, None)
    with pytest.raises(
        RowError, match=r"row's LoRA adapter is not served.*\['alpha', 'base'\]"
    ) as refused:
        adapters.check(SECRET)
    assert SECRET not in str(refused.value)


def test_a_batch_lines_method_and_url_are_not_quoted():
    from spark_vllm.request.kinds import BatchLine

    batch = BatchLine("m")
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": "{}"}
    for bad in ({"method": SECRET}, {"url": f"/{SECRET}"}):
        assert SECRET not in error_of(batch, {**line, **bad})


def test_a_servers_validation_error_loses_the_value_it_quotes():
    said = (
        "HTTP 400: 1 validation error for ChatCompletionRequest\\ntemperature\\n  Input should "
        f"be a valid number [type=float_parsing, input_value='{SECRET}', input_type=str]"
    )
    tally = Tally()
    tally.count(said, (0, 0), "r")
    (counted,) = tally.errors
    assert SECRET not in counted and "input_value=***" in counted


def test_get_jobs_summary_lines_lose_url_passwords_and_quoted_values():
    from types import SimpleNamespace as NS

    from spark_vllm.cluster.operate import report

    driver = NS(
        metadata=NS(name="d", labels={"spark-role": "driver"}),
        status=NS(phase="Failed", container_statuses=[]),
    )
    log = (
        "spark-vllm summary (run r)\n"
        "  rows              3\n"
        "  most common errors:\n"
        "    2 x cannot connect to jdbc:postgresql://app:hunter2@db/x?password=hunter2\n"
        f"    1 x HTTP 400: bad temperature [input_value='{SECRET}', input_type=str]\n"
    )
    kube = NS(pods=lambda name, ns: [driver], log=lambda pod, ns, container: log)
    shown = str(report(kube, "job", "ns", submitter=False))  # type: ignore[arg-type]
    assert "rows" in shown and "hunter2" not in shown and SECRET not in shown, shown


def test_the_breakdown_of_failures_by_kind_quotes_no_model_a_row_named():
    tally = Tally()
    tally.count(f"HTTP 404: The model `{SECRET}` does not exist.", (0, 0), "r1")
    assert SECRET not in str(tally.breakdown()) + str(tally.errors), tally.breakdown()


def test_bad_ids_are_shown_as_ids_with_their_row_counts():
    text = bad_ids_text("key", [(None, 1), ("a", 2), (7, 1), (None, 3)])
    assert (
        "found no id (null) on 1 row; id 'a' on 2 rows; id 7 on 1 row; no id (null) on 3 rows."
        in (text)
    )
    assert "None" not in text and "1 rows" not in text
    assert text.startswith("input.id_column: column 'key' must hold a unique, non-null id")
