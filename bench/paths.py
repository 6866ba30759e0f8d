"""The measured paths, each run in a process of its own so engines and JVMs never overlap.

    python -m bench.paths PATH CONFIG.json OUT.json

PATH is one of `offline`, `http`, `seed`, `job`, `memory`; CONFIG.json is written by
bench/run.py, and OUT.json receives a list of measurements. The end-to-end job path
(`spark-vllm run`, Spark start-up included) is timed by run.py itself around the command.

Each measurement times only the work: engine and Spark start-up (except for the
end-to-end path) and warm-up requests happen before the clock starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.workload import Row, Workload, messages, request_body

Config = dict[str, Any]
Measurement = dict[str, Any]


def measurement(
    path: str, workload: str, requests: int, ok: int, tokens: int, start: float, end: float
) -> Measurement:
    """One timed run; `start`/`end` are wall-clock (time.time) so run.py can match metrics."""
    return {
        "path": path,
        "workload": workload,
        "requests": requests,
        "ok": ok,
        "output_tokens": tokens,
        "seconds": end - start,
        "start": start,
        "end": end,
    }


def workloads(cfg: Config) -> list[Workload]:
    return [Workload(w["name"], Path(w["path"])) for w in cfg["workloads"]]


# (1) vLLM offline ------------------------------------------------------------------


def offline(cfg: Config) -> list[Measurement]:
    """vLLM's `LLM.chat` over the whole workload in one call: the ceiling."""
    from vllm import LLM, SamplingParams

    engine = cfg["engine"]
    llm = LLM(
        model=cfg["model_dir"],
        max_model_len=engine["max_model_len"],
        max_num_seqs=engine["max_num_seqs"],
        max_num_batched_tokens=engine["max_num_batched_tokens"],
        dtype=engine["dtype"],
        enable_prefix_caching=False,
        seed=engine["seed"],
    )
    warm: list[Any] = [messages(f"Warm-up question {i}") for i in range(cfg["warmup"])]
    llm.chat(warm, SamplingParams(max_tokens=8, ignore_eos=True, temperature=0.0), use_tqdm=False)
    out = []
    for wl in workloads(cfg):
        rows = wl.rows()
        conversations: list[Any] = [messages(r.question) for r in rows]
        params = [
            SamplingParams(max_tokens=r.max_tokens, ignore_eos=True, temperature=0.0) for r in rows
        ]
        start = time.time()
        results = llm.chat(conversations, params, use_tqdm=False)
        end = time.time()
        tokens = sum(len(r.outputs[0].token_ids) for r in results)
        out.append(measurement("offline", wl.name, len(rows), len(results), tokens, start, end))
    return out


# (2) plain concurrent HTTP client -----------------------------------------------------


async def _http_run(base_url: str, model: str, rows: list[Row], window: int) -> tuple[int, int]:
    import aiohttp

    url = base_url.rstrip("/") + "/chat/completions"
    pending = iter(rows)
    ok = tokens = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok, tokens
        for row in pending:
            async with session.post(url, json=request_body(model, row)) as resp:
                data = await resp.json()
            if resp.status == 200:
                ok += 1
                tokens += data["usage"]["completion_tokens"]

    connector = aiohttp.TCPConnector(limit=window)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(min(window, len(rows)))))
    return ok, tokens


def http(cfg: Config) -> list[Measurement]:
    """asyncio + aiohttp, `window` requests in flight, for each window in the config."""
    out = []
    for wl in workloads(cfg):
        rows = wl.rows()
        for window in cfg["windows"]:
            start = time.time()
            ok, tokens = asyncio.run(_http_run(cfg["base_url"], cfg["served_name"], rows, window))
            end = time.time()
            m = measurement("http", wl.name, len(rows), ok, tokens, start, end)
            m["window"] = window
            out.append(m)
    return out


# Spark helpers ---------------------------------------------------------------------------


def _spark(slots: int, app: str) -> Any:
    """A local SparkSession set up the way `spark-vllm` sets up local mode."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (
        SparkSession.builder.appName(app)
        .master(f"local[{slots}]")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )


# (3) the seed's pattern: one request at a time per task --------------------------------


def _one_at_a_time(url: str, model: str, rows: Iterator[Any]) -> list[tuple[str, str, int]]:
    """The seed's req.py loop: a blocking `requests.post` per row, results kept in a list."""
    import requests

    results = []
    for r in rows:
        row = Row(r["id"], r["question"], int(r["max_tokens"]))
        resp = requests.post(url, json=request_body(model, row), timeout=600)
        resp.raise_for_status()
        data = resp.json()
        answer = data["choices"][0]["message"]["content"]
        results.append((row.id, answer, int(data["usage"]["completion_tokens"])))
    return results


