"""What makes a run's answers what they are, recorded beside its output.

A run's fingerprint holds the settings that decide its answers: the task, the model, the
prompt, the sampling (and the per-row sampling column), the structured output's schema,
the embedding options. Settings that change only how fast or how safely the answers come
(concurrency, retries, timeouts, partitions) are left out. Each run records its
fingerprint in the output store before it sends anything (files:
`output.path/_spark_vllm/runs/<run id>.json`; JDBC: the table `<table>__spark_vllm_runs`),
and resume counts an earlier success as done only when the run that made it had the same
fingerprint, or when a run with this fingerprint adopted it (`output.on_change: resume`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from spark_vllm.spec import JobSpec

# A value is shown in messages up to this many characters.
SHOWN_CHARS = 120

Fingerprint = dict[str, Any]


def fingerprint(spec: JobSpec) -> Fingerprint:
    """The settings that decide the answers, as dotted keys (`prompt.template`, …)."""
    found: Fingerprint = {"endpoint.model": spec.endpoint.model}
    if spec.input.format == "openai-batch":
        found["input.format"] = "openai-batch"  # each line's body says the rest
        return found
    found["task"] = spec.task
    if spec.prompt is not None:
        for key in ("template", "system", "column"):
            found[f"prompt.{key}"] = getattr(spec.prompt, key)
        # Left out when unset: older runs did not record them.
        if spec.prompt.content is not None:
            found["prompt.content"] = [p.model_dump(exclude_none=True) for p in spec.prompt.content]
    if spec.lora is not None:
        found["lora.adapter"] = spec.lora.adapter
        found["lora.column"] = spec.lora.column
    if spec.task == "embedding":
        for key in ("dimensions", "truncate_prompt_tokens"):
            found[f"embedding.{key}"] = getattr(spec.embedding, key)
        return found
    for key, value in sorted(spec.sampling.model_dump(exclude_none=True).items()):
        found[f"sampling.{key}"] = value
    found["sampling_column"] = spec.sampling_column
    if spec.on_overlong != "error":  # left out at its default: older runs did not record it
        found["on_overlong"] = spec.on_overlong
    so = spec.structured_output
    found["structured_output"] = so.model_dump(exclude_none=True) if so is not None else None
    return found


def changes(old: Fingerprint, new: Fingerprint) -> list[str]:
    """`key: old → new` for every key whose value differs (absent counts as null)."""
    lines = []
    for key in sorted({*old, *new}):
        before, after = old.get(key), new.get(key)
        if before != after:
            lines.append(f"{key}: {_show(before)} → {_show(after)}")
    return lines


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


@dataclass
class RunRecord:
    """What a run recorded before it sent anything: its fingerprint, and the earlier
    runs whose successes it counted as its own (`output.on_change: resume`)."""

    run: str
    fingerprint: Fingerprint | None
    adopted: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(
            {"run": self.run, "fingerprint": self.fingerprint, "adopted": self.adopted},
            ensure_ascii=False,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, run: str, text: str) -> RunRecord:
        data = json.loads(text)
        return cls(run, data.get("fingerprint"), list(data.get("adopted") or []))


def matching_runs(records: dict[str, RunRecord], current: Fingerprint) -> set[str]:
    """The runs whose successes count as done for `current`: those made with it, and
    those that such a run adopted."""
    same = {run for run, record in records.items() if record.fingerprint == current}
    for run in list(same):
        same.update(records[run].adopted)
    return same
