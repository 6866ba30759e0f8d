"""The benchmark driver: make the model and workloads, run every path in turn, report.

One path runs at a time (the machine's cores are shared by the engine and the client):
(1) vLLM offline first, with no server running; then one vLLM server, started with
`spark_vllm.driver.local_server.LocalServer` and the same engine arguments, serves (2)-(5) and
the memory probe; last, with no vLLM running, the ceiling path (bench/ceiling.py) runs the
job against an instant stand-in server. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import yaml

from bench import report
from bench.ceiling import Ceiling
from bench.paths import Measurement, _http_run
from bench.workload import SYSTEM, Row, Workload, make_workloads
from spark_vllm.driver.local_server import stop_group

ROOT = Path(__file__).resolve().parent.parent
SERVED_NAME = "bench-llama"

# Path (5) variants: job-spec overrides, run on the mixed workload.
VARIANTS = {
    # The job before adaptive concurrency and ordering: a fixed window split across the
    # task slots, rows in input order.
    "before": ["concurrency.mode=fixed", "concurrency.order=input"],
    "fixed-window": ["concurrency.mode=fixed"],
    "input-order": ["concurrency.order=input"],
}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench", description="spark-vllm throughput and memory benchmark"
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: small numbers everywhere")
    p.add_argument("--prompts", type=int, help="chat prompts per workload (default 1024; quick 64)")
    p.add_argument("--output-tokens", type=int, default=64, help="fixed workload's max_tokens")
    p.add_argument("--mix-min", type=int, default=8, help="mixed workload: shortest output")
    p.add_argument("--mix-max", type=int, default=256, help="mixed workload: longest output")
    p.add_argument("--seed", type=int, default=0, help="shuffles the mixed lengths; vLLM's seed")
    p.add_argument("--slots", type=int, default=2, help="Spark local[N] task slots = partitions")
    p.add_argument(
        "--per-executor", type=int, default=256, help="the job's concurrency.per_executor"
    )
    p.add_argument("--windows", type=_ints, help="path (2) windows (default 128,256,512)")
    p.add_argument(
        "--sweep-mixed",
        action="store_true",
        help="path (2): try every window on the mixed workload too (default: the fixed "
        "workload's best window)",
    )
    p.add_argument(
        "--seed-rows", type=int, help="rows path (3) sends, a prefix of the workload (default 128)"
    )
    p.add_argument(
        "--memory-rows", type=_ints, help="partition sizes for the memory probe (1000,100000)"
    )
    p.add_argument(
        "--memory-batch-rows",
        type=int,
        help="Arrow batch size fed to the task (default 10000, Spark's; quick 1000, so the "
        "small sizes still span several batches)",
    )
    p.add_argument(
        "--memory-budget-s",
        type=float,
        default=1200.0,
        help="cap on one memory run; a larger partition is cut to fit (and reported as such)",
    )
    p.add_argument("--warmup", type=int, default=16, help="warm-up requests before each path")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=4096)
    p.add_argument(
        "--dtype",
        default="float32",
        help="engine dtype for (1) and the server (default float32: on CPUs without AVX-512 "
        "BF16, vLLM's bfloat16 falls back to slow kernels; 'auto' takes the model's bfloat16)",
    )
    p.add_argument(
        "--kv-cache-gib", default="2", help="VLLM_CPU_KVCACHE_SPACE for (1) and the server"
    )
    p.add_argument(
        "--model",
        type=Path,
        default=ROOT / "build" / "models" / "bench-llama",
        help="model directory; made (hidden 512, 6 layers, 8 heads) when missing",
    )
    p.add_argument(
        "--memory-model",
        type=Path,
        default=ROOT / "build" / "models" / "bench-llama-small",
        help="model for the memory probe; made (hidden 128, 2 layers, 2 heads) when missing",
    )
    p.add_argument(
        "--rebuild",
        type=Path,
        metavar="WORK_DIR",
        help="only write the report of an earlier run from its work directory (state.json)",
    )
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "bench", help="scratch space")
    p.add_argument(
        "--only",
        type=lambda s: set(s.split(",")),
        default={"offline", "http", "seed", "cli", "job", "variants", "memory", "ceiling"},
        help="run only these paths (offline,http,seed,cli,job,variants,memory,ceiling)",
    )
    c = p.add_argument_group(
        "ceiling path", "the job against an instant stand-in server (bench/README.md)"
    )
    c.add_argument(
        "--ceiling-rows",
        type=_ints,
        help="input sizes for the job (default 10000,100000; quick 2000,10000; add 1000000 "
        "for the 1M-row runs, about half an hour more here)",
    )
    c.add_argument(
        "--ceiling-kinds",
        type=lambda s: [k for k in s.split(",") if k],
        default=["chat", "completion", "embedding", "openai-batch"],
        help="kinds of job (chat,completion,embedding,openai-batch)",
    )
    c.add_argument(
        "--ceiling-bare-rows",
        type=int,
        help="rows the bare client sends (default 50000; quick 5000)",
    )
    c.add_argument(
        "--ceiling-window", type=int, default=256, help="the bare client's requests in flight"
    )
    c.add_argument("--ceiling-batch-size", type=int, default=32, help="embedding rows per request")
    c.add_argument(
        "--ceiling-dim", type=int, default=384, help="embedding dimensions the stand-in answers"
    )
    c.add_argument(
        "--ceiling-wrk-s", type=float, help="seconds of wrk per endpoint (default 5; quick 2)"
    )
    c.add_argument(
        "--ceiling-set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="job-spec override for the ceiling's jobs, e.g. concurrency.per_executor=512",
    )
    p.add_argument(
        "--job-set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="job-spec override for paths (4), (5) and the variants, e.g. "
        "concurrency.metrics_interval_s=1",
    )
    p.add_argument(
        "--variants",
        type=lambda s: [v for v in s.split(",") if v],
        default=["before", "input-order"],
        help="path (5) again on the mixed workload with other settings, to show what "
        f"adaptive concurrency and longest-first ordering bring (any of {', '.join(VARIANTS)}; "
        "'' for none)",
    )
    return p


def _defaults(args: argparse.Namespace) -> None:
    quick = args.quick
    if args.prompts is None:
        args.prompts = 64 if quick else 1024
    if args.windows is None:
        args.windows = [16, 64] if quick else [128, 256, 512]
    if args.seed_rows is None:
        args.seed_rows = 64 if quick else 128
    args.seed_rows = min(args.seed_rows, args.prompts)
    if args.memory_rows is None:
        args.memory_rows = [1000, 5000] if quick else [1000, 100_000]
    if args.memory_batch_rows is None:
        args.memory_batch_rows = 1000 if quick else 10_000
    if args.ceiling_rows is None:
        args.ceiling_rows = [2000, 10_000] if quick else [10_000, 100_000]
    if args.ceiling_bare_rows is None:
        args.ceiling_bare_rows = 5000 if quick else 50_000
    if args.ceiling_wrk_s is None:
        args.ceiling_wrk_s = 2.0 if quick else 5.0
    if quick:
        args.warmup = min(args.warmup, 8)


def ensure_model(model: Path, shape: list[str]) -> None:
    if (model / "config.json").exists():
        return
    print(f"bench: making the random-weight model in {model} ...", flush=True)
    subprocess.run(  # noqa: S603
        [sys.executable, str(ROOT / "scripts" / "make_tiny_model.py"), str(model), *shape],
        check=True,
    )


def _shown(value: Any) -> Any:
    """A setting as the report shows it: paths relative to the repository when inside it."""
    if isinstance(value, Path):
        return str(value.relative_to(ROOT)) if value.is_relative_to(ROOT) else str(value)
    if isinstance(value, set):
        return sorted(value)
    return value


def _terminate(signum: int, frame: object) -> None:
    # Unwind through the context managers so the vLLM server is stopped.
    raise SystemExit(128 + signum)


class MetricsSampler:
    """Polls the server's /metrics once a second: sequences running and waiting over time."""

    PATTERN = re.compile(r"^vllm:num_requests_(running|waiting)\{[^}]*\} ([0-9.e+]+)$", re.M)

    def __init__(self, root_url: str, period_s: float = 1.0) -> None:
        self.url = root_url + "/metrics"
        self.period_s = period_s
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:  # noqa: S310
                    text = resp.read().decode()
                found = dict(self.PATTERN.findall(text))
                self.samples.append(
                    (time.time(), float(found.get("running", 0)), float(found.get("waiting", 0)))
                )
            except OSError:
                pass
            self._stop.wait(self.period_s)

    def __enter__(self) -> MetricsSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def between(self, start: float, end: float) -> list[tuple[float, float, float]]:
        return [s for s in self.samples if start <= s[0] <= end]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.work = args.work / self.stamp
        self.work.mkdir(parents=True, exist_ok=True)
        self.workloads = make_workloads(
            self.work / "input",
            args.prompts,
            args.output_tokens,
            args.mix_min,
            args.mix_max,
            args.seed,
        )
        self.results: list[Measurement] = []
        self.notes: list[str] = []
        self.base_url = ""
        self.sampler: MetricsSampler | None = None
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib),
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }

    # -- plumbing ------------------------------------------------------------------------

    def engine(self) -> dict[str, Any]:
        a = self.args
        return {
            "max_model_len": a.max_model_len,
            "max_num_seqs": a.max_num_seqs,
            "max_num_batched_tokens": a.max_num_batched_tokens,
            "dtype": a.dtype,
            "seed": a.seed,
        }

    def vllm_args(self) -> list[str]:
        e = self.engine()
        return [
            "--max-model-len",
            str(e["max_model_len"]),
            "--max-num-seqs",
            str(e["max_num_seqs"]),
            "--max-num-batched-tokens",
            str(e["max_num_batched_tokens"]),
            "--no-enable-prefix-caching",
            "--dtype",
            e["dtype"],
            "--seed",
            str(e["seed"]),
        ]

    def config(self, **extra: Any) -> dict[str, Any]:
        return {
            "model_dir": str(self.args.model),
            "served_name": SERVED_NAME,
            "base_url": self.base_url,
            "engine": self.engine(),
            "warmup": self.args.warmup,
            "slots": self.args.slots,
            "workloads": [{"name": w.name, "path": str(w.path)} for w in self.workloads],
            **extra,
        }

    def call(self, argv: list[str], log: IO[bytes]) -> int:
        """Run one path's process; on Ctrl-C or SIGTERM take its whole group down with it
        (vLLM's engine core and Spark's JVM are its children)."""
        proc = subprocess.Popen(  # noqa: S603
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            return proc.wait()
        except BaseException:
            stop_group(proc)
            raise

    def run_path(
        self, name: str, tag: str, cfg: dict[str, Any], module: str = "bench.paths"
    ) -> list[Measurement]:
        cfg_path = self.work / f"{tag}.config.json"
        out_path = self.work / f"{tag}.result.json"
        log_path = self.work / f"{tag}.log"
        cfg_path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
        print(f"bench: {tag} ... ", end="", flush=True)
        began = time.monotonic()
        with log_path.open("wb") as log:
            code = self.call(
                [sys.executable, "-m", module, name, str(cfg_path), str(out_path)], log
            )
        if code != 0:
            print(f"FAILED (exit {code}; log: {log_path})", flush=True)
            self.notes.append(f"{tag} failed (exit {code}); see {_shown(log_path)}")
            return []
        results: list[Measurement] = json.loads(out_path.read_text(encoding="utf-8"))
        print(f"done in {time.monotonic() - began:.0f} s", flush=True)
        return self.record(results)

    def record(self, results: list[Measurement]) -> list[Measurement]:
        for m in results:
            if self.sampler is not None:
                m["occupancy"] = self.sampler.between(m["start"], m["end"])
            self.results.append(m)
        self.save()
        return results

    def save(self) -> None:
        """Keep what was measured so far on disk: `--rebuild` makes a report from it."""
        state = {
            "settings": {k: _shown(v) for k, v in vars(self.args).items()},
            "engine": self.engine(),
            "expected": self.expected(),
            "results": self.results,
            "notes": self.notes,
            "load_average": os.getloadavg(),
        }
        (self.work / "state.json").write_text(json.dumps(state), encoding="utf-8")

    def warm_up(self) -> None:
        rows = [Row(f"w{i}", f"Warm-up question {i}", 8) for i in range(self.args.warmup)]
        asyncio.run(_http_run(self.base_url, SERVED_NAME, rows, len(rows)))

    def job_spec(self, wl: Workload, output: Path, max_tokens: int) -> dict[str, Any]:
        a = self.args
        return {
            "input": {"format": "jsonl", "path": str(wl.path), "id_column": "id"},
            "output": {"format": "parquet", "path": str(output)},
            "endpoint": {"base_url": self.base_url, "model": SERVED_NAME},
            "task": "chat",
            "prompt": {"system": SYSTEM, "template": "{{ question }}"},
            "sampling": {"max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True},
            "concurrency": {"per_executor": a.per_executor},
            "spark": {"master": f"local[{a.slots}]", "app_name": f"bench-{wl.name}"},
        }

    def job_spec_for(
        self, wl: Workload, output: Path, variant: str | None = None
    ) -> dict[str, Any]:
        """The job's spec for a workload: the mixed one reads max_tokens per row from the
        input's `sampling` column; then --job-set and the variant's overrides."""
        from spark_vllm.spec import apply_overrides

        if wl.name == "fixed":
            spec = self.job_spec(wl, output, self.args.output_tokens)
        else:
            spec = {**self.job_spec(wl, output, self.args.mix_max), "sampling_column": "sampling"}
        sets = list(self.args.job_set)
        if variant is not None:
            sets += VARIANTS[variant]
        out: dict[str, Any] = apply_overrides(spec, sets)
        return out

    # -- the paths -----------------------------------------------------------------------

    def offline(self) -> None:
        self.run_path("offline", "1-offline", self.config())

    def http(self) -> None:
        """(2): every window on the fixed workload; the mixed one at the best of them
        (or every window too, with --sweep-mixed)."""
        best = None
        for wl in self.workloads:
            windows = self.args.windows
            if wl.name != "fixed" and best is not None and not self.args.sweep_mixed:
                windows = [best]
            self.warm_up()
            cfg = self.config(windows=windows, workloads=[{"name": wl.name, "path": str(wl.path)}])
            results = self.run_path("http", f"2-http-{wl.name}", cfg)
            if wl.name == "fixed" and results:
                best = max(results, key=lambda m: m["output_tokens"] / m["seconds"])["window"]

    def seed(self) -> None:
        for wl in self.workloads:
            self.warm_up()
            cfg = self.config(
                workload=wl.name,
                seed_rows=self.args.seed_rows,
                output=str(self.work / "out" / f"seed-{wl.name}"),
            )
            self.run_path("seed", f"3-seed-{wl.name}", cfg)

    def cli(self) -> None:
        """(4): `spark-vllm run` as a user types it, the whole process timed."""
        for wl in self.workloads:
            output = self.work / "out" / f"cli-{wl.name}"
            spec = self.job_spec_for(wl, output)
            spec_path = self.work / f"4-cli-{wl.name}.yaml"
            spec_path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
            self.warm_up()
            log_path = self.work / f"4-cli-{wl.name}.log"
            print(f"bench: 4-cli-{wl.name} ... ", end="", flush=True)
            with log_path.open("wb") as log:
                start = time.time()
                code = self.call(
                    [sys.executable, "-m", "spark_vllm.cli", "run", str(spec_path)], log
                )
                end = time.time()
            if code != 0:
                print(f"FAILED (exit {code}; log: {log_path})", flush=True)
                self.notes.append(f"4-cli-{wl.name} failed; see {_shown(log_path)}")
                continue
            print(f"done in {end - start:.0f} s", flush=True)
            n, ok, tokens = report.read_job_output(output)
            self.record(
                [
                    {
                        "path": "cli",
                        "workload": wl.name,
                        "requests": n,
                        "ok": ok,
                        "output_tokens": tokens,
                        "seconds": end - start,
                        "start": start,
                        "end": end,
                    }
                ]
            )

    def job(self) -> None:
        for wl in self.workloads:
            spec = self.job_spec_for(wl, self.work / "out" / f"job-{wl.name}")
            self.warm_up()
            self.run_path("job", f"5-job-{wl.name}", self.config(workload=wl.name, job_spec=spec))

    def variants(self) -> None:
        """(5) on the mixed workload with other settings: what each part of the job brings."""
        mixed = next(w for w in self.workloads if w.name == "mixed")
        for variant in self.args.variants:
            tag = f"5-job-{mixed.name}-{variant}"
            spec = self.job_spec_for(mixed, self.work / "out" / tag, variant)
            self.warm_up()
            results = self.run_path(
                "job", tag, self.config(workload=mixed.name, job_spec=spec, variant=variant)
            )
            for m in results:
                m["variant"] = variant
                m["variant_sets"] = VARIANTS[variant]
            self.save()

    def memory(self) -> None:
        a = self.args
        fixed = self.workloads[0]
        spec = self.job_spec(fixed, self.work / "out" / "memory-unused", 1)
        rate: float | None = None
        for wanted in sorted(a.memory_rows):
            rows = wanted
            if rate is not None and wanted / rate > a.memory_budget_s:
                rows = max(1000, int(rate * a.memory_budget_s) // 1000 * 1000)
                self.notes.append(
                    f"memory: {wanted} rows would take about {wanted / rate:.0f} s at the "
                    f"{rate:.0f} rows/s just measured (budget {a.memory_budget_s:.0f} s); "
                    f"ran {rows} rows instead"
                )
            self.warm_up()
            cfg = self.config(
                rows=rows,
                batch_rows=a.memory_batch_rows,
                job_spec=spec,
                questions=str(fixed.path),
            )
            results = self.run_path("memory", f"6-memory-{rows}", cfg)
            for m in results:
                m["rows_requested"] = wanted
                rate = m["requests"] / m["seconds"]

    # -- the whole run -------------------------------------------------------------------

    @contextlib.contextmanager
    def serve(self, model: Path, tag: str) -> Iterator[None]:
        """One vLLM server for the paths that follow, with (1)'s engine arguments."""
        from spark_vllm.driver.local_server import LocalServer

        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(self.args.kv_cache_gib)
        server = LocalServer(
            model=str(model),
            served_model_name=SERVED_NAME,
            log_path=self.work / f"vllm-server-{tag}.log",
            vllm_args=self.vllm_args(),
        )
        print(f"bench: starting the vLLM server for {model.name} ...", end=" ", flush=True)
        began = time.monotonic()
        with server:
            print(f"ready in {time.monotonic() - began:.0f} s", flush=True)
            self.base_url = server.base_url
            with MetricsSampler(server.base_url.removesuffix("/v1")) as self.sampler:
                yield
            self.sampler = None

    def run(self) -> dict[str, Any]:
        only = self.args.only
        unknown = [v for v in self.args.variants if v not in VARIANTS]
        if unknown:
            raise SystemExit(
                f"bench: unknown --variants {unknown}; expected some of {list(VARIANTS)}"
            )
        if "offline" in only:
            self.offline()
        throughput = [p for p in ("http", "seed", "cli", "job", "variants") if p in only]
        if throughput:
            with self.serve(self.args.model, "main"):
                for name in throughput:
                    getattr(self, name)()
        if "memory" in only:
            with self.serve(self.args.memory_model, "memory"):
                self.memory()
        if "ceiling" in only:
            Ceiling(self).run()
        self.save()
        return report.build(
            {k: _shown(v) for k, v in vars(self.args).items()},
            self.engine(),
            self.expected(),
            self.results,
            self.notes,
        )

    def expected(self) -> dict[str, dict[str, int]]:
        """Rows and output tokens each workload must give (ignore_eos makes lengths exact)."""
        out = {}
        for wl in self.workloads:
            lengths = [r.max_tokens for r in wl.rows()]
            out[wl.name] = {
                "rows": len(lengths),
                "tokens": sum(lengths),
                "seed_rows": self.args.seed_rows,
                "seed_tokens": sum(lengths[: self.args.seed_rows]),
            }
        return out


def rebuild(work: Path, results: Path) -> int:
    """The report of an earlier (possibly interrupted) run, from its work directory."""
    state = json.loads((work / "state.json").read_text(encoding="utf-8"))
    doc = report.build(
        state["settings"],
        state["engine"],
        state["expected"],
        state["results"],
        state["notes"],
        tuple(state["load_average"]) if "load_average" in state else None,
    )
    print(report.render(doc))
    paths = report.write(doc, results, work.name)
    print("\n".join(f"bench: wrote {p}" for p in paths))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rebuild is not None:
        return rebuild(args.rebuild, args.results)
    _defaults(args)
    args.model = args.model.resolve()
    args.memory_model = args.memory_model.resolve()
    if args.only & {"offline", "http", "seed", "cli", "job", "variants"}:
        ensure_model(args.model, ["--hidden", "512", "--layers", "6", "--heads", "8"])
    if "memory" in args.only:
        ensure_model(args.memory_model, ["--hidden", "128", "--layers", "2", "--heads", "2"])
    signal.signal(signal.SIGTERM, _terminate)
    bench = Bench(args)
    print(f"bench: {args.prompts} prompts per workload; work files in {bench.work}", flush=True)
    doc = bench.run()
    print(report.render(doc))
    paths = report.write(doc, args.results, bench.stamp)
    print("\n".join(f"bench: wrote {p}" for p in paths))
    return 0
