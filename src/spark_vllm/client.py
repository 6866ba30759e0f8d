"""The sidecar client: readiness, and one request per row with retries.

The sidecar is an OpenAI-compatible vLLM server (default http://127.0.0.1:8000/v1).
Ready means GET /health is 200 and GET /v1/models lists the model.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from spark_vllm.retry import SERVER_DOWN_STATUS, RetryPolicy, is_transient_status


class SidecarNotReady(RuntimeError):
    """The sidecar did not become ready before the deadline."""


@dataclass
class Result:
    """The outcome of one row; `error` is None on success."""

    response: str | None = None
    embedding: list[float] | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float = 0.0
    attempts: int = 0
    error: str | None = None
    # The error came from failures that retrying might have cured (not from the row).
    error_transient: bool = field(default=False, repr=False)
    # The last HTTP answer: status and body text (None: no answer), and the request id
    # sent with it (format openai-batch).
    status: int | None = field(default=None, repr=False)
    body: str | None = field(default=None, repr=False)
    request_id: str | None = field(default=None, repr=False)
    line: str | None = field(default=None, repr=False)  # format openai-batch: the output line
    # With sampling.logprobs: [{token, logprob, top_logprobs: [{token, logprob}]}] per token.
    logprobs: list[dict[str, Any]] | None = None


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


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _describe_url_error(exc: Exception) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, (TimeoutError, OSError)) and "timed out" in str(reason):
        return "timed out"
    return str(reason) or type(reason).__name__


class _NotOk(Exception):
    """A GET that did not answer 200; the message says what was seen."""


def _get_ok(url: str, api_key: str | None, timeout: float) -> bytes:
    # The spec allows only http:// and https:// base URLs.
    request = urllib.request.Request(url, headers=_headers(api_key))  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        raise _NotOk(f"GET {url} answered {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _NotOk(f"GET {url}: {_describe_url_error(exc)}") from None


def probe(
    base_url: str, model: str, api_key: str | None = None, timeout: float = 5.0
) -> str | None:
    """None when the sidecar is ready, else what was seen, for the error message."""
    models_url = base_url.rstrip("/") + "/models"
    try:
        _get_ok(server_root(base_url) + "/health", api_key, timeout)
        body = _get_ok(models_url, api_key, timeout)
    except _NotOk as exc:
        return str(exc)
    try:
        served = [m["id"] for m in json.loads(body)["data"]]
    except (ValueError, KeyError, TypeError):
        return f"GET {models_url} answered something that is not a model list: {body[:200]!r}"
    if model not in served:
        return f"model {model!r} is not served; {models_url} lists {served}"
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


def _error_text(body: str) -> str:
    """vLLM's own error message out of an error body, or the body itself."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:2000]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(data.get("message"), str):
            return str(data["message"])
    return body.strip()[:2000]


# finish_reason values with which vLLM ends an answer it did not finish: the request was
# aborted (preempted past recovery, the engine shutting down) or failed in the engine.
# Another try may well succeed, so they are retried like a 503.
UNFINISHED = frozenset({"abort", "error"})

# The kinds of answer the checks below know, by the url a request goes to.
KIND_OF_URL = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}

# A problem with a 200 answer: (what is wrong, whether another try may cure it).
Problem = tuple[str, bool]


def unfinished(data: dict[str, Any]) -> Problem | None:
    """A problem when any choice of a chat or completion answer ended unfinished."""
    choices = data.get("choices")
    for choice in choices if isinstance(choices, list) else []:
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        if reason in UNFINISHED:
            return f"the server ended the answer with finish_reason {reason!r}", True
    return None


def answer_problem(kind: str, data: Any) -> Problem | None:
    """What keeps a 200 answer of a generating task from being a success, or None.

    A success has a first choice whose finish_reason is not abort or error and whose
    text is a string (chat: `message.content`; completion: `text`)."""
    if not isinstance(data, dict):
        return f"the answer is not a JSON object: {str(data)[:200]}", False
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return f"the answer has no choices: {json.dumps(data)[:300]}", False
    problem = unfinished(data)
    if problem is not None:
        return problem
    choice = choices[0]
    if kind == "chat":
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        what = "message.content"
    else:
        text, what = choice.get("text"), "text"
    if not isinstance(text, str):
        return (
            f"the answer has no {what} (finish_reason {choice.get('finish_reason')!r}): "
            f"{json.dumps(choice)[:300]}",
            False,
        )
    return None


