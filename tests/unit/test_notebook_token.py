"""The notebook role starts JupyterLab only behind a token it can use (docker/notebook.py)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

DOCKER = Path(__file__).resolve().parents[2] / "docker"


@pytest.fixture
def notebook(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(DOCKER))
    monkeypatch.delenv("JUPYTER_TOKEN", raising=False)
    monkeypatch.delenv("JUPYTER_TOKEN_FILE", raising=False)
    sys.modules.pop("notebook", None)
    return importlib.import_module("notebook")


def with_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    monkeypatch.setenv("JUPYTER_TOKEN_FILE", str(path))
    return path


def test_a_token_file_with_a_token_starts_jupyterlab(notebook, monkeypatch, tmp_path):
    with_file(monkeypatch, tmp_path, "f3a9c0d1e2b4")
    assert notebook.token_problem() is None


@pytest.mark.parametrize(
    ("text", "why"),
    [("", "is empty"), ("  \n", "is empty"), ("f3a9c0d1e2b4\n", "starts or ends with white space")],
)
def test_a_token_file_jupyterlab_would_misread_is_refused(
    notebook, monkeypatch, tmp_path, capsys, text, why
):
    path = with_file(monkeypatch, tmp_path, text)
    assert notebook.main([]) == 64
    err = capsys.readouterr().err
    assert why in err and str(path) in err
    assert "f3a9c0d1e2b4" not in err  # the token is never printed


def test_no_token_at_all_is_refused(notebook, capsys):
    assert notebook.main([]) == 64
    assert "JUPYTER_TOKEN is empty" in capsys.readouterr().err


def test_a_missing_token_file_is_refused(notebook, monkeypatch, tmp_path):
    monkeypatch.setenv("JUPYTER_TOKEN_FILE", str(tmp_path / "absent"))
    assert "cannot read the token file" in notebook.token_problem()


def test_the_environment_token_still_serves_docker_run(notebook, monkeypatch):
    monkeypatch.setenv("JUPYTER_TOKEN", "f3a9c0d1e2b4")
    assert notebook.token_problem() is None
