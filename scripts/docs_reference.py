"""Write the manual's generated reference: docs/reference/cli.md, every verb of the
`spark-vllm` command with its options, from the argument parser (spark_vllm.cli), so the
manual cannot drift from the code; a unit test runs `--check`.

    python scripts/docs_reference.py           # rewrite docs/reference/cli.md
    python scripts/docs_reference.py --check   # exit 1, with a diff, when it is out of date
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI_REFERENCE = ROOT / "docs" / "reference" / "cli.md"
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


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--check", action="store_true", help="compare, do not write")
    check = args.parse_args(argv).check
    wanted = cli_reference()
    relative = CLI_REFERENCE.relative_to(ROOT)
    if check:
        have = CLI_REFERENCE.read_text() if CLI_REFERENCE.exists() else ""
        if have != wanted:
            diff = difflib.unified_diff(
                have.splitlines(), wanted.splitlines(), str(relative), "generated", lineterm=""
            )
            print(f"{relative} differs from the argument parser; run `make docs`:", file=sys.stderr)
            print("\n".join(diff), file=sys.stderr)
            return 1
        return 0
    CLI_REFERENCE.write_text(wanted)
    print(f"wrote {relative}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