def token_logprobs(kind: str, choice: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The answer's tokens with their log-probabilities, one shape for both kinds:
    [{token, logprob, top_logprobs: [{token, logprob}]}]."""
    found = choice.get("logprobs")
    if not isinstance(found, dict):
        return None
    if kind == "chat":
        return [
            {
                "token": item.get("token"),
                "logprob": item.get("logprob"),
                "top_logprobs": [
                    {"token": top.get("token"), "logprob": top.get("logprob")}
                    for top in item.get("top_logprobs") or []
                ],
            }
            for item in found.get("content") or []
        ]
    tokens = found.get("tokens") or []
    values = found.get("token_logprobs") or [None] * len(tokens)
    tops = found.get("top_logprobs") or [None] * len(tokens)
    return [
        {
            "token": token,
            "logprob": value,
            "top_logprobs": [{"token": k, "logprob": v} for k, v in (top or {}).items()],
        }
        for token, value, top in zip(tokens, values, tops, strict=False)
    ]


def _describe_exception(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "request timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    return f"{type(exc).__name__}: {exc}"


class SidecarClient:
    """Sends one request per row to the sidecar over one keep-alive connection pool.

    Use inside a running event loop: `async with SidecarClient(...) as c: await c.call(f)`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        task: str,
        sampling: dict[str, Any],
        policy: RetryPolicy,
        request_timeout_s: float,
        connect_timeout_s: float,
        pool_size: int,
        api_key: str | None = None,
        outage_s: float | None = None,
        logprobs: bool = False,
    ) -> None:
        path = {"chat": "/chat/completions", "completion": "/completions"}.get(task, "/embeddings")
        self.base_url = base_url.rstrip("/")
        self.root = server_root(base_url)
        self.url = self.base_url + path
        self.logprobs = logprobs
        self.metrics_url = server_root(base_url) + "/metrics"
        self.task = task
        self.body = {"model": model, **sampling}
        self.policy = policy
        self.timeout = aiohttp.ClientTimeout(total=request_timeout_s, connect=connect_timeout_s)
        self.pool_size = pool_size
        self.headers = _headers(api_key)
        self.gate = OutageGate(base_url, outage_s, api_key) if outage_s else None
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

    def _check(self, data: Any) -> Problem | None:
        return answer_problem(self.task, data)

    def _parse(self, data: dict[str, Any], result: Result) -> Result:
        """Fill the row's result from an answer `answer_problem` passed."""
        choice = data["choices"][0]
        if self.task == "chat":
            result.response = choice["message"]["content"]
        else:
            result.response = choice["text"]
        result.finish_reason = choice.get("finish_reason")
        usage = data.get("usage") or {}
        result.prompt_tokens = usage.get("prompt_tokens")
        result.completion_tokens = usage.get("completion_tokens")
        if self.logprobs:
            result.logprobs = token_logprobs(self.task, choice)
        return result

    async def call(self, fields: dict[str, Any]) -> Result:
        """One row: POST, retrying transient failures; never raises for a row's failure.

        Raises SidecarDown only when the sidecar stays down past the outage budget: that
        is the task's failure, not the row's, and Spark's task retry takes over.
        """
        result = Result()
        data, _ = await self._post({**self.body, **fields}, result, check=self._check)
        if data is not None:
            self._parse(data, result)
        return result

    async def embed(self, inputs: list[str]) -> list[Result]:
        """Many rows in one /v1/embeddings request: one Result per input, in order.

        vLLM refuses the whole request when one input is bad (too long, say); then each
        input is sent on its own, so only the bad rows fail.
        """
        shared = Result()
        data, text = await self._post({**self.body, "input": inputs}, shared)
        if data is None:
            if len(inputs) > 1 and shared.error is not None and not shared.error_transient:
                singles = await asyncio.gather(*(self._embed_one(x) for x in inputs))
                for single in singles:  # the shared try counts too
                    single.attempts += shared.attempts
                    single.latency_ms += shared.latency_ms
                return list(singles)
            return [replace(shared) for _ in inputs]
        try:
            items = sorted(data["data"], key=lambda item: item["index"])
            vectors = [item["embedding"] for item in items]
            if len(vectors) != len(inputs):
                raise ValueError(f"{len(vectors)} vectors for {len(inputs)} inputs")
        except (ValueError, KeyError, TypeError) as exc:
            shared.error = f"unexpected response ({exc!r}): {text[:500]}"
            return [replace(shared) for _ in inputs]
        return [replace(shared, embedding=vector) for vector in vectors]

    async def call_raw(self, url: str, body: dict[str, Any]) -> Result:
        """One request body as it is (format openai-batch) to `url` under the server's
        root: the answer's status and text are kept, whatever they are. A chat or
        completion answer that ended unfinished (abort, error) is retried, then failed."""
        request_id = f"spark-vllm-{uuid.uuid4().hex}"
        result = Result(request_id=request_id)
        headers = {"X-Request-Id": request_id}
        check = unfinished if url in KIND_OF_URL else None
        await self._post({**self.body, **body}, result, self.root + url, headers, check)
        return result

    async def _embed_one(self, text: str) -> Result:
        (result,) = await self.embed([text])
        return result

    async def _post(
        self,
        body: dict[str, Any],
        result: Result,
        url: str | None = None,
        headers: dict[str, str] | None = None,
        check: Callable[[Any], Problem | None] | None = None,
    ) -> tuple[Any, str]:
        """POST `body` to `url` (default: the task's endpoint), retrying transient
        failures: (the parsed JSON, its text) on a 200 that `check` finds no problem
        with, else (None, the last text) with `result.error` set. A problem `check`
        calls transient is retried like a 503. Counts attempts and latency; keeps the
        last status and text."""
        assert self._session is not None, "use SidecarClient as an async context manager"
        url = url or self.url
        start = time.monotonic()
        counted = 0  # tries that count against retries.attempts (not those lost to an outage)
        last = text = ""
        while True:
            result.attempts += 1
            sent = time.monotonic()
            try:
                async with self._session.post(url, json=body, headers=headers) as resp:
                    text = await resp.text()
                    result.status, result.body = resp.status, text
                    if resp.status == 200:
                        try:
                            data = json.loads(text)
                        except ValueError as exc:
                            result.error = f"unexpected response ({exc!r}): {text[:500]}"
                            break
                        problem = check(data) if check is not None else None
                        if problem is None:
                            result.latency_ms = (time.monotonic() - start) * 1000
                            return data, text
                        (last, transient), maybe_down = problem, False
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


