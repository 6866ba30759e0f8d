"""The ceiling path: the job against an instant stand-in server, an infinitely fast GPU.

With a real engine the engine is the limit and hides the job's own costs. Here the
server answers at once (bench/standin/main.go), so what limits each run is the client:

- `wrk` against the stand-in: what the server can take (it must be far above the rest);
- the bare client: asyncio + aiohttp in one process, a window of requests in flight;
- the job: `run_job` in a warm SparkSession on local[N], for chat, completion,
  embedding and an OpenAI batch file, at each size of `--ceiling-rows`, and once more
  over the chat output of 100,000 rows (or the largest size), with nothing left to send.

Each bare and job run is its own process (bench/ceiling_paths.py). Inputs are written
here: a parquet file (`id`, `question`) per size, and a batch file of chat lines.
See bench/README.md, "The ceiling path".
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.paths import Measurement
from bench.standin import StandIn, ensure_binary, ensure_wrk, wrk_rate
from bench.workload import QUESTIONS, SYSTEM

if TYPE_CHECKING:
    from bench.run import Bench

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("chat", "completion", "embedding", "openai-batch")
SERVED_NAME = "standin-model"
MAX_TOKENS = 16
RESUME_ROWS = 100_000


def base_questions() -> list[str]:
    with QUESTIONS.open(encoding="utf-8") as fh:
        return [json.loads(line)["question"] for line in fh if line.strip()]


def write_parquet(path: Path, rows: int, questions: list[str]) -> None:
    """`rows` rows of `id` (r000000001, ...) and `question` (numbered, so all distinct)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("id", pa.string()), ("question", pa.string())])
    step = 100_000
    with pq.ParquetWriter(path, schema) as writer:
        for first in range(0, rows, step):
            ids = [f"r{i:09d}" for i in range(first, min(rows, first + step))]
            texts = [
                f"Question {i + 1}: {questions[i % len(questions)]}"
                for i in range(first, first + len(ids))
            ]
            writer.write_table(pa.table([ids, texts], schema=schema))


def write_batch_file(path: Path, rows: int, questions: list[str]) -> None:
    """`rows` chat request lines of an OpenAI batch file, as a user would bring it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            body = {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {
                        "role": "user",
                        "content": f"Question {i + 1}: {questions[i % len(questions)]}",
                    },
                ],
                "max_tokens": MAX_TOKENS,
            }
            line = {"custom_id": f"r{i:09d}", "method": "POST", "url": "/v1/chat/completions"}
            fh.write(json.dumps({**line, "body": body}) + "\n")


def job_spec(
    kind: str,
    source: Path,
    output: Path,
    base_url: str,
    slots: int,
    batch_size: int,
    sets: list[str],
) -> dict[str, Any]:
    """The job's spec for one kind: the defaults, plus what the kind needs, plus --ceiling-set."""
    from spark_vllm.spec import apply_overrides

    spec: dict[str, Any] = {
        "input": {"format": "parquet", "path": str(source), "id_column": "id"},
        "output": {"format": "parquet", "path": str(output)},
        "endpoint": {"base_url": base_url, "model": SERVED_NAME},
        "task": kind,
        "prompt": {"template": "{{ question }}"},
        "sampling": {"max_tokens": MAX_TOKENS},
        "spark": {"master": f"local[{slots}]", "app_name": f"bench-ceiling-{kind}"},
    }
    if kind == "chat":
        spec["prompt"]["system"] = SYSTEM
    elif kind == "embedding":
        del spec["sampling"]
        spec["embedding"] = {"batch_size": batch_size}
    elif kind == "openai-batch":
        spec = {
            "input": {"format": "openai-batch", "path": str(source)},
            "output": {"path": str(output)},
            "endpoint": spec["endpoint"],
            "spark": spec["spark"],
        }
    out: dict[str, Any] = apply_overrides(spec, sets)
    return out


