"""The version set of the images and the bundle, named once in pyproject.toml's
[tool.spark-vllm.versions] (see tests/unit/test_versions.py for what must agree with it)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSIONS: dict[str, str] = PYPROJECT["tool"]["spark-vllm"]["versions"]
