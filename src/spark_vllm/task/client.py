"""The sidecar client: readiness, and requests with retries and the outage gate.

The sidecar is an OpenAI-compatible vLLM server (default http://127.0.0.1:8000/v1).
Ready means GET /health is 200 and GET /v1/models lists the model. The client knows no
kind of request: a kind (see kinds) says where a request goes, what its body is, what
counts as an answer and what the answer holds; the client sends it, retries what may
be cured by trying again, and hands back one Result per row.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiohttp
import orjson

from spark_vllm.errors import SidecarDown, SidecarNotReady
from spark_vllm.request.kinds import Problem, RequestKind
from spark_vllm.request.result import Result
from spark_vllm.task.retry import SERVER_DOWN_STATUS, RetryPolicy, is_transient_status


def read_api_key(env_name: str | None) -> str | None:
    """The API key from the environment variable the job spec names (None: no key)."""
    if env_name is None:
        return None
    key = os.environ.get(env_name)
    if not key:
        raise SidecarNotReady(
            f"endpoint.api_key_env names {env_name!r}, but that environment variable "
            "is not set or empty here; set it (on Kubernetes, from a Secret) or remove api_key_env"
        )
    return key


def server_root(base_url: str) -> str:
    """http://host:port/v1 -> http://host:port (where /health lives)."""
    base = base_url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def describe_url_error(exc: Exception) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, (TimeoutError, OSError)) and "timed out" in str(reason):
        return "timed out"
    return str(reason) or type(reason).__name__


class NotOk(Exception):
    """A GET that did not answer 200; the message says what was seen."""


