"""What a trigger token holder can make a job do (issue 27): a posted spec is a job, not a
cluster configuration. Each test is an attack that today's trigger let through: Spark
settings that place pods, mount Secrets or load code; paths outside the release's; JDBC
drivers; bodies that freeze the event loop; unauthenticated probes answered before the
token; runs without a cap. The driver's own guard (the chart's env var) is here too."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from spark_vllm import cli
from spark_vllm.cluster import trigger
from spark_vllm.cluster.trigger import (
    Policy,
    RunError,
    check_posted,
    check_rendered,
    create_app,
    location_allowed,
    parse_body,
)
from spark_vllm.errors import SpecError
from spark_vllm.spec import spec_from_dict

from .test_trigger import GOOD, LAKE, POLICY, TOKEN, Recorder, auth

pytestmark = pytest.mark.unit


@pytest.fixture
def runs() -> Recorder:
    return Recorder()


def client_for(runs: Recorder, policy: Policy = POLICY, max_running: int = 0) -> TestClient:
    return TestClient(create_app(runs, TOKEN, 4096, policy=policy, max_running=max_running))


# The issue's examples: each a valid spec on today's trigger.
HOSTILE_CONF = [
    "spark.kubernetes.executor.container.image",
    "spark.kubernetes.executor.secrets.db-password",
    "spark.kubernetes.executor.secretKeyRef.TOKEN",
    "spark.kubernetes.driver.master",
    "spark.hadoop.fs.s3a.access.key",
    "spark.jars",
    "spark.plugins",
    "spark.executor.extraJavaOptions",
    "spark.sql.shuffle.partitions",  # harmless, but not listed: refused as well
]


@pytest.mark.parametrize("key", HOSTILE_CONF)
def test_a_posted_spark_conf_key_the_release_does_not_list_is_403_naming_it(
    runs: Recorder, key: str
) -> None:
    doc = {**GOOD, "spark": {"conf": {key: "x"}}}
    response = client_for(runs).post("/jobs", json=doc, headers=auth())
    assert response.status_code == 403, response.text
    detail = response.json()["detail"]
    assert f"spark.conf.{key}:" in detail
    assert "trigger.allowedSparkConf (listed: none)" in detail
    assert runs.created == []


def test_a_posted_spark_master_is_403_whatever_the_release_lists(runs: Recorder) -> None:
    policy = Policy(allowed_paths=POLICY.allowed_paths, allowed_spark_conf=("spark.",))
    doc = {**GOOD, "spark": {"master": "local[1]"}}
    response = client_for(runs, policy).post("/jobs", json=doc, headers=auth())
    assert response.status_code == 403
    assert response.json()["detail"].startswith("spark.master: ")


def test_spark_conf_the_release_lists_exactly_or_by_prefix_is_accepted() -> None:
    policy = Policy(
        allowed_paths=("/data/",),
        allowed_spark_conf=("spark.sql.", "spark.task.maxFailures"),
    )
    conf = {"spark.sql.shuffle.partitions": "8", "spark.task.maxFailures": "2"}
    check_posted({**GOOD, "spark": {"conf": conf}}, policy)
    for key in ("spark.sqlx.a", "spark.task.maxFailuresX", "spark.task.cpus"):
        with pytest.raises(SpecError, match=f"spark.conf.{key}:"):
            check_posted({**GOOD, "spark": {"conf": {key: "1"}}}, policy)


TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"


@pytest.mark.parametrize(
    "path",
    [
        TOKEN_FILE,
        f"file://{TOKEN_FILE}",
        f"/data/input/../../{TOKEN_FILE[1:]}",
        "/data/./../etc/passwd",
        "/datax/input",
        "data/input/questions.jsonl",
        "../data/input",
        "/data/{input,../../etc}/x",
        "/data/%2e%2e/etc/passwd",
        "/data\\..\\etc",
        "s3a://other-bucket/jobs/x",
        "s3a://bucket/jobs/../private/x",
        "s3a://bucket/jobsx/a",
        "s3a:///jobs/a",
        "hdfs://namenode/jobs/a",
    ],
)
def test_a_path_outside_the_allowed_prefixes_is_refused_however_spelt(path: str) -> None:
    allowed = ("/data/", "s3a://bucket/jobs/")
    assert not location_allowed(path, allowed)
    for side in ("input", "output"):
        doc = {**GOOD, side: {**GOOD[side], "path": path}}
        with pytest.raises(SpecError, match=rf"{side}.path: .* trigger.allowedPaths"):
            check_posted(doc, Policy(allowed_paths=allowed))


@pytest.mark.parametrize(
    "path",
    [
        "/data/input/questions.jsonl",
        "/data",
        "file:///data/input/",
        "/data/input/../output",
        "//data//input",
        "s3a://bucket/jobs/run-1/part-*.parquet",
        "S3A://bucket/jobs/a",
    ],
)
def test_a_path_under_an_allowed_prefix_is_accepted(path: str) -> None:
    assert location_allowed(path, ("/data/", "s3a://bucket/jobs"))


def test_no_allowed_paths_refuses_every_path_and_says_what_to_set(runs: Recorder) -> None:
    response = client_for(runs, Policy()).post("/jobs", json=GOOD, headers=auth())
    assert response.status_code == 403
    assert "input.path: '/data/input/questions.jsonl' is not under" in response.json()["detail"]
    assert "trigger.allowedPaths (listed: none)" in response.json()["detail"]


@pytest.mark.parametrize(
    ("jdbc", "message"),
    [
        ({"url": LAKE, "table": "t", "driver": "org.h2.Driver"}, "output.jdbc.driver: "),
        ({"url": LAKE, "table": "t", "properties": {"socketFactory": "x"}},
         "output.jdbc.properties: "),
        ({"url": "jdbc:postgresql://evil.example.net/db", "table": "t"},
         "output.jdbc.url: 'jdbc:postgresql://evil.example.net/db' is not a JDBC URL"),
        ({"url": LAKE + "?socketFactory=x", "table": "t"}, "output.jdbc.url: "),
    ],
)  # fmt: skip
def test_a_posted_spec_may_not_choose_a_jdbc_driver_properties_or_host(
    runs: Recorder, jdbc: dict[str, Any], message: str
) -> None:
    doc = {**GOOD, "output": {"format": "jdbc", "jdbc": jdbc}}
    response = client_for(runs).post("/jobs", json=doc, headers=auth())
    assert response.status_code == 403, response.text
    assert message in response.json()["detail"]


def test_a_catalog_table_needs_listing() -> None:
    doc = {**GOOD, "input": {"format": "table", "table": "lake.questions", "id_column": "id"}}
    with pytest.raises(SpecError, match="input.table: 'lake.questions' is a catalog table"):
        check_posted(doc, POLICY)
    check_posted(doc, Policy(allowed_paths=("/data/", "table:lake.")))
    check_posted(doc, Policy(allowed_paths=("/data/", "table:lake.questions")))


ALIAS_BOMB = b'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + b"".join(
    f"{n}: &{n} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n".encode()
    for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_yaml_aliases_are_refused_before_they_expand(runs: Recorder) -> None:
    client = client_for(runs)
    started = time.monotonic()
    response = client.post(
        "/jobs", content=ALIAS_BOMB, headers={**auth(), "Content-Type": "application/yaml"}
    )
    assert time.monotonic() - started < 1
    assert response.status_code == 400
    assert "aliases (*name) are not accepted" in response.json()["detail"]
    merged = b"base: &b {format: jsonl}\ninput: {<<: *b, path: /data/x}\n"
    with pytest.raises(SpecError, match="aliases"):
        parse_body(merged, "application/yaml")


def nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for _ in range(depth - 1):
        doc = {"a": doc}
    return doc


@pytest.mark.parametrize("depth", [33, 5000])
def test_bodies_nested_deeper_than_32_are_400_as_json_or_yaml(runs: Recorder, depth: int) -> None:
    client = TestClient(create_app(runs, TOKEN, 1 << 20, policy=POLICY))
    text = "[" * depth + "]" * depth
    for kind in ("application/json", "application/yaml"):
        body = ('{"input": ' + text + "}").encode()
        response = client.post("/jobs", content=body, headers={**auth(), "Content-Type": kind})
        assert response.status_code == 400, (kind, response.text)
        assert "nested more than 32 deep" in response.json()["detail"]
    assert parse_body(json.dumps(nested(32)).encode(), "application/json")


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b'{"sampling": {"temperature": NaN}}', "application/json"),
        (b'{"sampling": {"temperature": Infinity}}', "application/json"),
        (b'{"sampling": {"temperature": -Infinity}}', "application/json"),
        (b'{"sampling": {"temperature": 1e999}}', "application/json"),
        (b"sampling: {temperature: .nan}", "application/yaml"),
        (b"sampling: {temperature: -.inf}", "application/yaml"),
    ],
)
def test_nan_and_infinities_are_refused(body: bytes, kind: str) -> None:
    with pytest.raises(SpecError, match="not a number a job spec takes"):
        parse_body(body, kind)


def test_control_characters_and_non_string_keys_are_refused() -> None:
    for text in ("a\x00b", "a\x85b", "a\x1bb", "a\x7fb"):
        with pytest.raises(SpecError, match="control character"):
            parse_body(json.dumps({"prompt": {"template": text}}).encode(), "application/json")
    with pytest.raises(SpecError, match="the key 1 is not a string"):
        parse_body(b"prompt: {1: x}", "application/yaml")
    # Line separators are text: the chart carries them (tests/bundle/test_trigger.py).
    assert parse_body(json.dumps({"t": "a\u2028b\u2029c"}).encode(), "")["t"] == "a\u2028b\u2029c"


def test_parsing_runs_off_the_event_loop(runs: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    real = trigger.parse_body

    def recording(body: bytes, content_type: str) -> dict[str, Any]:
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:  # no loop in this thread: a worker's
            seen.append(False)
        return real(body, content_type)

    monkeypatch.setattr(trigger, "parse_body", recording)
    assert client_for(runs).post("/jobs", json=GOOD, headers=auth()).status_code == 202
    assert seen == [False]


def test_runs_beyond_max_running_are_429_until_one_ends(runs: Recorder) -> None:
    client = client_for(runs, max_running=1)
    assert client.post("/jobs", json=GOOD, headers=auth()).status_code == 202
    response = client.post("/jobs", json=GOOD, headers=auth())
    assert response.status_code == 429
    assert "trigger.maxRunning 1" in response.json()["detail"]
    assert response.headers["retry-after"]
    assert len(runs.created) == 1
    assert client.delete("/jobs/jobs-00000001", headers=auth()).status_code == 202
    assert client.post("/jobs", json=GOOD, headers=auth()).status_code == 202


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("post", "/jobs", {"Content-Length": "99999999"}),
        ("post", "/jobs", {"Content-Length": "not-a-number"}),
        ("get", "/no-such-path", {}),
        ("put", "/jobs", {}),
        ("get", "/openapi.json", {}),
        ("get", "/jobs/..%2f..%2fetc", {}),
    ],
)
def test_the_token_is_checked_before_anything_else_is_answered(
    runs: Recorder, method: str, path: str, headers: dict[str, str]
) -> None:
    client = client_for(runs)
    for given in ({}, auth("wrong")):
        response = client.request(method, path, headers={**headers, **given})
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.headers["www-authenticate"] == "Bearer"


def test_the_spec_read_back_from_the_rendered_configmap_must_be_the_posted_one() -> None:
    filled = {
        **GOOD,
        "endpoint": {"base_url": "http://127.0.0.1:8000/v1", "model": "m"},
        "metrics": {"enabled": True, "token_env": "SPARK_VLLM_METRICS_TOKEN"},
        "progress": {"port": 4041},
    }

    def objects(spec: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"kind": "ConfigMap", "data": {"job.yaml": yaml.safe_dump(spec)}}]

    check_rendered(GOOD, objects(filled))
    check_rendered({**GOOD, "progress": {"enabled": False}}, objects(
        {**filled, "progress": {"enabled": False, "port": 4041}}))  # fmt: skip
    for changed in (
        {**filled, "prompt": {"template": "{{ secret }}"}},
        {**filled, "spark": {"master": "k8s://https://evil"}},
        {**filled, "on_error": "fail"},
    ):
        with pytest.raises(RunError, match="differs from the spec posted") as refused:
            check_rendered(GOOD, objects(changed))
        assert refused.value.status == 400


# The driver's own guard, when the chart starts it.

MOUNTED = {**GOOD, "endpoint": {"model": "m"}}

GUARDED = [
    {"conf": {"spark.kubernetes.executor.secrets.db": "/mnt"}},
    {"conf": {"spark.driver.extraJavaOptions": "-javaagent:/x"}},
    {"conf": {"spark.executor.extraClassPath": "/x"}},
    {"conf": {"spark.jars.packages": "org.evil:x:1"}},
    {"conf": {"spark.plugins": "org.evil.Plugin"}},
    {"conf": {"spark.hadoop.fs.s3a.access.key": "${env.AWS_SECRET_ACCESS_KEY}"}},
    {"master": "k8s://https://evil.example.net"},
]


@pytest.mark.parametrize("spark", GUARDED)
def test_the_charts_driver_refuses_guarded_spark_conf_unless_the_values_allow_it(
    spark: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = spec_from_dict({**MOUNTED, "spark": spark})
    monkeypatch.delenv(cli.CHART_CONF_ENV, raising=False)
    cli.check_chart_conf(spec)  # `make run`: the user's own settings
    monkeypatch.setenv(cli.CHART_CONF_ENV, "[]")
    key = next(iter(spark.get("conf", {})), "spark.master")
    with pytest.raises(SpecError, match=r"jobSparkConfAllowed \(listed: none\)") as refused:
        cli.check_chart_conf(spec)
    assert str(refused.value).startswith(
        "spark.master:" if key == "spark.master" else f"spark.conf.{key}:"
    )
    prefix = key.rsplit(".", 1)[0] + "."
    monkeypatch.setenv(cli.CHART_CONF_ENV, json.dumps(["spark.sql.shuffle.partitions", key]))
    cli.check_chart_conf(spec)
    if key != "spark.master":
        monkeypatch.setenv(cli.CHART_CONF_ENV, json.dumps([prefix]))
        cli.check_chart_conf(spec)


def test_the_charts_driver_takes_other_spark_conf_and_exits_2_on_a_guarded_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(cli.CHART_CONF_ENV, "[]")
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({**MOUNTED, "spark": {"conf": {"spark.sql.x": "1"}}}))
    cli.check_chart_conf(spec_from_dict(yaml.safe_load(spec.read_text())))
    spec.write_text(yaml.safe_dump({**MOUNTED, "spark": {"conf": {"spark.jars": "/x.jar"}}}))
    assert cli.main(["validate", str(spec)]) == 2
    assert "spark.conf.spark.jars: the chart's driver takes no" in capsys.readouterr().err


def test_with_the_token_an_unknown_path_is_404_and_a_large_body_413(runs: Recorder) -> None:
    client = client_for(runs)
    assert client.get("/no-such-path", headers=auth()).status_code == 404
    headers = {**auth(), "Content-Length": "99999999"}
    assert client.post("/jobs", headers=headers).status_code == 413


@pytest.mark.parametrize("value", ["", "spark.sql.", '{"a": 1}', "[1]"])
def test_the_charts_guard_refuses_a_value_that_is_not_a_json_list_naming_it(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cli.CHART_CONF_ENV, value)
    with pytest.raises(SpecError, match=r"SPARK_VLLM_JOB_SPARK_CONF_ALLOWED: expected a JSON list"):
        cli.check_chart_conf(spec_from_dict(MOUNTED))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"prompt": {"template": "{{ question }}", "image_prefixes": ["/var/run/secrets/"]}},
         "prompt.image_prefixes[0]: '/var/run/secrets/' is not under"),
        ({"prompt": {"template": "{{ question }}", "image_prefixes": ["/data/../etc/"]}},
         "prompt.image_prefixes[0]: '/data/../etc/' is not under"),
        ({"lora": {"adapter": "evil", "modules": {"evil": "/root/.cache/adapter"}}},
         "lora.modules.evil: '/root/.cache/adapter' is not under"),
        ({"lora": {"adapter": "evil", "modules": {"evil": "someone/their-adapter"}}},
         "lora.modules.evil: 'someone/their-adapter' is not under"),
    ],
)  # fmt: skip
def test_image_prefixes_and_lora_modules_are_paths_the_release_must_allow(
    runs: Recorder, extra: dict[str, Any], message: str
) -> None:
    doc = {**GOOD, **extra}
    response = client_for(runs).post("/jobs", json=doc, headers=auth())
    assert response.status_code == 403, response.text
    assert message in response.json()["detail"]
    assert "trigger.allowedPaths (listed: /data/, " in response.json()["detail"]
    assert runs.created == []


def test_image_prefixes_and_lora_modules_under_allowed_paths_pass() -> None:
    check_posted(
        {
            **GOOD,
            "prompt": {"template": "{{ question }}", "image_prefixes": ["/data/images/"]},
            "lora": {"adapter": "a", "modules": {"a": "/data/adapters/a"}},
        },
        POLICY,
    )


def test_a_refused_location_does_not_echo_its_password(runs: Recorder) -> None:
    url = "jdbc:postgresql://evil.example.net/db?user=me&password=hunter2"
    doc = {**GOOD, "output": {"format": "jdbc", "jdbc": {"url": url, "table": "t"}}}
    response = client_for(runs).post("/jobs", json=doc, headers=auth())
    assert response.status_code == 403, response.text
    assert "hunter2" not in response.text
    assert "output.jdbc.url: " in response.json()["detail"]
    doc = {**GOOD, "input": {**GOOD["input"], "path": "s3a://key:hunter2@bucket/in.jsonl"}}
    response = client_for(runs).post("/jobs", json=doc, headers=auth())
    assert response.status_code == 403, response.text
    assert "hunter2" not in response.text


def test_a_posted_csv_input_naming_the_pods_token_file_is_403(runs: Recorder) -> None:
    """The issue's token-reading attack, as the cluster tier also posts it: a CSV input
    naming the ServiceAccount token file is outside trigger.allowedPaths."""
    token_file = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    doc = {**GOOD, "input": {**GOOD["input"], "format": "csv", "path": token_file}}
    response = client_for(runs).post("/jobs", json=doc, headers=auth())
    assert response.status_code == 403, response.text
    assert response.json()["detail"].startswith(f"input.path: '{token_file}' is not under")
    assert runs.created == []
