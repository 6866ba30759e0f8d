"""A fault-injecting HTTP proxy for the fault tests, between the job and the real vLLM.

It forwards every request to vLLM unchanged, except that it can reset a share of the
POST connections (a TCP RST, as from a crashing peer), answer bursts of 503 or 429 in
vLLM's own error format, play a dead engine while `engine_dead` is set (every POST answered
500 with vLLM's EngineDeadError message and /health 503, as vLLM answers between its engine
process dying and its API server exiting), and turn the first N answers into ones that vLLM ended
unfinished (HTTP 200, empty text, finish_reason "abort", as when a request is aborted). A real
vLLM cannot be made to do any of these on cue; everything
else the job sees is the real server's answer. It runs on its own thread and loop on a
free loopback port, and counts what it did so tests can wait for the job's progress.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import threading
from dataclasses import dataclass

from aiohttp import ClientSession, ClientTimeout, web

from spark_vllm.task.client import server_root  # internal helper: base URL -> server root

# vLLM's EngineDeadError text (vllm/v1/engine/exceptions.py), as its API server sends it.
ENGINE_DEAD_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."


@dataclass
class Faults:
    reset_rate: float = 0.0  # share of POSTs whose connection is reset before forwarding
    burst_status: int = 503  # status of the burst answers
    burst_every: int = 0  # every Nth POST starts a burst (0: no bursts)
    burst_length: int = 0  # POSTs answered with burst_status in each burst
    unfinished_first: int = 0  # the first N POSTs' answers end with finish_reason below
    unfinished_reason: str = "abort"
    seed: int = 0


class FaultProxy:
    def __init__(self, upstream: str, faults: Faults | None = None) -> None:
        self.upstream = server_root(upstream)
        self.faults = faults or Faults()
        self.rng = random.Random(self.faults.seed)
        self.posts = 0
        self.bodies: list[bytes] = []  # every POST's body, as it came
        self.forwarded = 0
        # POSTs vLLM answered with success: requests of the job's tasks, not the /health,
        # /v1/models and /metrics GETs that `forwarded` also counts (the adaptive window
        # polls /metrics from before a task sends anything).
        self.answered_posts = 0
        self.resets = 0
        self.bursts = 0
        self.unfinished = 0
        self.engine_dead = False  # set and cleared by the test, from its own thread
        self.dead_answers = 0
        self._burst_left = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        self._session = ClientSession(timeout=ClientTimeout(total=600))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _fault_for_post(self) -> str | None:
        self.posts += 1
        f = self.faults
        if self._burst_left > 0:
            self._burst_left -= 1
            return "burst"
        if f.burst_every and self.posts % f.burst_every == 0:
            self.bursts += 1
            self._burst_left = f.burst_length - 1
            return "burst"
        if f.reset_rate and self.rng.random() < f.reset_rate:
            return "reset"
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.engine_dead:
            if request.method == "GET" and request.path == "/health":
                return web.Response(status=503)
            if request.method == "POST":
                self.dead_answers += 1
                error = {"message": ENGINE_DEAD_MESSAGE, "type": "InternalServerError", "code": 500}
                return web.Response(status=500, text=json.dumps({"error": error}))
        if request.method == "POST":
            self.bodies.append(body)
        fault = self._fault_for_post() if request.method == "POST" else None
        number = self.posts  # this POST's place, before others arrive meanwhile
        if fault == "reset":
            self.resets += 1
            transport = request.transport
            assert transport is not None
            sock = transport.get_extra_info("socket")
            # SO_LINGER 0: close() sends RST, which the client sees as "connection reset".
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            raise asyncio.CancelledError
        if fault == "burst":
            status = self.faults.burst_status
            message = {"error": {"message": f"injected {status}", "code": status}}
            return web.Response(status=status, text=json.dumps(message))
        assert self._session is not None
        url = self.upstream + request.path_qs
        try:
            async with self._session.request(
                request.method, url, data=body, headers={"Content-Type": "application/json"}
            ) as upstream:
                payload = await upstream.read()
                self.forwarded += 1
                if request.method == "POST" and upstream.status < 400:
                    self.answered_posts += 1
                if request.method == "POST" and number <= self.faults.unfinished_first:
                    payload = self._unfinished(payload)
                return web.Response(
                    status=upstream.status,
                    body=payload,
                    content_type=upstream.content_type,
                )
        except OSError:
            # vLLM is down: what a reverse proxy would say.
            return web.Response(status=502, text='{"error": {"message": "upstream down"}}')

    def _unfinished(self, payload: bytes) -> bytes:
        """The real answer, ended as vLLM ends a request it aborted: no text."""
        data = json.loads(payload)
        for choice in data.get("choices", []):
            choice["finish_reason"] = self.faults.unfinished_reason
            if "message" in choice:
                choice["message"]["content"] = ""
            else:
                choice["text"] = ""
        self.unfinished += 1
        return json.dumps(data).encode()