def get_ok(url: str, api_key: str | None, timeout: float) -> bytes:
    # The spec allows only http:// and https:// base URLs.
    request = urllib.request.Request(url, headers=auth_headers(api_key))  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        raise NotOk(f"GET {url} answered {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise NotOk(f"GET {url}: {describe_url_error(exc)}") from None


def probe(
    base_url: str, model: str, api_key: str | None = None, timeout: float = 5.0
) -> str | None:
    """None when the sidecar is ready, else what was seen, for the error message."""
    models_url = base_url.rstrip("/") + "/models"
    try:
        get_ok(server_root(base_url) + "/health", api_key, timeout)
        body = get_ok(models_url, api_key, timeout)
    except NotOk as exc:
        return str(exc)
    try:
        served = [m["id"] for m in json.loads(body)["data"]]
    except (ValueError, KeyError, TypeError):
        return f"GET {models_url} answered something that is not a model list: {body[:200]!r}"
    if model not in served:
        return f"model {model!r} is not served; {models_url} lists {served}"
    return None


def served_context(
    base_url: str, model: str, api_key: str | None = None, timeout: float = 5.0
) -> int | None:
    """The served model's context in tokens (vLLM's `max_model_len` in GET /v1/models),
    or None when the server does not say (or cannot be asked): never raises."""
    try:
        body = get_ok(base_url.rstrip("/") + "/models", api_key, timeout)
        for entry in json.loads(body)["data"]:
            if entry.get("id") == model and isinstance(entry.get("max_model_len"), int):
                return int(entry["max_model_len"])
    except (NotOk, ValueError, KeyError, TypeError, AttributeError):
        return None
    return None


def wait_ready(
    base_url: str,
    model: str,
    deadline_s: float,
    api_key: str | None = None,
    poll_s: float = 1.0,
    gone: Callable[[], str | None] | None = None,
) -> float:
    """Block until the sidecar is ready; return the seconds waited.

    Raises SidecarNotReady naming the URL and the last thing seen (refused, 503,
    model missing) once `deadline_s` has passed, or at once when `gone()` returns a
    reason (the server process has exited, say).
    """
    start = time.monotonic()
    end = start + deadline_s
    while True:
        seen = probe(base_url, model, api_key, timeout=min(5.0, max(deadline_s, 0.1)))
        now = time.monotonic()
        if seen is None:
            return now - start
        reason = gone() if gone is not None else None
        if reason is not None:
            raise SidecarNotReady(f"vLLM server for {base_url} will not come up: {reason}")
        if now >= end:
            raise SidecarNotReady(
                f"vLLM sidecar at {base_url} was not ready after {deadline_s:g}s; last seen: {seen}"
            )
        time.sleep(min(poll_s, end - now))


def _error_text(body: bytes | str) -> str:
    """vLLM's own error message out of an error body, or the body itself."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:2000]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(data.get("message"), str):
            return str(data["message"])
    return text.strip()[:2000]


def _shown(body: bytes) -> str:
    return body[:500].decode("utf-8", "replace")


def _describe_exception(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "request timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    return f"{type(exc).__name__}: {exc}"


class SidecarClient:
    """Sends requests to the sidecar over one keep-alive connection pool.

    Use inside a running event loop: `async with SidecarClient(...) as c: await c.send(k, p)`.
    """

    def __init__(
        self,
        base_url: str,
        policy: RetryPolicy,
        request_s: float,
        connect_s: float,
        pool_size: int,
        api_key: str | None = None,
        outage_s: float | None = None,
    ) -> None:
        self.root = server_root(base_url)
        self.metrics_url = self.root + "/metrics"
        self.policy = policy
        self.timeout = aiohttp.ClientTimeout(total=request_s, connect=connect_s)
        self.pool_size = pool_size
        self.headers = auth_headers(api_key)
        self.gate = OutageGate(base_url, outage_s, api_key) if outage_s else None
        # Request ids: a random prefix per client and a count, cheaper than a uuid each.
        self._ids = map(f"spark-vllm-{uuid.uuid4().hex[:16]}-{{}}".format, itertools.count())
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SidecarClient:
        connector = aiohttp.TCPConnector(limit=self.pool_size, force_close=False)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self.timeout, headers=self.headers
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch_metrics(self) -> str:
        """The sidecar's Prometheus /metrics text (raises on any failure)."""
        assert self._session is not None, "use SidecarClient as an async context manager"
        timeout = aiohttp.ClientTimeout(total=5)
        async with self._session.get(self.metrics_url, timeout=timeout) as resp:
            resp.raise_for_status()
            return await resp.text()

    async def send(self, kind: RequestKind, payloads: list[Any]) -> list[Result]:
        """One request carrying `payloads` (a row's, or a batch of rows'): one Result per
        payload, in order. Never raises for a row's failure.

        A batch that vLLM refuses as a whole (one input too long, say) is sent again one
        payload at a time, so only the bad rows fail. Raises SidecarDown only when the
        sidecar stays down past the outage budget: that is the task's failure, not the
        row's, and Spark's task retry takes over.
        """
        request_id = next(self._ids)
        shared = Result(request_id=request_id)
        url = self.root + kind.request_url(payloads)
        headers = {"X-Request-Id": request_id, "Content-Type": "application/json"}
        data, text = await self._post(kind.body(payloads), shared, url, headers, kind.check)
        if data is None:
            if len(payloads) > 1 and shared.error is not None and not shared.error_transient:
                singles = await asyncio.gather(*(self.send(kind, [p]) for p in payloads))
                results = [single for (single,) in singles]
                for single in results:  # the shared try counts too
                    single.attempts += shared.attempts
                    single.latency_ms += shared.latency_ms
                return results
            return [replace(shared, values={}) for _ in payloads]
        try:
            parsed = kind.parse(data, len(payloads))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            shared.error = f"unexpected response ({exc!r}): {_shown(text)}"
            return [replace(shared, values={}) for _ in payloads]
        if len(parsed) == 1:
            shared.values = parsed[0]
            return [shared]
        return [replace(shared, values=values) for values in parsed]

    async def _post(
        self,
        body: dict[str, Any],
        result: Result,
        url: str,
        headers: dict[str, str] | None = None,
        check: Callable[[Any], Problem | None] | None = None,
    ) -> tuple[Any, bytes]:
        """POST `body` to `url`, retrying transient failures: (the parsed JSON, its bytes)
        on a 200 that `check` finds no problem with, else (None, the last bytes) with
        `result.error` set. A problem `check` calls transient is retried like a 503.
        Counts attempts and latency; keeps the last status and body."""
        assert self._session is not None, "use SidecarClient as an async context manager"
        start = time.monotonic()
        counted = 0  # tries that count against retries.attempts (not those lost to an outage)
        last = ""
        text = b""
        data_bytes = orjson.dumps(body)
        while True:
            result.attempts += 1
            sent = time.monotonic()
            try:
                async with self._session.post(url, data=data_bytes, headers=headers) as resp:
                    text = await resp.read()
                    result.status, result.body = resp.status, text
                    if resp.status == 200:
                        try:
                            data = orjson.loads(text)
                        except orjson.JSONDecodeError as exc:
                            result.error = f"unexpected response ({exc!r}): {_shown(text)}"
                            break
                        problem = check(data) if check is not None else None
                        if problem is None:
                            result.latency_ms = (time.monotonic() - start) * 1000
                            return data, text
                        # An answer vLLM ended unfinished (abort/error) may come from an
                        # engine on its way down: /health tells.
                        (last, transient), maybe_down = problem, True
                    else:
                        last = f"HTTP {resp.status}: {_error_text(text)}"
                        transient = is_transient_status(resp.status)
                        maybe_down = resp.status in SERVER_DOWN_STATUS
            except (TimeoutError, aiohttp.ClientError) as exc:
                last = _describe_exception(exc)
                transient = maybe_down = True
                result.status = result.body = None
            if not transient:
                result.error = last
                break
            if maybe_down and self.gate is not None and await self.gate.outage_since(sent):
                continue  # the sidecar was down and is back: this try does not count
            counted += 1
            if not self.policy.should_retry(counted):
                result.error = f"gave up after {result.attempts} attempts; last: {last}"
                result.error_transient = True
                break
            await asyncio.sleep(self.policy.delay(counted))
        result.latency_ms = (time.monotonic() - start) * 1000
        return None, text


class OutageGate:
    """Tells a failed request whether the sidecar was down, and waits for it to return.

    On Kubernetes the kubelet restarts a crashed native sidecar; the task's requests in
    flight then fail together. The first to get here checks /health; if the server is
    down, it polls until the server answers again, while the others wait on the lock.
    Requests sent before the recovery are retried without spending their attempts.
    Past `outage_s` of continuous outage, every caller gets SidecarDown.
    """

    def __init__(self, base_url: str, outage_s: float, api_key: str | None) -> None:
        self.health_url = server_root(base_url) + "/health"
        self.outage_s = outage_s
        self.headers = auth_headers(api_key)
        self.recovered_at = float("-inf")
        self.dead: SidecarDown | None = None
        self._lock = asyncio.Lock()
        self._down_s = 0.0  # outages that ended, in seconds
        self._down_since: float | None = None  # the outage going on

    def down_s(self) -> float:
        """Seconds the sidecar has been found down so far (from its first failed health
        check to its first good one), the outage going on included."""
        now = time.monotonic()
        going = now - self._down_since if self._down_since is not None else 0.0
        return self._down_s + going

    async def _healthy(self, session: aiohttp.ClientSession) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=5)
            async with session.get(self.health_url, headers=self.headers, timeout=timeout) as r:
                return r.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def outage_since(self, sent: float, poll_s: float = 0.5) -> bool:
        """True when the sidecar was down after `sent` and is back; False when it is up."""
        async with self._lock:
            if self.dead is not None:
                raise self.dead
            if self.recovered_at > sent:
                return True
            async with aiohttp.ClientSession() as session:
                if await self._healthy(session):
                    return False
                down_at = self._down_since = time.monotonic()
                while not await self._healthy(session):
                    if time.monotonic() - down_at > self.outage_s:
                        self.dead = SidecarDown(
                            f"vLLM sidecar at {self.health_url} has been down for more than "
                            f"{self.outage_s:g}s (timeouts.outage_s); failing the task so "
                            "Spark retries it"
                        )
                        raise self.dead
                    await asyncio.sleep(poll_s)
            self.recovered_at = time.monotonic()
            self._down_s += self.recovered_at - down_at
            self._down_since = None
            return True
