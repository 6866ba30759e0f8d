"""The peers bench's measured runs, one tool per process (see bench/peers.py).

    python -m bench.peers_paths TOOL CONFIG.json OUT.json

TOOL is `bare` and `spark-vllm` (run by the project's venv), or `ray-data-llm` and `daft`
(run by the peers' venv, requirements/bench-peers.txt). This module imports only the
standard library and bench modules that do too, so both venvs can run it; each tool's own
library is imported inside its run.

Every run reads the same workload (bench/workload.py's JSON Lines: `id`, `question`),
sends one chat request per row to the same server, and writes its answers as parquet; the
clock covers reading the input to the written output, with the tool's own start-up (a
SparkSession, a Ray cluster) made before it, as bench/ceiling_paths.py's job does. Then the
output's ids are checked against the input's: answered, lost, duplicated.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.ceiling_paths import MIB, TreeWatch, bare, job
from bench.paths import Measurement
from bench.workload import SYSTEM

Config = dict[str, Any]


def input_ids(workload: str) -> list[str]:
    with open(workload, encoding="utf-8") as fh:
        return [json.loads(line)["id"] for line in fh if line.strip()]


def id_check(wanted: list[str], answered: list[str]) -> dict[str, int]:
    """Rows answered once or more, lost (an input id with no answer) and duplicated (an
    answer beyond the first for an id), against the input's ids."""
    counts = Counter(answered)
    return {
        "answered": sum(1 for i in set(wanted) if counts[i] > 0),
        "lost": sum(1 for i in set(wanted) if counts[i] == 0),
        "duplicated": sum(n - 1 for n in counts.values() if n > 1),
        "unknown_ids": sum(1 for i in counts if i not in set(wanted)),
    }


def answered_ids(output: str, answer_column: str, error_column: str | None = None) -> list[str]:
    """Ids of the output's rows holding an answer (a non-null answer, and no error)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    columns = ["id", answer_column] + ([error_column] if error_column else [])
    table = pq.read_table(output, columns=columns)
    ok = pc.is_valid(table.column(answer_column))
    if error_column:
        ok = pc.and_(ok, pc.is_null(table.column(error_column)))
    return [str(i) for i in table.filter(ok).column("id").to_pylist()]


def _timed(cfg: Config, run: Any) -> Measurement:
    """`run()` under the clock and a watch of this process tree; then the id check."""
    watch = TreeWatch()
    watch.start()
    start = time.time()
    extra = run() or {}
    end = time.time()
    cpu = watch.stop()
    return {
        "start": start,
        "end": end,
        "seconds": end - start,
        "cpu_s": cpu,
        "peak_tree_rss_mib": watch.peak_tree_rss / MIB,
        **extra,
    }


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _body(cfg: Config, question: str) -> dict[str, Any]:
    """The chat body the bare client sends for a row (bench.ceiling_paths.bare_body)."""
    from bench.ceiling_paths import bare_body

    return bare_body("chat", cfg["model"], [question], cfg["max_tokens"])


# The reference and spark-vllm, in the project's venv ------------------------------------


def run_bare(cfg: Config) -> Measurement:
    """The bare asyncio client (bench.ceiling_paths.bare) over the workload's rows. It sends
    one request per row by construction, so its check is the count of answers."""
    m = _timed(cfg, lambda: {"bare": bare(cfg)[0]})
    inner = m.pop("bare")
    rows = cfg["rows"]
    return {
        **m,
        "seconds": inner["seconds"],
        "start": inner["start"],
        "end": inner["end"],
        "answered": inner["ok"],
        "lost": rows - inner["ok"],
        "duplicated": 0,
        "unknown_ids": 0,
        "ids_checked": False,
        "version": _version("aiohttp"),
    }


def run_spark_vllm(cfg: Config) -> Measurement:
    """`run_job` in a warm SparkSession (bench.ceiling_paths.job), then its output's ids."""
    m = job(cfg)[0]
    got = answered_ids(cfg["output"], "response", "error")
    cpu = m["cpu_s"]
    return {
        "start": m["start"],
        "end": m["end"],
        "seconds": m["seconds"],
        "cpu_s": cpu,
        "peak_tree_rss_mib": m["peak_tree_rss_mib"],
        "first_request_s": m["first_request_s"],
        **id_check(input_ids(cfg["workload"]), got),
        "ids_checked": True,
        "version": _version("spark-vllm"),
    }


# The peers, in the peers' venv -------------------------------------------------------------


def run_ray(cfg: Config) -> Measurement:
    """Ray Data LLM's HTTP processor: `build_processor(HttpRequestProcessorConfig)`
    over `ray.data.read_json`, written with `write_parquet`, on a local Ray cluster of
    `slots` CPUs started before the clock."""
    import ray
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    ray.init(
        num_cpus=cfg["slots"],
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=cfg["ray_object_store_mib"] * MIB,
    )
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        config = HttpRequestProcessorConfig(
            url=cfg["base_url"].rstrip("/") + "/chat/completions",
            batch_size=cfg["ray_batch_size"],
            concurrency=cfg["slots"],
        )
        processor = build_processor(
            config,
            preprocess=lambda row: {"payload": _body(cfg, row["question"])},
            postprocess=lambda row: {
                "id": row["id"],
                "answer": row["http_response"]["choices"][0]["message"]["content"],
            },
        )

        def run() -> None:
            ds = ray.data.read_json(cfg["workload"])
            processor(ds).select_columns(["id", "answer"]).write_parquet(cfg["output"])

        m = _timed(cfg, run)
    finally:
        ray.shutdown()
    got = answered_ids(cfg["output"], "answer")
    return {
        **m,
        **id_check(input_ids(cfg["workload"]), got),
        "ids_checked": True,
        "version": _version("ray"),
    }


def run_daft(cfg: Config) -> Measurement:
    """Daft's `prompt` with its OpenAI provider pointed at the server (chat completions),
    over `daft.read_json`, written with `write_parquet`, on Daft's native runner. Its
    prompter starts a request for every row of a morsel at once, so `daft_morsel_rows`
    (Daft's `default_morsel_size`) bounds the requests in flight."""
    import daft
    from daft.ai.openai.provider import OpenAIProvider
    from daft.functions.ai import prompt

    if cfg.get("daft_morsel_rows"):
        daft.set_execution_config(default_morsel_size=cfg["daft_morsel_rows"])

    provider = OpenAIProvider(name="server", base_url=cfg["base_url"], api_key="unused")

    def run() -> None:
        df = daft.read_json(cfg["workload"])
        df = df.with_column(
            "answer",
            prompt(
                daft.col("question"),
                system_message=SYSTEM,
                provider=provider,
                model=cfg["model"],
                use_chat_completions=True,
                max_tokens=cfg["max_tokens"],
            ),
        )
        df.select("id", "answer").write_parquet(cfg["output"])

    m = _timed(cfg, run)
    got = answered_ids(cfg["output"], "answer")
    return {
        **m,
        **id_check(input_ids(cfg["workload"]), got),
        "ids_checked": True,
        "version": _version("daft"),
    }


RUNS = {"bare": run_bare, "spark-vllm": run_spark_vllm, "ray-data-llm": run_ray, "daft": run_daft}


def main(argv: list[str]) -> int:
    name, config, out = argv
    cfg = json.loads(Path(config).read_text(encoding="utf-8"))
    m = {"tool": name, "rows": cfg["rows"], **RUNS[name](cfg)}
    Path(out).write_text(json.dumps([m], indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
