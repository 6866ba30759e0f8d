"""The executor pod's metrics proxy: vLLM's /metrics on a pod port, behind a bearer token.

vLLM's OpenAI-compatible API must never leave the pod's loopback: whoever reaches it can
spend the GPU, and vLLM's own --api-key does not cover /metrics. Prometheus, though,
scrapes a pod port. So the chart runs this small server beside vLLM (the `vllm-metrics`
container, with `metrics.enabled`): it listens on a pod port, answers only
`GET /metrics` bearing the token from a Kubernetes Secret, and fetches the answer from
vLLM's /metrics on loopback, passing its status, body and Content-Type through (Prometheus
text or OpenMetrics, as the scraper's Accept header asks). Nothing else of vLLM is
reachable through it.

    python -m spark_vllm.cluster.metrics_proxy --listen 0.0.0.0:9400 \\
        --upstream http://127.0.0.1:8000/metrics --token-env SPARK_VLLM_METRICS_TOKEN

Every request without the token gets 401, whatever its method or path, so nothing is
revealed to a caller without it; with the token, other paths get 404, other methods 405,
and an upstream that cannot be reached or does not answer in time 502.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from spark_vllm.cluster.chart import SIDECAR_PORT

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "0.0.0.0:9400"
DEFAULT_UPSTREAM = f"http://127.0.0.1:{SIDECAR_PORT}/metrics"
DEFAULT_TOKEN_ENV = "SPARK_VLLM_METRICS_TOKEN"  # noqa: S105  # its name, not a token
# Seconds vLLM may take to answer one scrape (Prometheus' own default scrape timeout).
UPSTREAM_TIMEOUT_S = 10.0

_SESSION = web.AppKey("session", ClientSession)


class TokenMissing(Exception):
    """The environment variable that should hold the bearer token is unset or empty."""


def token_from_env(name: str) -> str:
    """The bearer token in the environment variable `name`, without surrounding
    whitespace (a Secret made from a file often ends in a newline; Prometheus trims the
    credentials it reads the same way)."""
    token = os.environ.get(name, "").strip()
    if not token:
        raise TokenMissing(
            f"the environment variable {name} (--token-env) is unset or empty: it must hold "
            "the bearer token scrapers send (on Kubernetes the chart takes it from "
            "metrics.tokenSecret)"
        )
    return token


def make_app(token: str, upstream: str, timeout_s: float = UPSTREAM_TIMEOUT_S) -> web.Application:
    """The proxy: GET /metrics with `Authorization: Bearer <token>` answers what
    `upstream` answers."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def authenticate(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # Runs before the router's own 404 and 405, so those say nothing to a stranger.
        given = request.headers.get("Authorization", "").encode("utf-8", "backslashreplace")
        if not hmac.compare_digest(given, expected):
            return web.Response(
                status=401,
                text="GET /metrics needs the bearer token (Authorization: Bearer ...)\n",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    async def metrics(request: web.Request) -> web.Response:
        # vLLM answers Prometheus text or OpenMetrics as the scraper's Accept asks.
        accept = request.headers.get("Accept")
        headers = {"Accept": accept} if accept else {}
        try:
            async with request.app[_SESSION].get(upstream, headers=headers) as answer:
                body = await answer.read()
                content_type = answer.headers.get("Content-Type")
                status = answer.status
        except (ClientError, TimeoutError) as exc:
            reason = (
                f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError) else str(exc)
            )
            log.warning("metrics proxy: %s did not answer: %s", upstream, reason)
            return web.Response(status=502, text=f"vLLM's metrics did not answer: {reason}\n")
        response = web.Response(status=status, body=body)
        if content_type:
            response.headers["Content-Type"] = content_type
        return response

    async def session(app: web.Application) -> AsyncIterator[None]:
        async with ClientSession(timeout=ClientTimeout(total=timeout_s)) as client:
            app[_SESSION] = client
            yield

    app = web.Application(middlewares=[authenticate])
    app.router.add_get("/metrics", metrics, allow_head=False)
    app.cleanup_ctx.append(session)
    return app


def _listen(value: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets: [::]:9400)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return seconds


def _upstream(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an http(s) URL, e.g. {DEFAULT_UPSTREAM}"
        )
    return value


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spark_vllm.cluster.metrics_proxy",
        description="Serve vLLM's loopback /metrics on a pod port, only to scrapers that "
        "send the bearer token (GET /metrics only).",
    )
    parser.add_argument(
        "--listen",
        type=_listen,
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where to listen (default: {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--upstream",
        type=_upstream,
        default=DEFAULT_UPSTREAM,
        metavar="URL",
        help=f"vLLM's metrics URL, on loopback (default: {DEFAULT_UPSTREAM})",
    )
    parser.add_argument(
        "--token-env",
        default=DEFAULT_TOKEN_ENV,
        metavar="NAME",
        help="environment variable holding the bearer token scrapers must send; the proxy "
        f"refuses to start without it (default: {DEFAULT_TOKEN_ENV})",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=UPSTREAM_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long vLLM may take to answer, else 502 (default: {UPSTREAM_TIMEOUT_S:g})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    try:
        token = token_from_env(args.token_env)
    except TokenMissing as exc:
        cli.error(str(exc))  # exits 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    host, port = args.listen
    log.info(
        "metrics proxy: GET /metrics on %s:%d answers %s (bearer token: $%s)",
        host, port, args.upstream, args.token_env,
    )  # fmt: skip
    web.run_app(
        make_app(token, args.upstream, args.timeout),
        host=host,
        port=port,
        print=None,
        access_log=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
