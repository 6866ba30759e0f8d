"""Write the manual's generated references, so the manual cannot drift from the code; a
unit test runs `--check`:
- docs/reference/cli.md: every verb of the `spark-vllm` command with its options, from the
  argument parser (spark_vllm.cli);
- the key table of docs/job-spec.md (between its two GENERATED markers): every key of the
  job spec with its default and its description, from the pydantic models (spark_vllm.spec),
  whose descriptions the chart's schema shows too (scripts/job_schema.py).

    python scripts/docs_reference.py           # rewrite both
    python scripts/docs_reference.py --check   # exit 1, with a diff, when one is out of date
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
CLI_REFERENCE = ROOT / "docs" / "reference" / "cli.md"
JOB_SPEC_PAGE = ROOT / "docs" / "job-spec.md"
BEGIN = "<!-- GENERATED from spark_vllm.spec by scripts/docs_reference.py: edit the models -->"
END = "<!-- END GENERATED -->"
# argparse wraps help to the terminal's width: fixed here, so the page is the same anywhere.
WIDTH = "100"


def cli_reference() -> str:
    os.environ["COLUMNS"] = WIDTH
    from spark_vllm.cli import build_parser

    parser = build_parser()
    (verbs,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {choice.dest: choice.help for choice in verbs._choices_actions}
    parts = [
        "# Command-line reference",
        "",
        "Every verb of `spark-vllm`, as `spark-vllm VERB --help` prints it. Generated from the",
        "argument parser by `scripts/docs_reference.py` (`make docs`); a test fails when this",
        "page and the code differ. The [command's guide](../command.md) says what each does.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
    ]
    for name, sub in verbs.choices.items():
        parts += [
            "",
            f"## `spark-vllm {name}`",
            "",
            f"{helps[name][0].upper()}{helps[name][1:]}.",
            "",
            "```text",
            sub.format_help().rstrip(),
            "```",
        ]
    return "\n".join(parts) + "\n"


def _shown(value: Any) -> str:
    """A default as the table shows it: YAML-like, in code."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{json.dumps(value)}`"


def _rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    rows = []
    for name, info in model.model_fields.items():
        key = prefix + (info.alias or name)
        options = typing.get_args(info.annotation) or (info.annotation,)
        sections = [t for t in options if isinstance(t, type) and issubclass(t, BaseModel)]
        if info.default is not PydanticUndefined:
            default = _shown(info.default)
        elif info.default_factory is not None:
            made = info.default_factory()  # type: ignore[call-arg]
            default = "" if isinstance(made, BaseModel) else _shown(made)
        else:
            default = "required"
        if not sections or info.description:
            text = info.description or ""
            rows.append(f"| `{key}` | {default} | {text} |")
        for section in sections:
            rows += _rows(section, key + ".")
    return rows


def job_spec_table() -> str:
    from spark_vllm.spec import JobSpec

    return "\n".join(["| key | default | meaning |", "| --- | --- | --- |", *_rows(JobSpec)])


def job_spec_page(page: str) -> str:
    """`page` with its generated table made anew."""
    head, _, rest = page.partition(BEGIN)
    _, found, tail = rest.partition(END)
    if not found:
        raise SystemExit(f"{JOB_SPEC_PAGE.relative_to(ROOT)} lacks the markers {BEGIN} {END}")
    return f"{head}{BEGIN}\n{job_spec_table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--check", action="store_true", help="compare, do not write")
    check = args.parse_args(argv).check
    stale = 0
    for path, wanted in (
        (CLI_REFERENCE, cli_reference()),
        (JOB_SPEC_PAGE, job_spec_page(JOB_SPEC_PAGE.read_text())),
    ):
        relative = path.relative_to(ROOT)
        have = path.read_text() if path.exists() else ""
        if have == wanted:
            continue
        if check:
            diff = difflib.unified_diff(
                have.splitlines(), wanted.splitlines(), str(relative), "generated", lineterm=""
            )
            print(f"{relative} differs from the code; run `make docs`:", file=sys.stderr)
            print("\n".join(diff), file=sys.stderr)
            stale += 1
        else:
            path.write_text(wanted)
            print(f"wrote {relative}")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
