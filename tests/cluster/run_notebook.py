"""Run a notebook headless with nbclient, inside the notebook pod (piped to its Python by the
cluster test), and print the executed notebook as JSON on stdout.

Usage: python - NOTEBOOK.ipynb [PROBE-SOURCE]

PROBE-SOURCE, when given, is a code cell run after the notebook's own cells in the same
kernel: the test reads the notebook's variables through what it prints. A cell that raises
ends the run with nbclient's CellExecutionError (its traceback on stderr, exit status 1).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell


def main(path: str, probe: str | None = None) -> None:
    notebook = nbformat.read(path, as_version=4)
    if probe:
        notebook.cells.append(new_code_cell(probe))
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(Path(path).parent)}},
    )
    client.execute()
    sys.stdout.write(nbformat.writes(notebook))


if __name__ == "__main__":
    main(*sys.argv[1:])
