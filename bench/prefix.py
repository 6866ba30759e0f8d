"""Prefix-aware scheduling, measured: a RAG-like workload (documents of 600-900 tokens,
short questions about each, a few output tokens) sent by the job in three orders —
shuffled, in input order (grouped by document in the file, dealt round-robin by Spark)
and with `prefix: {columns: [doc]}` — against one vLLM server with prefix caching on.
For each: rows/s, output tokens/s, and vLLM's prefix-cache hit rate over the run (from
`vllm:prefix_cache_queries_total` / `vllm:prefix_cache_hits_total` in /metrics), beside
the best hit rate the workload allows (every document's shared tokens computed once, in
whole cache blocks). Each order gets documents of its own, so no order finds another's
prefixes in the cache. Not a test: `make bench-prefix` (also the last step of
`make bench`); see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVED = "bench-llama"
SYSTEM = "Answer from the document only, in one short sentence."
TEMPLATE = "Document:\n{{ document }}\n\nQuestion: {{ question }}"
WORDS = [
    "lake",
    "spark",
    "table",
    "partition",
    "executor",
    "driver",
    "sidecar",
    "token",
    "prompt",
    "answer",
    "batch",
    "stream",
    "cluster",
    "node",
    "pod",
    "volume",
    "schema",
    "column",
    "row",
    "file",
    "parquet",
    "json",
    "model",
    "cache",
    "block",
    "queue",
    "window",
    "request",
    "latency",
    "throughput",
    "budget",
    "summary",
    "resume",
    "output",
    "input",
    "shuffle",
    "join",
]
ORDERS = ("shuffled", "input", "grouped")
BLOCK = 16  # vLLM's KV-cache block: a prefix is cached in whole blocks
TARGET_SPEEDUP = 1.5
TARGET_HIT_GAP = 0.10


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.prefix", description=__doc__)
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--questions", type=int, default=16, help="questions per document")
    p.add_argument("--doc-tokens", default="600,900", help="document length range, tokens")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--slots", type=int, default=2, help="Spark local[N] = partitions")
    p.add_argument("--per-executor", type=int, default=256, help="concurrency.per_executor")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument(
        "--kv-cache-gib",
        default="1",
        help="VLLM_CPU_KVCACHE_SPACE: smaller than the documents and the requests in flight "
        "(about 43k tokens of the bench model), as a busy GPU's cache is",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", type=Path, default=ROOT / "build" / "models" / "bench-llama")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "bench-prefix")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    return p


def _metric(text: str, name: str) -> float:
    found = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return sum(float(v) for v in found)


def cache_counters(root: str) -> tuple[float, float]:
    """(prefix-cache queries, hits) so far, in tokens."""
    with urllib.request.urlopen(root + "/metrics", timeout=10) as answer:  # noqa: S310
        text = answer.read().decode()
    return (
        _metric(text, "vllm:prefix_cache_queries_total"),
        _metric(text, "vllm:prefix_cache_hits_total"),
    )


def tokenize(root: str, question: str, document: str) -> list[int]:
    """The token ids of a row's chat request, as the server renders it."""
    user = TEMPLATE.replace("{{ document }}", document).replace("{{ question }}", question)
    body = {
        "model": SERVED,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
    }
    request = urllib.request.Request(  # noqa: S310
        root + "/tokenize", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
        tokens: list[int] = json.loads(answer.read())["tokens"]
    return tokens


def common_prefix(token_lists: list[list[int]]) -> int:
    """How many leading tokens all of `token_lists` share."""
    first = token_lists[0]
    shared = len(first)
    for other in token_lists[1:]:
        same = 0
        for a, b in zip(first, other, strict=False):
            if a != b:
                break
            same += 1
        shared = min(shared, same)
    return shared


def make_documents(root: str, rng: random.Random, n: int, low: int, high: int) -> list[str]:
    """`n` documents of `low`..`high` tokens (as the server counts them), random words."""
    docs = []
    for _ in range(n):
        want = rng.randint(low, high)
        words = [rng.choice(WORDS) for _ in range(want)]
        while len(tokenize(root, "", " ".join(words))) > want + 40 and len(words) > 10:
            words = words[: int(len(words) * 0.9)]
        docs.append(" ".join(words))
    return docs


def workload(
    root: str, rng: random.Random, args: argparse.Namespace, order: str, path: Path
) -> tuple[int, int]:
    """Write one order's input; (prompt tokens in all, the fewest a perfect cache computes)."""
    low, high = (int(x) for x in args.doc_tokens.split(","))
    docs = make_documents(root, rng, args.docs, low, high)
    rows = [
        {"id": f"d{d:03d}-q{q:02d}", "doc": f"d{d:03d}", "document": doc,
         "question": f"Question {q}: what does document {d} say about {rng.choice(WORDS)}?"}
        for d, doc in enumerate(docs)
        for q in range(args.questions)
    ]  # fmt: skip
    total = least = 0
    for d, doc in enumerate(docs):
        mine = [r for r in rows if r["doc"] == f"d{d:03d}"]
        ids = [tokenize(root, r["question"], doc) for r in mine]
        shared = common_prefix(ids)
        cached = shared // BLOCK * BLOCK
        total += sum(len(t) for t in ids)
        least += sum(len(t) for t in ids) - cached * (len(ids) - 1)
    if order != "input":
        rng.shuffle(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return total, least


def job_spec(args: argparse.Namespace, base_url: str, order: str, data: Path) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "input": {"format": "jsonl", "path": str(data), "id_column": "id"},
        "output": {
            "format": "parquet",
            "path": str(data.parent / f"out-{order}"),
            "mode": "overwrite",
        },
        "endpoint": {"base_url": base_url, "model": SERVED},
        "task": "chat",
        "prompt": {"system": SYSTEM, "template": TEMPLATE},
        "sampling": {"max_tokens": args.max_tokens, "temperature": 0.0, "ignore_eos": True},
        "concurrency": {"per_executor": args.per_executor},
        "partitions": args.slots,
        "progress": {"enabled": False},
        "spark": {"master": f"local[{args.slots}]", "app_name": f"bench-prefix-{order}"},
    }
    if order == "grouped":
        spec["prefix"] = {"columns": ["doc"]}
    return spec


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bench.run import _shown, ensure_model
    from spark_vllm import LocalServer, run_job, spec_from_dict
    from spark_vllm.cli import spark_session

    ensure_model(args.model, ["--hidden", "512", "--layers", "6", "--heads", "8"])
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    work = args.work / stamp
    work.mkdir(parents=True, exist_ok=True)
    server = LocalServer(
        model=str(args.model),
        served_model_name=SERVED,
        log_path=work / "vllm.log",
        vllm_args=[
            "--max-model-len", str(args.max_model_len), "--dtype", "float32",
            "--enable-prefix-caching", "--seed", str(args.seed),
        ],
        ready_timeout_s=900,
    )  # fmt: skip
    import os

    os.environ["VLLM_CPU_KVCACHE_SPACE"] = args.kv_cache_gib
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rng = random.Random(args.seed)  # noqa: S311  # words, not secrets
    results: dict[str, Any] = {}
    print("bench-prefix: starting vLLM ...", flush=True)
    with server:
        root = server.base_url.rsplit("/v1", 1)[0]
        spark = None
        for order in ("warm-up", *ORDERS):  # the first Spark jobs of a session are slow
            warm = order == "warm-up"
            data = work / order / "input.jsonl"
            data.parent.mkdir(parents=True)
            small = argparse.Namespace(**{**vars(args), "docs": 2, "questions": 2})
            total, least = workload(root, rng, small if warm else args, order, data)
            spec = spec_from_dict(job_spec(args, server.base_url, order, data))
            if spark is None:
                spark = spark_session(spec)
            queries0, hits0 = cache_counters(root)
            began = time.monotonic()
            summary = run_job(spark, spec)
            seconds = time.monotonic() - began
            queries1, hits1 = cache_counters(root)
            if warm:
                continue
            asked = queries1 - queries0
            results[order] = {
                "rows": summary.rows,
                "failed": summary.failed,
                "seconds": round(seconds, 2),
                "rows_per_s": round(summary.rows / seconds, 2),
                "output_tokens_per_s": round(summary.completion_tokens / seconds, 1),
                "hit_rate": round((hits1 - hits0) / asked, 4) if asked else None,
                "best_hit_rate": round(1 - least / total, 4),
                "prompt_tokens": total,
            }
            print(f"bench-prefix: {order}: {json.dumps(results[order])}", flush=True)
        if spark is not None:
            spark.stop()
    grouped, shuffled = results["grouped"], results["shuffled"]
    speedup = grouped["rows_per_s"] / shuffled["rows_per_s"]
    gap = grouped["best_hit_rate"] - (grouped["hit_rate"] or 0.0)
    report = {
        "stamp": stamp,
        "settings": {k: str(_shown(v)) for k, v in vars(args).items()},
        "orders": results,
        "grouped_over_shuffled": round(speedup, 3),
        "targets": [
            {"name": f"prefix-grouped >= {TARGET_SPEEDUP}x shuffled rows/s",
             "value": round(speedup, 3), "met": speedup >= TARGET_SPEEDUP},
            {"name": "grouped hit rate within 10 points of the best",
             "value": round(gap, 4), "met": gap <= TARGET_HIT_GAP},
        ],
    }  # fmt: skip
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"prefix-{stamp}.json"
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"\n{'order':10} {'rows/s':>8} {'out tok/s':>10} {'hit rate':>9} {'best':>6}")
    for order, r in results.items():
        hit = "-" if r["hit_rate"] is None else f"{r['hit_rate']:.1%}"
        print(
            f"{order:10} {r['rows_per_s']:8.1f} {r['output_tokens_per_s']:10.1f} "
            f"{hit:>9} {r['best_hit_rate']:6.1%}"
        )
    for target in report["targets"]:
        print(f"{'MET' if target['met'] else 'MISSED':6} {target['name']}: {target['value']}")
    print(f"bench-prefix: report {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