def seed(cfg: Config) -> list[Measurement]:
    """Spark `mapPartitions`, one blocking request at a time per task, `slots` tasks."""
    from functools import partial

    from pyspark.sql import functions as F

    wl = next(w for w in workloads(cfg) if w.name == cfg["workload"])
    spark = _spark(cfg["slots"], "bench-seed")
    url = cfg["base_url"].rstrip("/") + "/chat/completions"
    try:
        start = time.time()
        df = spark.read.json(str(wl.path)).orderBy("id").limit(cfg["seed_rows"])
        rdd = df.repartition(cfg["slots"]).rdd.mapPartitions(
            partial(_one_at_a_time, url, cfg["served_name"])
        )
        result = spark.createDataFrame(rdd, "id string, response string, completion_tokens int")
        result.write.mode("overwrite").parquet(cfg["output"])
        end = time.time()
        totals = spark.read.parquet(cfg["output"]).agg(
            F.count(F.lit(1)).alias("n"), F.sum("completion_tokens").alias("t")
        )
        row = totals.first()
        assert row is not None
        n, tokens = int(row["n"]), int(row["t"] or 0)
    finally:
        spark.stop()
    return [measurement("seed", wl.name, n, n, tokens, start, end)]


# (5) the spark-vllm job, Spark start-up excluded ---------------------------------------


def _identity(batches: Iterator[Any]) -> Iterator[Any]:
    yield from batches


def warm_spark(spark: Any, slots: int) -> None:
    """Finish Spark's start-up before the clock: a JSON read, a shuffle and a mapInArrow
    on every slot, so the JVM's first-query costs are paid and the Python workers forked.
    The job's own work (its reads, plan, requests, writes, summary) stays timed."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "warm.jsonl"
        sample.write_text("".join(f'{{"id": "{i}", "q": "x"}}\n' for i in range(64)))
        df = spark.read.json(str(sample))
        df.groupBy("id").count().collect()
        df.repartition(slots).mapInArrow(_identity, df.schema).count()


def job(cfg: Config) -> list[Measurement]:
    """`run_job(spark, spec)` timed on its own, the SparkSession made beforehand."""
    from spark_vllm import run_job, spec_from_dict
    from spark_vllm.cli import spark_session  # the session `spark-vllm run` makes

    spec = spec_from_dict(cfg["job_spec"])
    spark = spark_session(spec)
    try:
        warm_spark(spark, cfg["slots"])
        start = time.time()
        summary = run_job(spark, spec)
        end = time.time()
    finally:
        spark.stop()
    m = measurement(
        "job",
        cfg["workload"],
        summary.rows,
        summary.succeeded,
        summary.completion_tokens,
        start,
        end,
    )
    m["job_wall_s"] = summary.wall_s
    return [m]


# memory: one task's Python worker over a growing partition ------------------------------


def _rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _hwm_kib() -> int | None:
    """The peak RSS since the last reset (VmHWM), None where /proc does not say."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset VmHWM, so the peak measured is the partition's and not the imports' (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def memory(cfg: Config) -> list[Measurement]:
    """`run_partition` over `rows` generated rows, as a Spark Python worker runs it.

    Input arrives as Arrow batches of Spark's default size (10,000 rows), made lazily;
    result batches are dropped as Spark would ship them to the JVM. Reports the process's
    peak RSS (ru_maxrss, which also covers the imports), the peak while the partition ran
    (VmHWM reset just before it) and RSS samples along the way.
    """
    import pyarrow as pa
    from pyspark.sql import types as T

    from spark_vllm import spec_from_dict
    from spark_vllm.driver.job import kind_for, task_config  # internal: one task, no Spark job
    from spark_vllm.task.runner import run_partition

    n, batch_rows = cfg["rows"], cfg["batch_rows"]
    spec = spec_from_dict(cfg["job_spec"])
    kind = kind_for(spec)
    schema = T.StructType([T.StructField("id", T.StringType()), *kind.result_fields()])
    task = task_config(spec, schema, cfg["slots"], kind)
    in_schema = pa.schema([("id", pa.string()), ("question", pa.string())])
    base = [r.question for r in Workload("memory", Path(cfg["questions"])).rows()]

    def batches() -> Iterator[pa.RecordBatch]:
        for first in range(0, n, batch_rows):
            ids = [f"m{i:09d}" for i in range(first, min(n, first + batch_rows))]
            texts = [base[i % len(base)] for i in range(first, first + len(ids))]
            yield pa.RecordBatch.from_arrays([pa.array(ids), pa.array(texts)], schema=in_schema)

    rss_before = _rss_kib()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm_reset = _reset_hwm()
    samples: list[tuple[int, int]] = []
    every = max(1, n // 20)
    done = ok = tokens = 0
    start = time.time()
    for out in run_partition(batches(), task):
        before = done
        done += out.num_rows
        ok += out.column("error").null_count  # `error` is null on success
        tokens += sum(v for v in out.column("completion_tokens").to_pylist() if v)
        if done // every != before // every:
            samples.append((done, _rss_kib()))
    end = time.time()
    m = measurement("memory", f"{n} rows", n, ok, tokens, start, end)
    m.update(
        rows_returned=done,
        rss_before_kib=rss_before,
        peak_before_kib=peak_before,
        peak_rss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        partition_peak_kib=_hwm_kib() if hwm_reset else None,
        rss_samples=samples,
        window=task.concurrency.per_task,
        adaptive=task.concurrency.adaptive,
        batch_rows=batch_rows,
    )
    return [m]


PATHS = {"offline": offline, "http": http, "seed": seed, "job": job, "memory": memory}


def main(argv: list[str]) -> int:
    name, config, out = argv
    cfg = json.loads(Path(config).read_text(encoding="utf-8"))
    results = PATHS[name](cfg)
    Path(out).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
