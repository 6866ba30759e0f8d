"""Side by side with the peers (issue 32): the same rows, the same server, other tools.

`make bench-peers` (`python -m bench.peers --help`). Against the instant stand-in server
(bench/standin.py: client-bound, an infinitely fast GPU) every tool sends the same chat
workload (bench/workload.py's JSON Lines), each in a process of its own
(bench/peers_paths.py), one after the other:

- the bare asyncio client (bench/ceiling_paths.py), the reference;
- spark-vllm's job (`run_job` in a warm SparkSession, as the ceiling path runs it);
- Ray Data LLM's HTTP processor and Daft's OpenAI provider, from a venv of their own made
  from requirements/bench-peers.txt under ~/.cache/spark-vllm/, never the project's.

Per tool: rows/s and its ratio to the bare client, CPU seconds per 1,000 rows and peak RSS
of the process tree, and the output's ids against the input's (answered, lost,
duplicated). A tool that cannot install or run is reported with its error and the others
still run. Writes bench/results/peers-<timestamp>.json. Not a test: targets print
MET / MISSED and never fail the run. See bench/README.md, "Side by side with the peers".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.ceiling import SERVED_NAME, base_questions, job_spec
from bench.paths import Measurement
from bench.standin import StandIn, ensure_binary
from bench.workload import questions, write

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements" / "bench-peers.txt"
TOOLS = ("bare", "spark-vllm", "ray-data-llm", "daft")
# Tools that run in the peers' venv rather than the project's.
PEERS = ("ray-data-llm", "daft")
MAX_TOKENS = 16
# spark-vllm against the best peer, rows/s (issue 32).
TARGET = 1.0


def peers_venv(cache: Path) -> Path:
    """The peers' venv for the current requirements file, made with pip from PyPI when
    missing: `cache/bench-peers-<digest>/`. Raises RuntimeError with pip's own words."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]
    venv = cache / f"bench-peers-{digest}"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.exists():
        return python
    print(f"bench: making the peers' venv {venv} (pip, PyPI) ...", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    # From PyPI only: a machine's local wheel folder would make the pins mean something else.
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    for argv in (
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
    ):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)  # noqa: S603
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-20:]
            raise RuntimeError(f"{' '.join(argv[:4])} failed: " + "\n".join(tail))
    stamp.touch()
    return python


