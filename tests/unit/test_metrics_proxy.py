"""The executor pod's metrics proxy: only GET /metrics with the token, vLLM's answer as is.

Real aiohttp servers on loopback ephemeral ports on both sides. A small upstream app
serving a canned Prometheus exposition stands in for vLLM's /metrics here: the proxy only
passes bytes, status and Content-Type through, which needs no model.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from spark_vllm.cluster.metrics_proxy import TokenMissing, make_app, token_from_env
from spark_vllm.driver.local_server import free_port  # internal: a port nobody listens on

pytestmark = pytest.mark.unit

TOKEN = "s3cret-token"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
CANNED = (
    b"# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
    b"# TYPE vllm:num_requests_running gauge\n"
    b'vllm:num_requests_running{model_name="tiny-llama"} 3.0\n'
)


def fake_vllm(
    seen: list[dict[str, str]], delay_s: float = 0.0, status: int = 200
) -> web.Application:
    """vLLM's /metrics as far as the proxy sees it: OpenMetrics when the Accept header asks
    for it, else Prometheus text; records the headers of every request."""

    async def metrics(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        await asyncio.sleep(delay_s)
        wants_openmetrics = "application/openmetrics-text" in request.headers.get("Accept", "")
        body = CANNED + (b"# EOF\n" if wants_openmetrics else b"")
        answer = web.Response(status=status, body=body)
        answer.headers["Content-Type"] = OPENMETRICS if wants_openmetrics else PROMETHEUS_TEXT
        return answer

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """`app` on 127.0.0.1 at an ephemeral port; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def ask(
    url: str, method: str = "GET", token: str | None = TOKEN, accept: str | None = None
) -> tuple[int, str, str]:
    """(status, Content-Type, body) of one request; token None: no Authorization header."""
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if accept is not None:
        headers["Accept"] = accept
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers) as answer,
    ):
        return answer.status, answer.headers.get("Content-Type", ""), await answer.text()


def with_proxy(
    check: Callable[[str, list[dict[str, str]]], Awaitable[None]], **upstream: Any
) -> None:
    """Run `check(proxy_url, upstream_requests)` against a proxy in front of fake vLLM."""

    async def run() -> None:
        seen: list[dict[str, str]] = []
        async with (
            serving(fake_vllm(seen, **upstream)) as vllm,
            serving(make_app(TOKEN, f"{vllm}/metrics", timeout_s=0.5)) as proxy,
        ):
            await check(proxy, seen)

    asyncio.run(run())


def test_good_token_gets_vllms_metrics_and_content_type() -> None:
    async def check(proxy: str, seen: list[dict[str, str]]) -> None:
        status, content_type, body = await ask(f"{proxy}/metrics")
        assert (status, content_type, body) == (200, PROMETHEUS_TEXT, CANNED.decode())
        accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        status, content_type, body = await ask(f"{proxy}/metrics", accept=accept)
        assert (status, content_type) == (200, OPENMETRICS)
        assert body.endswith("# EOF\n")
        assert seen[1]["Accept"] == accept

    with_proxy(check)


def test_the_token_is_not_passed_to_vllm() -> None:
    async def check(proxy: str, seen: list[dict[str, str]]) -> None:
        assert (await ask(f"{proxy}/metrics"))[0] == 200
        assert "Authorization" not in seen[0]

    with_proxy(check)


def test_vllms_own_status_passes_through() -> None:
    async def check(proxy: str, seen: list[dict[str, str]]) -> None:
        assert (await ask(f"{proxy}/metrics"))[0] == 503

    with_proxy(check, status=503)


@pytest.mark.parametrize("token", [None, "wrong", f"{TOKEN}x", TOKEN[:-1], ""])
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/metrics"), ("GET", "/v1/models"), ("GET", "/"), ("POST", "/v1/completions")],
)
def test_missing_or_wrong_token_is_refused_everywhere(
    token: str | None, method: str, path: str
) -> None:
    async def check(proxy: str, seen: list[dict[str, str]]) -> None:
        status, _, body = await ask(f"{proxy}{path}", method=method, token=token)
        assert status == 401
        assert "vllm" not in body.lower()
        assert not seen, "vLLM was asked for an unauthenticated request"

    with_proxy(check)


