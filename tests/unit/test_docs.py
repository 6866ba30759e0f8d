"""The manual against the code: its command-line reference is the argument parser's (made
by scripts/docs_reference.py), and its job-spec reference table names every key of the
job spec's models and no key they lack."""

from __future__ import annotations

import re
import subprocess
import sys
import typing

import pytest
from pydantic import BaseModel

from spark_vllm.spec import JobSpec
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

JOB_SPEC_PAGE = ROOT / "docs" / "job-spec.md"


def test_the_cli_reference_is_the_parsers() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "docs_reference.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def _keys(model: type[BaseModel], prefix: str = "") -> dict[str, bool]:
    """Every key path of `model` -> whether it is a leaf (not a section of keys)."""
    found: dict[str, bool] = {}
    for name, info in model.model_fields.items():
        path = prefix + (info.alias or name)
        options = typing.get_args(info.annotation) or (info.annotation,)
        sections = [t for t in options if isinstance(t, type) and issubclass(t, BaseModel)]
        found[path] = not sections
        for section in sections:
            found.update(_keys(section, path + "."))
    return found


def _reference_rows() -> list[tuple[list[str], str]]:
    """(the key paths a row of the reference table names, the row's text)."""
    text = JOB_SPEC_PAGE.read_text()
    table = text[text.index("| key | default | meaning |") : text.index("\n## ")]
    rows = []
    for line in [line for line in table.splitlines() if line.startswith("| `")]:
        cell = line.split("|")[1]
        names, base = [], ""
        for name in re.findall(r"`([^`]+)`", cell):
            if name.startswith("."):
                name = base + name
            elif "." not in name and base and base != name:
                name = f"{base}.{name}"
            else:
                base = name.rsplit(".", 1)[0] if "." in name else ""
            names.append(name)
        rows.append((names, line))
    return rows


def test_the_job_spec_reference_names_only_keys_the_spec_has() -> None:
    keys = _keys(JobSpec)
    named = [name for names, _ in _reference_rows() for name in names]
    # sampling holds any request field vLLM takes besides the ones the models name
    unknown = [n for n in named if n not in keys and not n.startswith("sampling.")]
    assert unknown == []


def test_every_key_of_the_spec_is_in_the_reference() -> None:
    """A key is there when its row names it, or a sibling's row names it in its text
    (`also temperature, top_p, stop` in sampling.max_tokens's)."""
    rows = _reference_rows()
    named = {name for names, _ in rows for name in names}
    missing = []
    for key, leaf in _keys(JobSpec).items():
        if not leaf or key in named:
            continue
        parent, _, last = key.rpartition(".")
        siblings = [
            line
            for names, line in rows
            if any(n.rpartition(".")[0] == parent for n in names) and f"`{last}`" in line
        ]
        if not siblings:
            missing.append(key)
    assert missing == []
