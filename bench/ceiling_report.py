"""The ceiling path's part of the report: its tables, its targets and its two chart panels.

Measurements come from bench/ceiling.py (`path` ceiling-wrk, ceiling-bare, ceiling-job).
Rows/s of a job are rows over `run_job`'s wall time, timed by the bench around the call;
CPU seconds per 1,000 rows are the CPU the run's processes spent while `run_job` ran.
"""

from __future__ import annotations

from typing import Any

from bench.paths import Measurement

# The issue's targets for the job against the instant server.
CHAT_VS_BARE = 0.8
CHAT_ROWS_PER_S = 3000.0
EMBEDDING_ROWS_PER_S = 20_000.0
FIRST_REQUEST_S = 3.0
RESUME_S = 5.0
FIXED_COST_ROWS = 100_000
STANDIN_VS_BARE = 5.0

ROLES = ("python_workers", "jvm", "driver", "standin")


def _bare_key(m: Measurement) -> str:
    return str(m["kind"]) + ("-base64" if m.get("encoding_format") == "base64" else "")


def _reference(kind: str) -> str:
    """Which bare-client run a kind of job compares with: a batch file of chat lines, chat."""
    return "chat" if kind == "openai-batch" else kind


def _per_1k(cpu: dict[str, float], rows: int) -> dict[str, float | None]:
    return {role: (cpu[role] / rows * 1000 if rows and role in cpu else None) for role in ROLES}


def build(results: list[Measurement]) -> dict[str, Any] | None:
    """The ceiling section of the report; None when the path did not run."""
    ms = [m for m in results if m["path"].startswith("ceiling-")]
    if not ms:
        return None
    wrk = {
        m["kind"]: {"req_per_s": m["req_per_s"], "rows_per_s": m["rows_per_s"]}
        for m in ms
        if m["path"] == "ceiling-wrk"
    }
    bare: dict[str, dict[str, Any]] = {}
    for m in ms:
        if m["path"] != "ceiling-bare":
            continue
        key = _bare_key(m)
        rows_per_s = m["ok"] / m["seconds"]
        served = wrk.get(_reference(m["kind"]) if key == m["kind"] else "")
        bare[key] = {
            "kind": m["kind"],
            "encoding_format": m.get("encoding_format", "float"),
            "rows": m["requests"],
            "ok": m["ok"],
            "seconds": m["seconds"],
            "rows_per_s": rows_per_s,
            "req_per_s": m["http_requests"] / m["seconds"],
            "window": m["window"],
            "batch_size": m["batch_size"],
            "cpu_per_1k": {
                "client": m["cpu_s"]["client"] / m["ok"] * 1000 if m["ok"] else None,
                "standin": m["cpu_s"].get("standin", 0.0) / m["ok"] * 1000 if m["ok"] else None,
            },
            "standin_over_bare": served["rows_per_s"] / rows_per_s if served else None,
            "check": "ok" if m["ok"] == m["requests"] else f"{m['ok']} of {m['requests']} rows",
            "load_1m": m.get("load_1m"),
        }
    jobs, resumes = [], []
    for m in sorted(
        (m for m in ms if m["path"] == "ceiling-job"), key=lambda m: (m["rows_wanted"], m["kind"])
    ):
        wanted = m["rows_wanted"]
        if m["resume"]:
            sent_nothing = m["requests"] == 0 and m["standin_posts"] == 0
            resumes.append(
                {
                    "kind": m["kind"],
                    "rows": wanted,
                    "seconds": m["seconds"],
                    "job_wall_s": m["job_wall_s"],
                    "skipped": m["skipped"],
                    "requests_sent": m["standin_posts"],
                    "cpu_s": m["cpu_s"],
                    "load_1m": m.get("load_1m"),
                    "check": "ok"
                    if sent_nothing and m["skipped"] == wanted
                    else f"sent {m['standin_posts']}, skipped {m['skipped']} of {wanted}",
                }
            )
            continue
        ref = bare.get(_reference(m["kind"]))
        rows_per_s = m["requests"] / m["seconds"]
        complete = m["ok"] == wanted and m["standin_rows"] == wanted
        jobs.append(
            {
                "kind": m["kind"],
                "rows": wanted,
                "ok": m["ok"],
                "seconds": m["seconds"],
                "job_wall_s": m["job_wall_s"],
                "rows_per_s": rows_per_s,
                "vs_bare": rows_per_s / ref["rows_per_s"] if ref else None,
                "streaming_rows_per_s": (
                    m["requests"] / m["streaming_s"] if m.get("streaming_s") else None
                ),
                "first_request_s": m["first_request_s"],
                "after_last_answer_s": m["after_last_answer_s"],
                "cpu_per_1k": _per_1k(m["cpu_s"], m["requests"]),
                "worker_peak_mib": m["peak_rss_mib"].get("python_workers"),
                "jvm_peak_mib": m["peak_rss_mib"].get("jvm"),
                "requests_sent": m["standin_posts"],
                "load_1m": m.get("load_1m"),
                "check": "ok"
                if complete
                else f"{m['ok']} ok, {m['standin_rows']} rows sent, of {wanted}",
            }
        )
    return {
        "wrk": wrk,
        "bare": bare,
        "jobs": jobs,
        "resumes": resumes,
        "memory_verdict": _memory_verdict(jobs),
    }