def run_tool(
    python: str, tool: str, cfg: dict[str, Any], work: Path, env: dict[str, str], timeout_s: float
) -> tuple[Measurement | None, str | None]:
    """One tool's run in its own process group: (measurement, None) or (None, its error:
    the last lines of its log), stopped after `timeout_s`."""
    from spark_vllm.driver.local_server import stop_group

    cfg_path, out_path, log_path = (work / f"{tool}.{x}" for x in ("config.json", "json", "log"))
    cfg_path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    argv = [python, "-m", "bench.peers_paths", tool, str(cfg_path), str(out_path)]
    print(f"bench: {tool} ... ", end="", flush=True)
    began = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(  # noqa: S603
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
        try:
            code: int | str = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = f"timed out after {timeout_s:.0f} s"
        finally:
            # Whatever the tool left behind (a Ray cluster, a JVM) goes with its group.
            stop_group(proc)
    if code != 0:
        lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        status = code if isinstance(code, str) else f"exit {code}"
        print(f"FAILED ({status}; log: {log_path})", flush=True)
        return None, "\n".join([*lines[-15:], status])
    print(f"done in {time.monotonic() - began:.0f} s", flush=True)
    results: list[Measurement] = json.loads(out_path.read_text(encoding="utf-8"))
    return results[0], None


def derive(m: Measurement, bare_rate: float | None) -> Measurement:
    """Rows/s, its ratio to the bare client, CPU s per 1,000 rows, and the check."""
    rate = m["answered"] / m["seconds"] if m["seconds"] else 0.0
    cpu = sum(m["cpu_s"].values())
    ok = m["answered"] == m["rows"] and not (m["lost"] or m["duplicated"] or m["unknown_ids"])
    return {
        **m,
        "rows_per_s": rate,
        "vs_bare": rate / bare_rate if bare_rate else None,
        "cpu_s_total": cpu,
        "cpu_s_per_1k_rows": 1000 * cpu / m["rows"] if m["rows"] else None,
        "check": "ok" if ok else "WRONG",
    }


def targets(results: dict[str, Measurement]) -> list[dict[str, Any]]:
    """spark-vllm >= TARGET x the best peer that ran, rows/s."""
    ours = results.get("spark-vllm")
    ran = [results[p] for p in PEERS if p in results]
    if ours is None or not ran:
        return []
    best = max(ran, key=lambda m: m["rows_per_s"])
    ratio = ours["rows_per_s"] / best["rows_per_s"] if best["rows_per_s"] else float("inf")
    return [
        {
            "target": f"client-bound chat: spark-vllm >= {TARGET:g} x best peer ({best['tool']})",
            "value": ratio,
            "met": ratio >= TARGET,
        }
    ]


def render(doc: dict[str, Any]) -> str:
    lines = [
        f"client-bound chat, {doc['rows']} rows, instant stand-in server, "
        f"local[{doc['slots']}] / {doc['slots']} CPUs",
        f"  {'tool':<14} {'version':<10} {'rows/s':>9} {'vs bare':>8} {'time s':>7} "
        f"{'CPU s/1k':>9} {'peak MiB':>9} {'answered':>9} {'lost':>5} {'dup':>4}  check",
    ]
    for tool in TOOLS:
        if tool in doc["errors"]:
            # The error's last line (a log's, or pip's) and the exit status; all of it in the JSON.
            last = "; ".join(doc["errors"][tool].splitlines()[-2:])[:120]
            lines.append(f"  {tool:<14} did not run: {last}")
            continue
        m = doc["results"].get(tool)
        if m is None:
            continue
        vs = "-" if m["vs_bare"] is None else f"{m['vs_bare']:.2f}"
        lines.append(
            f"  {tool:<14} {m['version'] or '-':<10} {m['rows_per_s']:>9,.0f} {vs:>8} "
            f"{m['seconds']:>7.1f} {m['cpu_s_per_1k_rows']:>9.3f} {m['peak_tree_rss_mib']:>9.0f} "
            f"{m['answered']:>9} {m['lost']:>5} {m['duplicated']:>4}  {m['check']}"
        )
    lines.append(f"  load average at the end: {doc['load_average'][0]:.1f}")
    lines.append("targets")
    for t in doc["targets"]:
        lines.append(f"  {'MET' if t['met'] else 'MISSED':<8} {t['target']:<60} {t['value']:.2f}")
    if not doc["targets"]:
        lines.append("  (none checked: spark-vllm or every peer did not run)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    p.add_argument("--rows", type=int, default=10_000, help="chat rows (quick: 2000)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2,000 rows")
    p.add_argument(
        "--tools",
        type=lambda s: [t for t in s.split(",") if t],
        default=list(TOOLS),
        help=f"which tools ({','.join(TOOLS)}); the bare client is the reference",
    )
    p.add_argument("--slots", type=int, default=2, help="Spark local[N]; Ray's CPUs and actors")
    p.add_argument("--window", type=int, default=256, help="the bare client's requests in flight")
    p.add_argument(
        "--ray-batch-size", type=int, default=64, help="HttpRequestProcessorConfig.batch_size"
    )
    p.add_argument("--ray-object-store-mib", type=int, default=256, help="Ray's object store")
    p.add_argument(
        "--daft-morsel-rows",
        type=int,
        default=256,
        help="Daft's default_morsel_size: the requests its prompter starts at once (Daft's own "
        "default, 131072, starts every row and stalled here at 2,000 rows; 0 keeps it)",
    )
    p.add_argument(
        "--tool-timeout-s", type=float, default=900.0, help="a tool still running is stopped"
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "spark-vllm",
        help="where the peers' venv is made",
    )
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "bench-peers")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = [t for t in args.tools if t not in TOOLS]
    if unknown:
        raise SystemExit(f"bench.peers: unknown --tools {unknown}; expected some of {TOOLS}")
    rows = 2000 if args.quick and args.rows == 10_000 else args.rows
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    work = args.work / stamp
    work.mkdir(parents=True, exist_ok=True)
    workload = write(work / "chat.jsonl", "chat", questions(rows), [MAX_TOKENS] * rows)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "RAY_USAGE_STATS_ENABLED": "0",
        "DAFT_ANALYTICS_ENABLED": "0",
    }
    errors: dict[str, str] = {}
    pythons = {t: sys.executable for t in TOOLS}
    if any(t in PEERS for t in args.tools):
        try:
            peer_python = str(peers_venv(args.cache))
            pythons.update({t: peer_python for t in PEERS})
        except (RuntimeError, OSError) as exc:
            errors.update({t: str(exc) for t in PEERS if t in args.tools})

    results: dict[str, Measurement] = {}
    binary = ensure_binary(ROOT / "build" / "standin")
    with StandIn(binary, SERVED_NAME, 384, work / "standin.log") as server:
        print(f"bench: {rows} chat rows; the stand-in answers at {server.root}", flush=True)
        for tool in args.tools:
            if tool in errors:
                continue
            output = work / f"out-{tool}"
            cfg: dict[str, Any] = {
                "base_url": server.base_url,
                "model": SERVED_NAME,
                "kind": "chat",
                "rows": rows,
                "slots": args.slots,
                "workload": str(workload.path),
                "output": str(output),
                "max_tokens": MAX_TOKENS,
                "window": args.window,
                "batch_size": 1,
                "questions": base_questions(),
                "ray_batch_size": args.ray_batch_size,
                "ray_object_store_mib": args.ray_object_store_mib,
                "daft_morsel_rows": args.daft_morsel_rows,
            }
            if tool == "spark-vllm":
                spec = job_spec("chat", workload.path, output, server.base_url, args.slots, 1, [])
                spec["input"] = {"format": "jsonl", "path": str(workload.path), "id_column": "id"}
                cfg["job_spec"] = spec
            m, error = run_tool(pythons[tool], tool, cfg, work, env, args.tool_timeout_s)
            if error is not None:
                errors[tool] = error
            elif m is not None:
                results[tool] = m

    bare = results.get("bare")
    bare_rate = bare["answered"] / bare["seconds"] if bare else None
    derived = {t: derive(m, bare_rate) for t, m in results.items()}
    doc = {
        "kind": "peers",
        "rows": rows,
        "slots": args.slots,
        "window": args.window,
        "ray_batch_size": args.ray_batch_size,
        "daft_morsel_rows": args.daft_morsel_rows,
        "requirements_sha256": hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest(),
        "results": derived,
        "errors": errors,
        "targets": targets(derived),
        "load_average": os.getloadavg(),
        "todo": [
            "engine-bound: the real vLLM CPU server and `vllm run-batch` on the same batch file",
            "embedding, shared prefixes, the fault proxy, 100k rows, the picture",
        ],
    }
    print(render(doc))
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"peers-{stamp}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"bench: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
