"""The trigger fuzzed from its own OpenAPI document (schemathesis): whatever a client sends,
no answer is a 5xx, and without the token no answer is anything but 401. Bounded in time:
a few seconds per operation, no example database."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spark_vllm.cluster.trigger import Policy, create_app

from .test_trigger import TOKEN, Recorder

pytestmark = pytest.mark.unit

POLICY = Policy(allowed_paths=("/data/", "s3a://bucket/jobs/"), allowed_spark_conf=("spark.sql.",))
APP = create_app(Recorder(), TOKEN, 64 * 1024, policy=POLICY, max_running=2)
SCHEMA = schemathesis.openapi.from_dict(APP.openapi())
SCHEMA.app = APP
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
FUZZ = settings(
    max_examples=50,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
WRONG = st.one_of(
    st.none(),
    st.sampled_from(["", "Bearer", "Bearer ", f"Basic {TOKEN}", f"Bearer {TOKEN}x"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40).map(
        lambda t: f"Bearer {t}"
    ),
)


def test_the_document_describes_every_route_and_the_job_body() -> None:
    routes = {(op.method.upper(), op.path) for op in OPERATIONS}
    assert routes == {
        ("POST", "/jobs"),
        ("GET", "/jobs"),
        ("GET", "/jobs/{run}"),
        ("DELETE", "/jobs/{run}"),
    }
    body = APP.openapi()["paths"]["/jobs"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["required"] == ["input", "output"]


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: f"{op.method} {op.path}")
def test_no_request_with_the_token_gets_a_5xx(operation: Any) -> None:
    @FUZZ
    @given(case=operation.as_strategy())
    def fuzz(case: Any) -> None:
        response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code < 500, (case.body, response.text)

    fuzz()


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: f"{op.method} {op.path}")
def test_no_request_without_the_token_gets_anything_but_401(operation: Any) -> None:
    @FUZZ
    @given(case=operation.as_strategy(), header=WRONG)
    def fuzz(case: Any, header: str | None) -> None:
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        if header is not None:
            headers["Authorization"] = header
        case.headers = headers
        response = case.call()
        assert response.status_code == 401, (header, response.text)

    fuzz()