@pytest.mark.parametrize("path", ["/v1/models", "/health", "/", "/metrics/x"])
def test_other_paths_are_not_found(path: str) -> None:
    async def check(proxy: str, seen: list[dict[str, str]]) -> None:
        assert (await ask(f"{proxy}{path}"))[0] == 404
        assert not seen

    with_proxy(check)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD"])
def test_other_methods_are_not_allowed(method: str) -> None:
    async def check(proxy: str, seen: list[dict[str, str]]) -> None:
        assert (await ask(f"{proxy}/metrics", method=method))[0] == 405
        assert not seen

    with_proxy(check)


def test_unreachable_vllm_is_a_bad_gateway() -> None:
    async def run() -> None:
        nobody = f"http://127.0.0.1:{free_port()}/metrics"
        async with serving(make_app(TOKEN, nobody, timeout_s=2)) as proxy:
            status, content_type, body = await ask(f"{proxy}/metrics")
            assert status == 502
            assert content_type.startswith("text/plain")
            assert "did not answer" in body

    asyncio.run(run())


def test_vllm_too_slow_to_answer_is_a_bad_gateway() -> None:
    async def check(proxy: str, seen: list[dict[str, str]]) -> None:
        status, _, body = await ask(f"{proxy}/metrics")
        assert status == 502
        assert "no answer within 0.5 s" in body

    with_proxy(check, delay_s=2.0)


def test_token_comes_from_the_named_variable_trimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRAPE_TOKEN", f"  {TOKEN}\n")
    assert token_from_env("SCRAPE_TOKEN") == TOKEN


@pytest.mark.parametrize("value", [None, "", " \n"])
def test_no_token_no_start(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("SCRAPE_TOKEN", raising=False)
    else:
        monkeypatch.setenv("SCRAPE_TOKEN", value)
    with pytest.raises(TokenMissing, match="SCRAPE_TOKEN"):
        token_from_env("SCRAPE_TOKEN")


def test_the_command_refuses_to_start_naming_the_variable() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SPARK_VLLM_METRICS_TOKEN"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "spark_vllm.cluster.metrics_proxy",
            "--listen",
            f"127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "SPARK_VLLM_METRICS_TOKEN" in result.stderr
    assert "unset or empty" in result.stderr


def test_help_names_every_option_and_its_default() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spark_vllm.cluster.metrics_proxy", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for text in (
        "--listen",
        "0.0.0.0:9400",
        "--upstream",
        "http://127.0.0.1:8000/metrics",
        "--token-env",
        "SPARK_VLLM_METRICS_TOKEN",
        "--timeout",
    ):
        assert text in result.stdout


def test_the_command_serves_vllms_metrics_with_the_token() -> None:
    """`python -m spark_vllm.cluster.metrics_proxy` as the chart runs it, end to end."""

    async def run() -> None:
        seen: list[dict[str, str]] = []
        async with serving(fake_vllm(seen)) as vllm:
            port = free_port()
            proxy = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "spark_vllm.cluster.metrics_proxy",
                "--listen",
                f"127.0.0.1:{port}",
                "--upstream",
                f"{vllm}/metrics",
                "--token-env",
                "SCRAPE_TOKEN",
                env={**os.environ, "SCRAPE_TOKEN": TOKEN},
            )
            try:
                for _ in range(200):
                    try:
                        answer = await ask(f"http://127.0.0.1:{port}/metrics")
                        break
                    except aiohttp.ClientConnectorError:
                        await asyncio.sleep(0.05)
                else:
                    pytest.fail("the proxy never listened")
                assert answer == (200, PROMETHEUS_TEXT, CANNED.decode())
                assert (await ask(f"http://127.0.0.1:{port}/metrics", token="wrong"))[0] == 401
            finally:
                proxy.terminate()
                try:
                    await asyncio.wait_for(proxy.wait(), 10)
                except TimeoutError:
                    proxy.kill()
                    await proxy.wait()
                    pytest.fail("the proxy did not stop on SIGTERM")

    asyncio.run(run())
