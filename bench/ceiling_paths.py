"""The ceiling path's measured runs, each in a process of its own (see bench/ceiling.py).

    python -m bench.ceiling_paths RUN CONFIG.json OUT.json

RUN is `bare` (asyncio + aiohttp, one process, a window of requests in flight) or `job`
(`run_job` in a warm SparkSession, local[N]); both against the instant stand-in server.
A `job` run counts the CPU of its process tree by kind of process (this driver, the
JVM, Spark's Python workers) and samples the workers' memory while `run_job` runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import urllib.request
from base64 import b64decode
from pathlib import Path
from typing import Any

from bench import proctree
from bench.paths import Measurement, warm_spark
from bench.workload import SYSTEM

Config = dict[str, Any]

MIB = 1024 * 1024


# The bare client ------------------------------------------------------------------------


def bare_body(kind: str, model: str, texts: list[str], max_tokens: int) -> dict[str, Any]:
    """The body the job would send for these rows (one row, or an embedding batch)."""
    if kind == "embedding":
        return {"model": model, "input": texts}
    if kind == "completion":
        return {"model": model, "prompt": texts[0], "max_tokens": max_tokens}
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": texts[0]}]
    return {"model": model, "messages": messages, "max_tokens": max_tokens}


async def _bare_run(cfg: Config, texts: list[str]) -> tuple[int, int]:
    """(requests, rows answered): `window` workers, each posting its next request as soon
    as its last one is answered, on one keep-alive pool. Bodies are built and answers
    parsed per request, as any client must."""
    import aiohttp
    import numpy as np

    def decode(text: str) -> Any:
        return np.frombuffer(b64decode(text), dtype="<f4")

    kind, batch = cfg["kind"], cfg["batch_size"] if cfg["kind"] == "embedding" else 1
    path = {
        "chat": "/chat/completions",
        "completion": "/completions",
        "embedding": "/embeddings",
    }[kind]
    url = cfg["base_url"].rstrip("/") + path
    chunks = iter(range(0, len(texts), batch))
    requests = rows = 0
    base64 = cfg.get("encoding_format") == "base64"

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal requests, rows
        for first in chunks:
            body = bare_body(kind, cfg["model"], texts[first : first + batch], cfg["max_tokens"])
            if base64:
                body["encoding_format"] = "base64"
            async with session.post(url, json=body) as resp:
                data = await resp.json()
            requests += 1
            if resp.status != 200:
                continue
            if base64:
                rows += len([decode(item["embedding"]) for item in data["data"]])
            elif kind == "embedding":
                rows += len([item["embedding"] for item in data["data"]])
            elif kind == "completion":
                rows += isinstance(data["choices"][0]["text"], str)
            else:
                rows += isinstance(data["choices"][0]["message"]["content"], str)

    connector = aiohttp.TCPConnector(limit=cfg["window"])
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(cfg["window"])))
    return requests, rows


def bare(cfg: Config) -> list[Measurement]:
    texts = [f"Question {i + 1}: {q}" for i, q in enumerate(_cycle(cfg["questions"], cfg["rows"]))]
    cpu0, start = time.process_time(), time.time()
    requests, rows = asyncio.run(_bare_run(cfg, texts))
    end, cpu1 = time.time(), time.process_time()
    return [
        {
            "path": "ceiling-bare",
            "workload": "ceiling",
            "kind": cfg["kind"],
            "encoding_format": cfg.get("encoding_format", "float"),
            "requests": cfg["rows"],
            "ok": rows,
            "http_requests": requests,
            "window": cfg["window"],
            "batch_size": cfg["batch_size"] if cfg["kind"] == "embedding" else 1,
            "output_tokens": 0,
            "seconds": end - start,
            "start": start,
            "end": end,
            "cpu_s": {"client": cpu1 - cpu0},
        }
    ]


def _cycle(items: list[str], n: int) -> list[str]:
    return [items[i % len(items)] for i in range(n)]


# The job, with its process tree watched -------------------------------------------------


def _role(pid: int, me: int) -> str:
    """Which part of the job a process of the tree is: by pid and command line."""
    if pid == me:
        return "driver"
    argv = proctree.cmdline(pid)
    if "pyspark.daemon" in argv or "pyspark.worker" in argv:
        return "python_workers"
    if argv and argv[0].rsplit("/", 1)[-1] == "java":
        return "jvm"
    return "other"


class TreeWatch:
    """CPU seconds of this process and its descendants by role, between `start` and
    `stop`, the peak RSS of one process per role and of the whole tree together, sampled
    every `period_s`.

    A Python worker that ends is reaped by Spark's daemon, so its seconds stay counted
    (see bench/proctree.py).
    """

    def __init__(self, period_s: float = 0.25) -> None:
        self.me = os.getpid()
        self.period_s = period_s
        self.roles: dict[int, str] = {}
        self.begin: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.peak_rss: dict[str, int] = {}
        self.peak_tree_rss = 0
        self.workers_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> dict[int, float]:
        out = {}
        found = proctree.tree(self.me)
        self.peak_tree_rss = max(self.peak_tree_rss, sum(st.rss for st in found.values()))
        for pid, st in found.items():
            role = self.roles.get(pid) or self.roles.setdefault(pid, _role(pid, self.me))
            out[pid] = st.cpu_s
            self.peak_rss[role] = max(self.peak_rss.get(role, 0), st.rss)
            if role == "python_workers":
                self.workers_seen.add(pid)
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self.last.update(self._sample())

    def start(self) -> None:
        self.begin = self._sample()
        self.peak_rss.clear()
        self.peak_tree_rss = 0
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(timeout=10)
        # A process seen during the run but gone now keeps its last sample.
        end = {**self.last, **self._sample()}
        cpu: dict[str, float] = {}
        for pid, seconds in end.items():
            role = self.roles[pid]
            cpu[role] = cpu.get(role, 0.0) + seconds - self.begin.get(pid, 0.0)
        return cpu


def _standin(cfg: Config, what: str) -> dict[str, Any]:
    root = cfg["base_url"].rstrip("/").removesuffix("/v1")
    method = "POST" if what == "reset" else "GET"
    req = urllib.request.Request(f"{root}/standin/{what}", method=method)  # noqa: S310
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        body = resp.read()
    return dict(json.loads(body)) if body else {}


def warm(spark: Any, slots: int) -> None:
    """bench.paths' warm-up (JSON read, shuffle, mapInArrow on every slot) and a parquet
    round trip, so the JVM's first parquet read is Spark start-up, not the job's cost."""
    import tempfile

    warm_spark(spark, slots)
    with tempfile.TemporaryDirectory() as tmp:
        spark.range(64).write.parquet(tmp + "/warm")
        spark.read.parquet(tmp + "/warm").count()


def job(cfg: Config) -> list[Measurement]:
    """`run_job` timed, with the stand-in's first request and last answer and the CPU of
    the process tree; the session is made and warmed before the clock."""
    from spark_vllm import run_job, spec_from_dict
    from spark_vllm.cli import spark_session

    spec = spec_from_dict(cfg["job_spec"])
    spark = spark_session(spec)
    try:
        warm(spark, cfg["slots"])
        _standin(cfg, "reset")
        watch = TreeWatch()
        watch.start()
        start = time.time()
        summary = run_job(spark, spec)
        end = time.time()
        cpu = watch.stop()
    finally:
        spark.stop()
    seen = _standin(cfg, "stats")
    first = seen["first_request_ns"] / 1e9 if seen["first_request_ns"] else None
    last = seen["last_answer_ns"] / 1e9 if seen["last_answer_ns"] else None
    return [
        {
            "path": "ceiling-job",
            "workload": "ceiling",
            "kind": cfg["kind"],
            "resume": cfg.get("resume", False),
            "requests": summary.rows,
            "rows_wanted": cfg["rows"],
            "ok": summary.succeeded,
            "skipped": summary.skipped,
            "output_tokens": summary.completion_tokens,
            "seconds": end - start,
            "start": start,
            "end": end,
            "job_wall_s": summary.wall_s,
            "standin_posts": seen["posts"],
            "standin_rows": seen["rows"],
            "first_request_s": first - start if first is not None else None,
            "after_last_answer_s": end - last if last is not None else None,
            "streaming_s": last - first if first is not None and last is not None else None,
            "cpu_s": cpu,
            "peak_rss_mib": {role: rss / MIB for role, rss in watch.peak_rss.items()},
            "peak_tree_rss_mib": watch.peak_tree_rss / MIB,
            "python_workers_seen": len(watch.workers_seen),
        }
    ]


RUNS = {"bare": bare, "job": job}


def main(argv: list[str]) -> int:
    name, config, out = argv
    cfg = json.loads(Path(config).read_text(encoding="utf-8"))
    results = RUNS[name](cfg)
    Path(out).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