class Ceiling:
    """Runs the ceiling path for a Bench: the stand-in up, then wrk, bare, job, resume."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.args = bench.args
        self.dir = bench.work / "ceiling"
        self.questions = base_questions()

    def run(self) -> None:
        a = self.args
        unknown = [k for k in a.ceiling_kinds if k not in KINDS]
        if unknown:
            raise SystemExit(f"bench: unknown --ceiling-kinds {unknown}; expected some of {KINDS}")
        binary = ensure_binary(ROOT / "build" / "standin")
        wrk = ensure_wrk()
        self.dir.mkdir(parents=True, exist_ok=True)
        log = self.bench.work / "standin.log"
        with StandIn(binary, SERVED_NAME, a.ceiling_dim, log) as server:
            print(f"bench: ceiling: the stand-in server answers at {server.root}", flush=True)
            self.server = server
            self.wrk(wrk)
            # A batch file of chat lines compares with the bare chat client.
            wanted = {"chat" if k == "openai-batch" else k for k in a.ceiling_kinds}
            for kind in ("chat", "completion", "embedding"):
                if kind in wanted:
                    self.bare(kind)
            if "embedding" in wanted:
                # What a client gains when vLLM sends vectors as base64 instead of floats.
                self.bare("embedding", encoding="base64")
            sizes = sorted(a.ceiling_rows)
            resume_at = RESUME_ROWS if RESUME_ROWS in sizes else sizes[-1]
            for rows in sizes:
                self.size(rows, resume=rows == resume_at)

    def annotate(self, results: list[Measurement], cpu_before: float) -> None:
        """Add the stand-in's CPU seconds during the run and the machine's load average
        at its end (others' work skews the figures) to its recorded measurements."""
        spent = self.server.cpu_s() - cpu_before
        for m in results:
            m.setdefault("cpu_s", {})["standin"] = spent
            m["load_1m"] = os.getloadavg()[0]
        self.bench.save()

    def wrk(self, wrk: str | None) -> None:
        """The stand-in's own rate, chat and embeddings, with wrk (one thread)."""
        from bench.ceiling_paths import bare_body

        if wrk is None:
            self.bench.notes.append(
                "ceiling: wrk is not installed (apt-get install wrk), so the stand-in's own "
                "rate was not measured"
            )
            return
        texts = [f"Question {i + 1}: {q}" for i, q in enumerate(self.questions)]
        for kind, path in (("chat", "/chat/completions"), ("embedding", "/embeddings")):
            batch = self.args.ceiling_batch_size if kind == "embedding" else 1
            body = bare_body(kind, SERVED_NAME, texts[:batch], MAX_TOKENS)
            print(f"bench: ceiling-wrk-{kind} ... ", end="", flush=True)
            rate = wrk_rate(wrk, self.server.base_url + path, body, self.args.ceiling_wrk_s)
            print("failed" if rate is None else f"{rate:.0f} req/s", flush=True)
            if rate is None:
                self.bench.notes.append(f"ceiling: wrk against {path} failed or saw errors")
                continue
            self.bench.record(
                [
                    {
                        "path": "ceiling-wrk",
                        "workload": "ceiling",
                        "kind": kind,
                        "req_per_s": rate,
                        "rows_per_s": rate * batch,
                        "batch_size": batch,
                        "seconds": self.args.ceiling_wrk_s,
                    }
                ]
            )

    def bare(self, kind: str, encoding: str = "float") -> None:
        a = self.args
        cfg = {
            "encoding_format": encoding,
            "base_url": self.server.base_url,
            "model": SERVED_NAME,
            "kind": kind,
            "rows": a.ceiling_bare_rows,
            "window": a.ceiling_window,
            "batch_size": a.ceiling_batch_size,
            "max_tokens": MAX_TOKENS,
            "questions": self.questions,
        }
        before = self.server.cpu_s()
        tag = f"c-bare-{kind}" + ("-base64" if encoding == "base64" else "")
        results = self.bench.run_path("bare", tag, cfg, module="bench.ceiling_paths")
        self.annotate(results, before)

    def size(self, rows: int, resume: bool) -> None:
        """Every kind's job over `rows` rows; then, at the resume size, chat again."""
        a = self.args
        parquet = self.dir / f"input-{rows}.parquet"
        write_parquet(parquet, rows, self.questions)
        batch_file = self.dir / f"input-{rows}.jsonl"
        if "openai-batch" in a.ceiling_kinds:
            write_batch_file(batch_file, rows, self.questions)
        for kind in a.ceiling_kinds:
            source = batch_file if kind == "openai-batch" else parquet
            output = self.dir / f"out-{kind}-{rows}"
            spec = job_spec(
                kind,
                source,
                output,
                self.server.base_url,
                a.slots,
                a.ceiling_batch_size,
                a.ceiling_set,
            )
            self.job(f"c-job-{kind}-{rows}", kind, rows, spec)
            if resume and kind == "chat":
                # The same spec again: every id succeeded, nothing is left to send.
                self.job(f"c-resume-{kind}-{rows}", kind, rows, spec, resume=True)
            shutil.rmtree(output, ignore_errors=True)
        parquet.unlink(missing_ok=True)
        batch_file.unlink(missing_ok=True)

    def job(
        self, tag: str, kind: str, rows: int, spec: dict[str, Any], resume: bool = False
    ) -> None:
        cfg = {
            "base_url": self.server.base_url,
            "kind": kind,
            "rows": rows,
            "slots": self.args.slots,
            "job_spec": spec,
            "resume": resume,
        }
        before = self.server.cpu_s()
        results = self.bench.run_path("job", tag, cfg, module="bench.ceiling_paths")
        self.annotate(results, before)
