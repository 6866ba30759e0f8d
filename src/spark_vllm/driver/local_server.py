"""A vLLM server on this machine's loopback, for `make run`, tests and laptops.

On Kubernetes the sidecar container plays this part; here we start
`python -m vllm.entrypoints.openai.api_server` ourselves on a free port, wait until it
is ready, and stop it (its whole process group) on exit, Ctrl-C or failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from spark_vllm.task.client import wait_ready

# Environment defaults that make the CPU build of vLLM start on a small machine.
CPU_ENV_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}
# As the chart's sidecar: vLLM fetches a row's http(s) image URL only from the hosts given
# with --allowed-media-domains (none given: from a host that cannot exist, under the
# reserved .invalid domain), and follows no redirect to another host.
MEDIA_FLAG = "--allowed-media-domains"
NO_REMOTE_MEDIA = "no-remote-media.invalid"
MEDIA_ENV_DEFAULTS = {"VLLM_MEDIA_URL_ALLOW_REDIRECTS": "0"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 20) -> str:
    try:
        with path.open(errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except OSError:
        return ""


def stop_process_group(pgid: int, exited: Callable[[float], bool], grace_s: float = 20.0) -> None:
    """SIGTERM a process group (a process started with start_new_session=True and all it
    spawned); SIGKILL it if `exited(seconds)` says the leader is still there after
    `grace_s`, and once more at the end (vLLM's engine core may outlive its API server)."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        if exited(wait):
            break
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """stop_process_group for a child of this process (reaped as it exits)."""

    def exited(timeout: float) -> bool:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    stop_process_group(proc.pid, exited, grace_s)


class LocalServer:
    """One vLLM OpenAI-compatible server bound to 127.0.0.1."""

    def __init__(
        self,
        model: str,
        served_model_name: str,
        log_path: str | Path,
        port: int | None = None,
        vllm_args: list[str] | None = None,
        ready_timeout_s: float = 600.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.model = model
        self.served_model_name = served_model_name
        self.port = port or free_port()
        self.vllm_args = list(vllm_args or [])
        self.log_path = Path(log_path)
        self.ready_timeout_s = ready_timeout_s
        # Extra environment of the server (e.g. VLLM_ALLOW_RUNTIME_LORA_UPDATING).
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model,
            "--served-model-name",
            self.served_model_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.media_args(),
            *self.vllm_args,
        ]

    def media_args(self) -> list[str]:
        """--allowed-media-domains with no host, unless the vLLM arguments give their own."""
        if any(arg.split("=", 1)[0] == MEDIA_FLAG for arg in self.vllm_args):
            return []
        return [MEDIA_FLAG, NO_REMOTE_MEDIA]

    def _exited(self) -> str | None:
        if self.proc is None or self.proc.poll() is None:
            return None
        return (
            f"the server exited with code {self.proc.returncode}; "
            f"last lines of {self.log_path}:\n{tail(self.log_path)}"
        )

    def launch(self) -> int:
        """Start the server process (its own session) without waiting; return its pid."""
        env = {**CPU_ENV_DEFAULTS, **MEDIA_ENV_DEFAULTS, **os.environ, **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(  # noqa: S603 (our own argv, no shell)
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        return self.proc.pid

    def start(self) -> LocalServer:
        self.launch()
        try:
            wait_ready(
                self.base_url,
                self.served_model_name,
                self.ready_timeout_s,
                poll_s=2.0,
                gone=self._exited,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace_s: float = 20.0) -> None:
        """Stop the server and the engine processes it spawned."""
        if self.proc is not None and self.proc.poll() is None:
            stop_group(self.proc, grace_s)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
