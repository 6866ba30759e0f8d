"""The HTTP trigger's own rules, before any cluster: the bearer token, the body's size and
type, the spec validated with the key path named, and nothing created for a refused request.
The Kubernetes side is a recorder here; tests/cluster/test_trigger_path.py runs the real one."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from spark_vllm.cluster.trigger import Policy, RunError, check_posted, create_app, parse_body
from spark_vllm.errors import SpecError

pytestmark = pytest.mark.unit

TOKEN = "s3cret-token-0123456789abcdef"
GOOD = {
    "input": {"format": "jsonl", "path": "/data/input/questions.jsonl", "id_column": "id"},
    "output": {"format": "parquet", "path": "/data/output"},
    "task": "chat",
    "prompt": {"template": "{{ question }}"},
}


class Recorder:
    """Stands in for trigger.Runs: records what would be created."""

    def __init__(self, fail: RunError | None = None) -> None:
        self.values = {"sidecar": {"port": 8000}, "model": {"servedName": "model"}}
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.fail = fail

    def create(self, doc: dict[str, Any]) -> str:
        if self.fail:
            raise self.fail
        self.created.append(doc)
        return f"jobs-{len(self.created):08x}"

    def ids(self) -> list[str]:
        return [f"jobs-{i + 1:08x}" for i in range(len(self.created))]

    def exists(self, run: str) -> bool:
        return run in self.ids()

    def report(self, run: str) -> dict[str, Any]:
        return {"state": "pending"}

    def delete(self, run: str) -> None:
        self.deleted.append(run)

    def running(self) -> int:
        return len(self.created) - len(self.deleted)


LAKE = "jdbc:postgresql://lake-db:5432/lake"
POLICY = Policy(allowed_paths=("/data/", LAKE))


@pytest.fixture
def runs() -> Recorder:
    return Recorder()


@pytest.fixture
def client(runs: Recorder) -> TestClient:
    return TestClient(create_app(runs, TOKEN, max_body_bytes=4096, policy=POLICY))


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "a bearer token is required"),
        (auth("wrong"), "the bearer token is wrong"),
        (auth(TOKEN[:-1]), "the bearer token is wrong"),
        (auth(TOKEN + "x"), "the bearer token is wrong"),
        ({"Authorization": f"Basic {TOKEN}"}, "a bearer token is required"),
    ],
)
def test_no_token_or_a_wrong_one_is_401_and_creates_nothing(
    client: TestClient, runs: Recorder, headers: dict[str, str], detail: str
) -> None:
    for method, path in (("post", "/jobs"), ("get", "/jobs"), ("get", "/jobs/jobs-00000001")):
        response = client.request(method, path, json=GOOD, headers=headers)
        assert response.status_code == 401, (method, path, response.text)
        assert detail in response.json()["detail"]
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.delete("/jobs/jobs-00000001", headers=headers).status_code == 401
    assert runs.created == [] and runs.deleted == []


def test_no_openapi_or_docs_page_answers_without_a_token(client: TestClient) -> None:
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert client.get(path).status_code in (401, 404), path


@pytest.mark.parametrize(
    ("change", "key_path"),
    [
        ({"sampling": {"max_tokens": "lots"}}, "sampling.max_tokens"),
        ({"input": {"format": "csv2", "path": "/x"}}, "input.format"),
        ({"nonsense": 1}, "nonsense"),
        ({"prompt": {"template": "{{ question "}}, "prompt.template"),
    ],
)
def test_a_bad_spec_is_400_naming_the_key_path(
    client: TestClient, runs: Recorder, change: dict[str, Any], key_path: str
) -> None:
    response = client.post("/jobs", json={**GOOD, **change}, headers=auth())
    assert response.status_code == 400, response.text
    assert key_path in response.json()["detail"]
    assert runs.created == []


def test_a_body_that_is_not_a_spec_is_400(client: TestClient, runs: Recorder) -> None:
    cases = [
        (b"{not json", "application/json", "(send YAML with Content-Type: application/yaml)"),
        (b"[1, 2]", "application/json", "the body is a list; expected a job spec"),
        (b"input: [unclosed", "application/yaml", "the body is not a YAML document"),
        # a key given twice would silently replace the first (issue 33)
        (
            b'{"sampling": {"max_tokens": 5, "max_tokens": 9}}',
            "application/json",
            "the key 'max_tokens' is given twice in one object",
        ),
        (
            b"sampling: {max_tokens: 5}\nsampling: {temperature: 0}\n",
            "application/yaml",
            "the key 'sampling' is given twice, on lines 1 and 2",
        ),
    ]
    for body, kind, detail in cases:
        response = client.post("/jobs", content=body, headers={**auth(), "Content-Type": kind})
        assert response.status_code == 400, response.text
        assert detail in response.json()["detail"]
    response = client.post(
        "/jobs", content=b"<spec/>", headers={**auth(), "Content-Type": "application/xml"}
    )
    assert response.status_code == 415
    assert "expected application/json or application/yaml" in response.json()["detail"]
    assert runs.created == []


def test_a_body_over_the_limit_is_413_whether_announced_or_streamed(
    client: TestClient, runs: Recorder
) -> None:
    big = json.dumps({**GOOD, "padding": "x" * 5000}).encode()
    response = client.post(
        "/jobs", content=big, headers={**auth(), "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert "4096" in response.json()["detail"]

    def chunks():  # no Content-Length: the body is counted as it arrives
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    response = client.post(
        "/jobs", content=chunks(), headers={**auth(), "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert runs.created == []


def test_a_good_spec_is_accepted_as_json_or_yaml_and_reported(
    client: TestClient, runs: Recorder
) -> None:
    response = client.post("/jobs", json=GOOD, headers=auth())
    assert response.status_code == 202, response.text
    assert response.json() == {"id": "jobs-00000001", "status": "/jobs/jobs-00000001"}
    response = client.post(
        "/jobs",
        content=yaml.safe_dump(GOOD).encode(),
        headers={**auth(), "Content-Type": "application/yaml"},
    )
    assert response.status_code == 202
    assert runs.created == [GOOD, GOOD]
    assert client.get("/jobs", headers=auth()).json() == {
        "jobs": ["jobs-00000001", "jobs-00000002"]
    }
    assert client.get("/jobs/jobs-00000002", headers=auth()).json() == {
        "id": "jobs-00000002",
        "state": "pending",
    }
    assert client.get("/jobs/jobs-00000009", headers=auth()).status_code == 404
    assert client.delete("/jobs/jobs-00000009", headers=auth()).status_code == 404
    assert client.delete("/jobs/jobs-00000001", headers=auth()).status_code == 202
    assert runs.deleted == ["jobs-00000001"]


def test_the_charts_own_refusals_are_400_and_other_failures_500() -> None:
    for status in (400, 500):
        runs = Recorder(fail=RunError(status, f"refused with {status}"))
        client = TestClient(create_app(runs, TOKEN, max_body_bytes=4096, policy=POLICY))
        response = client.post("/jobs", json=GOOD, headers=auth())
        assert response.status_code == status
        assert response.json()["detail"] == f"refused with {status}"


def test_an_empty_token_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="non-empty token"):
        create_app(Recorder(), "", 4096)


def test_parse_body_takes_a_charset_and_an_absent_type_as_json() -> None:
    assert parse_body(b'{"a": 1}', "application/json; charset=utf-8") == {"a": 1}
    assert parse_body(b'{"a": 1}', "") == {"a": 1}
    assert parse_body(b"a: 1\n", "text/yaml") == {"a": 1}


JDBC_OUT = {"format": "jdbc", "jdbc": {"url": LAKE, "table": "answers"}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"endpoint": {"base_url": "https://collector.example.net/v1"}}, "endpoint: a job posted"),
        (
            {"endpoint": {"model": "m", "api_key_env": "AWS_SECRET_ACCESS_KEY"}},
            "leave endpoint out of the spec",
        ),
        (
            {"output": {**JDBC_OUT, "jdbc": {**JDBC_OUT["jdbc"],
                                             "password_env": "AWS_SECRET_ACCESS_KEY"}}},
            "output.jdbc.password_env: 'AWS_SECRET_ACCESS_KEY' names an environment variable",
        ),
        ({"metrics": {"token_env": "X"}}, "metrics.token_env: 'X'"),
    ],
)  # fmt: skip
def test_a_posted_spec_may_not_redirect_requests_or_name_the_pods_environment(
    client: TestClient, runs: Recorder, change: dict[str, Any], message: str
) -> None:
    """A token holder must not be able to have a job send a Secret's value elsewhere."""
    response = client.post("/jobs", json={**GOOD, **change}, headers=auth())
    assert response.status_code == 403, response.text
    assert message in response.json()["detail"]
    assert runs.created == []


def test_environment_variables_the_release_allows_may_be_named() -> None:
    jdbc = {"url": LAKE, "table": "t", "password_env": "LAKE_DB_PASSWORD"}
    doc = {**GOOD, "output": {"format": "jdbc", "jdbc": jdbc}}
    allowed = frozenset({"LAKE_DB_PASSWORD"})
    check_posted(doc, Policy(allowed_env=allowed, allowed_paths=POLICY.allowed_paths))
    with pytest.raises(SpecError, match=r"trigger.allowedEnv \(listed: none\)"):
        check_posted(doc, POLICY)


def test_the_token_is_read_for_each_request_so_a_rotated_secret_takes_effect(
    runs: Recorder,
) -> None:
    current = {"token": TOKEN}
    client = TestClient(create_app(runs, lambda: current["token"], max_body_bytes=4096))
    assert client.get("/jobs", headers=auth()).status_code == 200
    current["token"] = "rotated-token-abcdef"
    assert client.get("/jobs", headers=auth()).status_code == 401
    assert client.get("/jobs", headers=auth("rotated-token-abcdef")).status_code == 200
    current["token"] = ""  # an unreadable or emptied Secret: no access at all
    assert client.get("/jobs", headers=auth("")).status_code == 401
