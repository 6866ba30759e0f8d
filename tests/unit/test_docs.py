"""The manual against the code: its command-line reference is the argument parser's, and
its job-spec key table is the pydantic models' (both made by scripts/docs_reference.py);
every key of the models says what it does, which that table and the chart's schema show."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest
from pydantic import BaseModel

from spark_vllm.spec import JobSpec
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def test_the_generated_references_are_the_codes() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "docs_reference.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def _keys(model: type[BaseModel], prefix: str = "") -> dict[str, str | None]:
    """Every leaf key path of `model` -> its description."""
    found: dict[str, str | None] = {}
    for name, info in model.model_fields.items():
        path = prefix + (info.alias or name)
        options = typing.get_args(info.annotation) or (info.annotation,)
        sections = [t for t in options if isinstance(t, type) and issubclass(t, BaseModel)]
        if not sections:
            found[path] = info.description
        for section in sections:
            found.update(_keys(section, path + "."))
    return found


def test_every_key_of_the_spec_says_what_it_does() -> None:
    keys = _keys(JobSpec)
    assert len(keys) > 90
    assert [key for key, text in keys.items() if not text] == []


def test_the_job_spec_page_shows_every_key() -> None:
    page = (ROOT / "docs" / "job-spec.md").read_text()
    assert [key for key in _keys(JobSpec) if f"| `{key}` |" not in page] == []


def test_make_help_says_which_adapters_the_lora_example_uses():
    """`make help` said the LoRA example had base-model rows; its data has none."""
    import json

    help_line = next(
        line for line in (ROOT / "Makefile").read_text().splitlines()
        if line.startswith("run-lora:")
    )  # fmt: skip
    rows = [
        json.loads(line)
        for line in (ROOT / "examples/data/lora-questions.jsonl").read_text().splitlines()
        if line.strip()
    ]
    adapters = {row["adapter"] for row in rows}
    assert None not in adapters and "no base-model rows" in help_line
    assert all(name in help_line for name in adapters), (adapters, help_line)