class SidecarDown(RuntimeError):
    """The sidecar went down mid-task and did not come back within the outage budget."""


class OutageGate:
    """Tells a failed request whether the sidecar was down, and waits for it to return.

    On Kubernetes the kubelet restarts a crashed native sidecar; the task's requests in
    flight then fail together. The first to get here checks /health; if the server is
    down, it polls until the server answers again, while the others wait on the lock.
    Requests sent before the recovery are retried without spending their attempts.
    Past `budget_s` of continuous outage, every caller gets SidecarDown.
    """

    def __init__(self, base_url: str, budget_s: float, api_key: str | None) -> None:
        self.health_url = server_root(base_url) + "/health"
        self.budget_s = budget_s
        self.headers = _headers(api_key)
        self.recovered_at = float("-inf")
        self.dead: SidecarDown | None = None
        self._lock = asyncio.Lock()

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
                down_at = time.monotonic()
                while not await self._healthy(session):
                    if time.monotonic() - down_at > self.budget_s:
                        self.dead = SidecarDown(
                            f"vLLM sidecar at {self.health_url} has been down for more than "
                            f"{self.budget_s:g}s (timeouts.outage_s); failing the task so "
                            "Spark retries it"
                        )
                        raise self.dead
                    await asyncio.sleep(poll_s)
            self.recovered_at = time.monotonic()
            return True