def _memory_verdict(jobs: list[dict[str, Any]]) -> str | None:
    """Flat: the chat worker's peak at the largest size within max(16 MiB, 10 %) of the
    smallest's (the bench's memory rule)."""
    chat = [j for j in jobs if j["kind"] == "chat" and j["worker_peak_mib"]]
    if len(chat) < 2:
        return None
    small, large = chat[0], chat[-1]
    growth = large["worker_peak_mib"] - small["worker_peak_mib"]
    flat = growth <= max(16.0, 0.10 * small["worker_peak_mib"])
    return (
        f"{'FLAT' if flat else 'GROWS'}: a chat task's Python worker peaked at "
        f"{large['worker_peak_mib']:.0f} MiB over {large['rows']} rows against "
        f"{small['worker_peak_mib']:.0f} MiB over {small['rows']} ({growth:+.1f} MiB; "
        "sampled every 0.25 s)"
    )


def _largest(jobs: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    found = [j for j in jobs if j["kind"] == kind]
    return found[-1] if found else None


def _target(name: str, value: float | None, met: bool, unit: str, why: str) -> dict[str, Any]:
    if value is None:
        return {"target": name, "status": "NOT MEASURED", "value": None, "why": why}
    return {"target": name, "status": "MET" if met else "MISSED", "value": value, "unit": unit}


def targets(section: dict[str, Any] | None, slots: int) -> list[dict[str, Any]]:
    """The issue's targets for the ceiling path, judged on the largest size that ran (the
    fixed costs on the 100,000-row runs), and the check that the stand-in is fast enough."""
    if section is None:
        return []
    jobs, bare = section["jobs"], section["bare"]
    out = []
    chat = _largest(jobs, "chat")
    size = f", {chat['rows']} rows" if chat else ""
    ratio = chat["vs_bare"] if chat else None
    out.append(
        _target(
            f"ceiling: chat job >= {CHAT_VS_BARE:g} x bare client{size}",
            ratio,
            ratio is not None and ratio >= CHAT_VS_BARE,
            "",
            "no chat run with a bare client",
        )
    )
    rate = chat["rows_per_s"] if chat else None
    out.append(
        _target(
            f"ceiling: chat job >= {CHAT_ROWS_PER_S:,.0f} rows/s, local[{slots}]{size}",
            rate,
            rate is not None and rate >= CHAT_ROWS_PER_S,
            " rows/s",
            "no chat run",
        )
    )
    emb = _largest(jobs, "embedding")
    rate = emb["rows_per_s"] if emb else None
    out.append(
        _target(
            f"ceiling: embedding job >= {EMBEDDING_ROWS_PER_S:,.0f} rows/s"
            + (f", {emb['rows']} rows" if emb else ""),
            rate,
            rate is not None and rate >= EMBEDDING_ROWS_PER_S,
            " rows/s",
            "no embedding run",
        )
    )
    at = next((j for j in jobs if j["kind"] == "chat" and j["rows"] == FIXED_COST_ROWS), None)
    first = at["first_request_s"] if at else None
    out.append(
        _target(
            f"ceiling: first request <= {FIRST_REQUEST_S:g} s, chat, {FIXED_COST_ROWS} rows",
            first,
            first is not None and first <= FIRST_REQUEST_S,
            " s",
            f"no {FIXED_COST_ROWS}-row chat run (--ceiling-rows)",
        )
    )
    resume = next((r for r in section["resumes"] if r["rows"] == FIXED_COST_ROWS), None)
    took = resume["seconds"] if resume else None
    out.append(
        _target(
            f"ceiling: resume of {FIXED_COST_ROWS} done rows < {RESUME_S:g} s",
            took,
            took is not None and took < RESUME_S,
            " s",
            f"no {FIXED_COST_ROWS}-row resume (--ceiling-rows)",
        )
    )
    for kind in ("chat", "embedding"):
        b = bare.get(kind)
        over = b["standin_over_bare"] if b else None
        out.append(
            _target(
                f"check: stand-in (wrk) >= {STANDIN_VS_BARE:g} x bare client, {kind}",
                over,
                over is not None and over >= STANDIN_VS_BARE,
                "",
                "wrk or the bare client did not run",
            )
        )
    return out


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render(section: dict[str, Any] | None, slots: int, dim: int) -> list[str]:
    if section is None:
        return []
    lines = [
        "",
        f"ceiling: the job against an instant stand-in server (an infinitely fast GPU), "
        f"local[{slots}]",
    ]
    wrk = section["wrk"]
    if wrk:
        parts = [
            f"{k} {v['req_per_s']:,.0f} req/s"
            + (f" ({v['rows_per_s']:,.0f} rows/s)" if v["rows_per_s"] != v["req_per_s"] else "")
            for k, v in wrk.items()
        ]
        lines.append(f"  stand-in alone (wrk, 1 thread, 128 connections): {', '.join(parts)}")
    if section["bare"]:
        first = next(iter(section["bare"].values()))
        batch = max(b["batch_size"] for b in section["bare"].values())
        lines += [
            f"  bare client: asyncio + aiohttp, one process, {first['window']} requests in "
            f"flight; embedding {batch} rows a request, {dim} dimensions",
            f"    {'kind':<22} {'rows':>7} {'rows/s':>8} {'req/s':>8} {'CPU s/1k rows':>14}"
            f" {'stand-in/bare':>14} {'load':>5}  check",
        ]
        for key, b in section["bare"].items():
            name = key if b["encoding_format"] == "float" else f"{b['kind']} (base64)"
            lines.append(
                f"    {name:<22} {b['rows']:>7} {b['rows_per_s']:>8,.0f} {b['req_per_s']:>8,.0f}"
                f" {_num(b['cpu_per_1k']['client'], '.3f'):>14}"
                f" {_num(b['standin_over_bare'], '.1f'):>14} {_num(b['load_1m'], '.1f'):>5}"
                f"  {b['check']}"
            )
    if section["jobs"]:
        lines += [
            "  the job: run_job in a warm session. rows/s: over run_job's wall time; stream: "
            "from the first request",
            "  to the last answer; first, after: seconds from run_job's start to the first "
            "request, from the last answer",
            "  to run_job's end; CPU s per 1,000 rows of the Python workers, the JVM, the "
            "driver's Python, the stand-in;",
            "  worker MiB: a Python worker's peak RSS; load: the 1-minute load average at "
            "the run's end",
            f"    {'kind':<13} {'rows':>7} {'rows/s':>7} {'vs bare':>7} {'stream':>7}"
            f" {'first':>6} {'after':>6} {'workers':>8} {'JVM':>6} {'driver':>6}"
            f" {'stand-in':>8} {'worker MiB':>10} {'load':>5}  check",
        ]
        for j in section["jobs"]:
            cpu = j["cpu_per_1k"]
            cells = [
                f"{j['kind']:<13}",
                f"{j['rows']:>7}",
                f"{j['rows_per_s']:>7,.0f}",
                f"{_num(j['vs_bare'], '.2f'):>7}",
                f"{_num(j['streaming_rows_per_s'], ',.0f'):>7}",
                f"{_num(j['first_request_s'], '.1f'):>6}",
                f"{_num(j['after_last_answer_s'], '.1f'):>6}",
                f"{_num(cpu['python_workers'], '.3f'):>8}",
                f"{_num(cpu['jvm'], '.3f'):>6}",
                f"{_num(cpu['driver'], '.3f'):>6}",
                f"{_num(cpu['standin'], '.3f'):>8}",
                f"{_num(j['worker_peak_mib'], '.0f'):>10}",
                f"{_num(j['load_1m'], '.1f'):>5}",
            ]
            lines.append("    " + " ".join(cells) + f"  {j['check']}")
    for r in section["resumes"]:
        lines.append(
            f"  resume of {r['rows']} done {r['kind']} rows: run_job {r['seconds']:.1f} s "
            f"(its summary's wall time {r['job_wall_s']:.1f} s), {r['requests_sent']} requests "
            f"sent, {r['skipped']} skipped; JVM CPU {r['cpu_s'].get('jvm', 0):.1f} s; load "
            f"{_num(r['load_1m'], '.1f')}  {r['check']}"
        )
    if section["memory_verdict"]:
        lines.append(f"  {section['memory_verdict']}")
    return lines


KIND_COLORS = {
    "chat": "#55a868",
    "completion": "#4c72b0",
    "embedding": "#dd8452",
    "openai-batch": "#8172b3",
}


def throughput_panel(ax: Any, section: dict[str, Any]) -> None:
    """Rows/s per kind: the bare client (grey) and the job at each size (log scale)."""
    labels, values, colors, texts = [], [], [], []
    for key, b in section["bare"].items():
        labels.append(f"bare client, {key}")
        values.append(b["rows_per_s"])
        colors.append("#8c8c8c")
        texts.append(f" {b['rows_per_s']:,.0f}")
    for j in section["jobs"]:
        labels.append(f"job, {j['kind']}, {j['rows']:,} rows")
        values.append(j["rows_per_s"])
        colors.append(KIND_COLORS.get(j["kind"], "#999999"))
        ratio = f"  ({j['vs_bare']:.2f}x bare)" if j["vs_bare"] is not None else ""
        texts.append(f" {j['rows_per_s']:,.0f}{ratio}")
    ys = list(range(len(labels)))[::-1]
    ax.barh(ys, values, color=colors)
    ax.set_yticks(ys, labels, fontsize=7)
    for y, v, t in zip(ys, values, texts, strict=True):
        ax.text(v, y, t, va="center", fontsize=7)
    for x, text in ((CHAT_ROWS_PER_S, "chat target"), (EMBEDDING_ROWS_PER_S, "embedding target")):
        ax.axvline(x, color="#2e6b3c", linestyle="--", linewidth=1)
        ax.text(x, len(labels) - 0.4, text, fontsize=7, color="#2e6b3c", ha="center")
    ax.set_xscale("log")
    ax.set_xlim(min([*values, 100.0]) / 2, max([*values, EMBEDDING_ROWS_PER_S]) * 8)
    ax.set_ylim(-0.7, len(labels) + 0.2)
    ax.set_title("ceiling: rows/s against an instant server (higher is better)", fontsize=10)
    ax.set_xlabel("rows / s (log scale); dashed: targets", fontsize=9)


def fixed_cost_panel(ax: Any, section: dict[str, Any]) -> None:
    """Per job run: seconds before the first request and after the last answer; resumes."""
    labels, before, after, colors = [], [], [], []
    for j in section["jobs"]:
        labels.append(f"{j['kind']}, {j['rows']:,} rows")
        before.append(j["first_request_s"] or 0.0)
        after.append(j["after_last_answer_s"] or 0.0)
        colors.append("#c44e52")
    for r in section["resumes"]:
        labels.append(f"resume, {r['kind']}, {r['rows']:,} done rows")
        before.append(r["seconds"])
        after.append(0.0)
        colors.append("#8172b3")
    ys = list(range(len(labels)))[::-1]
    ax.barh(ys, before, color=colors)
    ax.barh(ys, after, left=before, color="#e8a0a2")
    ax.set_yticks(ys, labels, fontsize=7)
    for y, b, a, c in zip(ys, before, after, colors, strict=True):
        text = f" {b:.1f} s" if c == "#8172b3" else f" {b:.1f} + {a:.1f} s"
        ax.text(b + a, y, text, va="center", fontsize=7)
    ax.axvline(FIRST_REQUEST_S, color="#8b2e31", linestyle="--", linewidth=1)
    ax.axvline(RESUME_S, color="#8b2e31", linestyle=":", linewidth=1)
    ax.set_xlim(0, max([b + a for b, a in zip(before, after, strict=True)] + [RESUME_S]) * 1.35)
    ax.set_title(
        f"ceiling: fixed cost (dashed: first request {FIRST_REQUEST_S:g} s; "
        f"dotted: resume {RESUME_S:g} s)",
        fontsize=10,
    )
    ax.set_xlabel(
        "seconds. red: run_job's start to the first request; pink: the last answer to "
        "run_job's end;\npurple: a whole run_job with nothing left to send (lower is better)",
        fontsize=8,
    )
