"""One vLLM server per executor, for Spark clusters without sidecars.

Standalone, YARN and managed Spark have no pod to put a sidecar in. There, a Spark job
with one task per task slot starts the servers: on each executor host, the first task to
take the host's lock launches `python -m vllm.entrypoints.openai.api_server` on
127.0.0.1:PORT in a session of its own (so it outlives the task) and records its pid;
the other tasks on that host find it running. Every task then waits until the server is
ready. The batch job runs with `endpoint.base_url: http://127.0.0.1:PORT/v1`, which on
every executor is that executor's own server. Another job stops them.

    with vllm_servers(spark, model="/models/qwen", served_model_name="qwen") as servers:
        run_job(spark, spec)          # spec.endpoint.base_url == servers.base_url

Every executor must be up when the servers start (dynamic allocation off, or its minimum
at least the executors the job will use): an executor added later has no server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from spark_vllm.driver.local_server import LocalServer, stop_process_group, tail
from spark_vllm.driver.slots import task_slots
from spark_vllm.task.client import wait_ready


@dataclass(frozen=True)
class ServerConfig:
    model: str
    served_model_name: str
    port: int = 8000
    vllm_args: tuple[str, ...] = ()
    ready_timeout_s: float = 900.0
    run_dir: str = field(default_factory=tempfile.gettempdir)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def path(self, suffix: str) -> Path:
        return Path(self.run_dir) / f"spark-vllm-{self.port}.{suffix}"


@dataclass(frozen=True)
class ServerState:
    host: str
    pid: int
    base_url: str
    started: bool  # this task launched it (False: it found the host's server running)


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat[stat.rindex(")") + 2] != "Z"


def _exits_within(pid: int, seconds: float) -> bool:
    """Wait up to `seconds` for a process that is not our child to go away."""
    end = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() >= end:
            return False
        time.sleep(0.2)
    return True


def _read_pid(cfg: ServerConfig) -> int | None:
    try:
        pid = int(cfg.path("pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


@contextlib.contextmanager
def _host_lock(cfg: ServerConfig) -> Iterator[None]:
    cfg.path("lock").parent.mkdir(parents=True, exist_ok=True)
    with cfg.path("lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def start_here(cfg: ServerConfig) -> ServerState:
    """On this host: launch the server unless it runs already, then wait until it is ready."""
    with _host_lock(cfg):
        pid = _read_pid(cfg)
        started = pid is None
        if pid is None:
            server = LocalServer(
                cfg.model,
                cfg.served_model_name,
                cfg.path("log"),
                port=cfg.port,
                vllm_args=list(cfg.vllm_args),
            )
            pid = server.launch()
            cfg.path("pid").write_text(f"{pid}\n")

    def gone() -> str | None:
        if _alive(pid):
            return None
        log = cfg.path("log")
        return f"the server (pid {pid}) exited; last lines of {log}:\n{tail(log)}"

    wait_ready(cfg.base_url, cfg.served_model_name, cfg.ready_timeout_s, poll_s=2.0, gone=gone)
    return ServerState(socket.gethostname(), pid, cfg.base_url, started)


def stop_here(cfg: ServerConfig, grace_s: float = 20.0) -> int | None:
    """On this host: stop the server and what it spawned; return its pid (None: none ran)."""
    with _host_lock(cfg):
        pid = _read_pid(cfg)
        if pid is not None:
            stop_process_group(pid, partial(_exits_within, pid), grace_s)
        cfg.path("pid").unlink(missing_ok=True)
    return pid


def _on_every_slot(spark: SparkSession, fn: Any) -> list[Any]:
    """Run fn() once in every task slot of the cluster at once, so every executor runs it."""
    sc = spark.sparkContext
    if (sc.master or "").startswith("local"):
        executors = 1
    else:  # the executors registered now (the driver's block manager excluded)
        executors = max(1, sc._jsc.sc().getExecutorMemoryStatus().size() - 1)
    n = executors * task_slots(spark)

    def run(_: Iterable[int]) -> Iterator[Any]:
        yield fn()

    return sc.parallelize(range(n), n).mapPartitions(run).collect()


@dataclass
class Servers:
    """The servers `start_servers` started; `stop()` (or leaving the `with`) stops them."""

    spark: SparkSession
    config: ServerConfig
    states: list[ServerState]

    @property
    def base_url(self) -> str:
        return self.config.base_url

    @property
    def hosts(self) -> list[str]:
        return sorted({s.host for s in self.states})

    def stop(self) -> list[int | None]:
        return _on_every_slot(self.spark, partial(stop_here, self.config))


def start_servers(
    spark: SparkSession,
    model: str,
    served_model_name: str,
    *,
    port: int = 8000,
    vllm_args: list[str] | tuple[str, ...] = (),
    ready_timeout_s: float = 900.0,
    run_dir: str | None = None,
) -> Servers:
    """Start one vLLM server per executor host and wait until all are ready.

    `model` is a path (or hub id) every executor can read; `vllm_args` go to the server
    untouched (e.g. ["--max-model-len", "8192", "--gpu-memory-utilization", "0.9"]). The
    server's log and pid file are `run_dir/spark-vllm-PORT.{log,pid}` on each host.
    """
    cfg = ServerConfig(
        model,
        served_model_name,
        port,
        tuple(vllm_args),
        ready_timeout_s,
        run_dir or tempfile.gettempdir(),
    )
    states = _on_every_slot(spark, partial(start_here, cfg))
    return Servers(spark, cfg, states)


@contextlib.contextmanager
def vllm_servers(
    spark: SparkSession, model: str, served_model_name: str, **kw: Any
) -> Iterator[Servers]:
    """`start_servers` for a `with` block; the servers stop when it ends, however it ends."""
    servers = start_servers(spark, model, served_model_name, **kw)
    try:
        yield servers
    finally:
        servers.stop()
