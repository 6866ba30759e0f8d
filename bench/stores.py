"""What writing the answers costs, per output format: the same result rows written by the
job's output stores, one run each — parquet files (the default), a Delta table appended to
(one commit per run) and a Delta table upserted into (a MERGE on the id per run after the
first) — in one Spark session, the formats interleaved round by round so that a busy
machine skews them alike. No vLLM: the answers are made up, and what is timed is the store
alone (the tasks writing the rows, then the run's commit), the part that differs between
formats; the requests are the same whatever the output. Not a test: `make bench-stores`
(also a step of `make bench`); see bench/README.md.

Each round writes a first run of `--rows` rows, then a rerun of `--rerun` of them (the
failed rows a resume sends again) into the same output. Printed: rows/s of each run per
format (median over rounds) and its ratio to parquet's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ("parquet", "delta append", "delta upsert")


def spec_for(fmt: str, out: Path) -> Any:
    from spark_vllm import spec_from_dict

    output: dict[str, Any] = {"path": str(out), "keep_columns": ["topic"]}
    if fmt.startswith("delta"):
        output["format"] = "delta"
        output["delta"] = {"write_mode": fmt.split()[1]}
    return spec_from_dict(
        {
            "input": {"format": "jsonl", "path": "unused.jsonl", "id_column": "id"},
            "output": output,
            "endpoint": {"model": "m"},
            "prompt": {"template": "{{ question }}"},
            "spark": {"master": "local[2]"},
        }
    )


def rows_frame(spark: Any, n: int, start: int, salt: str) -> Any:
    """n result rows: id, a ~400-character answer, error (1 in 20 failed), a kept column."""
    from pyspark.sql import functions as F

    ids = spark.range(start, start + n, numPartitions=4)
    return ids.select(
        F.format_string("q%08d", "id").alias("id"),
        F.when(F.col("id") % 20 == 0, F.lit(None))
        .otherwise(F.concat(F.lit(salt), F.repeat(F.lit("an answer of some length "), 16)))
        .alias("response"),
        F.when(F.col("id") % 20 == 0, F.lit("HTTP 500")).alias("error"),
        (F.col("id") % 7).cast("string").alias("topic"),
    )


def one_run(spark: Any, fmt: str, out: Path, frame: Any, run_id: str) -> float:
    """Seconds to write `frame` as one run through the format's store (prepare excluded)."""
    from spark_vllm.storage.stores import store_for

    store = store_for(spark, spec_for(fmt, out))
    store.prepare()
    store.begin()
    start = time.perf_counter()
    store.write(frame, run_id)
    store.finish(run_id)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stores", description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the first run")
    parser.add_argument("--rerun", type=int, default=10_000, help="rows of the rerun")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (formats interleaved)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    from spark_vllm.cli import spark_session
    from spark_vllm.storage import delta

    if not delta.local_jars() and not delta.on_spark_classpath():
        print("bench.stores: no Delta connector jars: run `make jars` first", file=sys.stderr)
        return 2
    # The session a Delta job gets (the connector, Delta's settings), local[2].
    spark = spark_session(spec_for("delta append", Path("unused")))
    spark.sparkContext.setLogLevel("ERROR")
    first = rows_frame(spark, args.rows, 0, "first ").cache()
    rerun = rows_frame(spark, args.rerun, 0, "second ").cache()
    first.count(), rerun.count()

    seconds: dict[str, dict[str, list[float]]] = {f: {"first": [], "rerun": []} for f in FORMATS}
    with tempfile.TemporaryDirectory(prefix="bench-stores-") as scratch:
        for rnd in range(args.rounds):
            for fmt in FORMATS:
                out = Path(scratch) / f"{fmt.replace(' ', '-')}-{rnd}"
                seconds[fmt]["first"].append(
                    one_run(spark, fmt, out, first, f"20261207T00000000000{rnd}Z")
                )
                seconds[fmt]["rerun"].append(
                    one_run(spark, fmt, out, rerun, f"20261207T00000000001{rnd}Z")
                )
    spark.stop()

    sizes = {"first": args.rows, "rerun": args.rerun}
    report: dict[str, Any] = {"rows": sizes, "rounds": args.rounds, "seconds": seconds}
    print(f"{'format':<14} {'run':<6} {'rows':>8} {'rows/s':>10} {'vs parquet':>11}")
    for run in ("first", "rerun"):
        base = sizes[run] / statistics.median(seconds["parquet"][run])
        for fmt in FORMATS:
            rate = sizes[run] / statistics.median(seconds[fmt][run])
            report.setdefault("rows_per_s", {}).setdefault(fmt, {})[run] = rate
            print(f"{fmt:<14} {run:<6} {sizes[run]:>8} {rate:>10.0f} {rate / base:>10.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    path = args.out / f"stores-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
