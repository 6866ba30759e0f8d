"""The workloads every path runs: the same chat prompts and the same output lengths.

A workload is a JSON Lines file, one row per request: `id`, `question`, `max_tokens`
and `sampling` (the same value as a mapping, for a job spec that reads per-row sampling
from a column). Every path reads that file, so all paths send identical requests.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SYSTEM = "You are a concise assistant. Answer in at most three sentences."
QUESTIONS = Path(__file__).resolve().parent.parent / "examples" / "data" / "questions.jsonl"

# Mixed lengths come in blocks of this many rows, each block a shuffle of the same evenly
# spaced lengths: any prefix of whole blocks has exactly the distribution of the whole.
MIX_BLOCK = 64


@dataclass(frozen=True)
class Row:
    id: str
    question: str
    max_tokens: int


@dataclass(frozen=True)
class Workload:
    name: str
    path: Path

    def rows(self, limit: int | None = None) -> list[Row]:
        out: list[Row] = []
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                if limit is not None and len(out) >= limit:
                    break
                d = json.loads(line)
                out.append(Row(d["id"], d["question"], int(d["max_tokens"])))
        return out


def questions(n: int, source: Path = QUESTIONS) -> list[str]:
    """n distinct questions: the sample dataset's, numbered, cycled as often as needed."""
    with source.open(encoding="utf-8") as fh:
        base = [json.loads(line)["question"] for line in fh if line.strip()]
    return [f"Question {i + 1}: {base[i % len(base)]}" for i in range(n)]


def mixed_lengths(n: int, low: int, high: int, seed: int) -> list[int]:
    """n output lengths spread evenly over [low, high], shuffled per block (seeded)."""
    grid = [round(low + (high - low) * k / (MIX_BLOCK - 1)) for k in range(MIX_BLOCK)]
    rng = random.Random(seed)  # noqa: S311 (a reproducible shuffle, not a secret)
    out: list[int] = []
    while len(out) < n:
        block = list(grid)
        rng.shuffle(block)
        out += block
    return out[:n]


def messages(question: str) -> list[dict[str, str]]:
    """The conversation for one row; the job builds the same from its spec (see run.py)."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def request_body(model: str, row: Row) -> dict[str, Any]:
    """The /v1/chat/completions body the HTTP paths send (the job sends the same fields)."""
    return {
        "model": model,
        "messages": messages(row.question),
        "max_tokens": row.max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
    }


def write(path: Path, name: str, texts: list[str], lengths: list[int]) -> Workload:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for i, (text, length) in enumerate(zip(texts, lengths, strict=True)):
            row = {
                "id": f"r{i:07d}",
                "question": text,
                "max_tokens": length,
                "sampling": {"max_tokens": length},
            }
            fh.write(json.dumps(row) + "\n")
    return Workload(name, path)


def make_workloads(
    directory: Path, prompts: int, output_tokens: int, mix_low: int, mix_high: int, seed: int
) -> list[Workload]:
    texts = questions(prompts)
    return [
        write(directory / "fixed.jsonl", "fixed", texts, [output_tokens] * prompts),
        write(
            directory / "mixed.jsonl",
            "mixed",
            texts,
            mixed_lengths(prompts, mix_low, mix_high, seed),
        ),
    ]
