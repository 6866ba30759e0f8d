"""output.mode overwrite deletes only what a spark-vllm job wrote: its marker file decides.

Hadoop's file system is replaced by a small stand-in over the local disk (the same calls
results makes through py4j), so the stores' own code runs without a JVM.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from spark_vllm.errors import SpecError
from spark_vllm.spec import spec_from_dict
from spark_vllm.storage import results
from spark_vllm.storage.fingerprint import RunRecord
from spark_vllm.storage.stores import FileStore

pytestmark = pytest.mark.unit


class _Name:
    def __init__(self, path: Path) -> None:
        self.path = path

    def getName(self) -> str:
        return self.path.name


class _Status:
    def __init__(self, path: Path) -> None:
        self.path = path

    def getPath(self) -> _Name:
        return _Name(self.path)


class _Stream:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = bytearray()

    def write(self, data: bytearray) -> None:
        self.data += data

    def close(self) -> None:
        self.path.write_bytes(bytes(self.data))


class LocalFs:  # Hadoop's method names
    """The part of Hadoop's FileSystem that results uses, over the local disk."""

    def exists(self, path: Path) -> bool:
        return path.exists()

    def isDirectory(self, path: Path) -> bool:
        return path.is_dir()

    def listStatus(self, path: Path) -> list[_Status]:
        return [_Status(child) for child in sorted(path.iterdir())]

    def delete(self, path: Path, recursive: bool) -> bool:
        assert recursive
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        return True

    def create(self, path: Path, overwrite: bool) -> _Stream:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _Stream(path)


@pytest.fixture(autouse=True)
def local_fs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "_fs", lambda spark, path: (LocalFs(), Path(path)))


def store(out: Path, mode: str = "overwrite") -> FileStore:
    spec = spec_from_dict(
        {
            "input": {"format": "jsonl", "path": "in.jsonl"},
            "output": {"path": str(out), "mode": mode},
            "endpoint": {"model": "m"},
            "prompt": {"template": "{{ q }}"},
        }
    )
    return FileStore(None, spec)  # type: ignore[arg-type]


def earlier_run(out: Path) -> Path:
    part = out / "run=20260101T000000000000Z" / "part-0.parquet"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"earlier answers")
    return part


def test_overwrite_refuses_a_folder_of_other_data_naming_the_path_and_the_marker(tmp_path):
    out = tmp_path / "bucket-root"
    out.mkdir()
    (out / "precious.csv").write_text("a,b\n")
    with pytest.raises(SpecError) as info:
        store(out).prepare()
    assert repr(str(out)) in str(info.value)
    assert "_SPARK_VLLM_OUTPUT" in str(info.value)
    assert "precious.csv" not in str(info.value)  # names of what is there are not told
    with pytest.raises(SpecError, match="_SPARK_VLLM_OUTPUT"):
        store(out).begin()
    assert (out / "precious.csv").read_text() == "a,b\n"


def test_overwrite_refuses_a_folder_of_hidden_files_only(tmp_path):
    out = tmp_path / "out"
    (out / ".git").mkdir(parents=True)
    (out / "_SUCCESS").write_text("")
    with pytest.raises(SpecError, match="_SPARK_VLLM_OUTPUT"):
        store(out).begin()
    assert (out / ".git").is_dir() and (out / "_SUCCESS").exists()


def test_overwrite_refuses_a_file_at_the_output_path(tmp_path):
    out = tmp_path / "data.parquet"
    out.write_bytes(b"someone's table")
    with pytest.raises(SpecError, match="no _SPARK_VLLM_OUTPUT file"):
        store(out).prepare()
    with pytest.raises(SpecError):
        store(out).begin()
    assert out.read_bytes() == b"someone's table"


def test_overwrite_refuses_runs_without_the_marker(tmp_path):
    """An output of a spark-vllm older than the marker: the message says how to adopt it."""
    out = tmp_path / "out"
    part = earlier_run(out)
    with pytest.raises(SpecError, match="add an empty _SPARK_VLLM_OUTPUT file there"):
        store(out).begin()
    assert part.exists()
    (out / "_SPARK_VLLM_OUTPUT").write_text("")
    store(out).begin()
    assert not out.exists()


@pytest.mark.parametrize("empty", [True, False])
def test_overwrite_takes_an_absent_or_empty_path(tmp_path, empty):
    out = tmp_path / "out"
    if empty:
        out.mkdir()
    assert store(out).prepare() is False
    store(out).begin()
    assert not out.exists()


def test_a_run_leaves_the_marker_and_a_later_overwrite_replaces_its_output(tmp_path):
    out = tmp_path / "out"
    first = store(out, mode="resume")
    assert first.prepare() is False
    first.record(RunRecord("20260101T000000000000Z", {"task": "chat"}))
    part = earlier_run(out)
    assert "spark-vllm job" in (out / "_SPARK_VLLM_OUTPUT").read_text()
    assert first.prepare() is True  # the marker is no foreign file to resume
    again = store(out)
    assert again.prepare() is False
    assert part.exists()  # nothing is deleted before the run starts sending
    again.begin()
    assert not out.exists()


def test_the_marker_is_left_once(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "_SPARK_VLLM_OUTPUT").write_text("kept")
    store(out, mode="resume").record(RunRecord("20260101T000000000000Z", {"task": "chat"}))
    assert (out / "_SPARK_VLLM_OUTPUT").read_text() == "kept"


class _Table:
    def __init__(self, columns: list[str]) -> None:
        self.columns = columns


def jdbc_store(monkeypatch: pytest.MonkeyPatch, columns: list[str] | None, write_mode: str):
    """A JdbcStore whose database holds one table with `columns` (None: no table)."""
    from spark_vllm.storage import jdbc
    from spark_vllm.storage.stores import JdbcStore

    class Database:
        def __init__(self, *args: object) -> None:
            pass

        def has_table(self, table: str) -> bool:
            return columns is not None

    monkeypatch.setattr(jdbc, "Database", Database)
    monkeypatch.setattr(jdbc, "recover", lambda *args: [])
    monkeypatch.setattr(jdbc, "read_table", lambda *args: _Table(columns or []))
    spec = spec_from_dict(
        {
            "input": {"format": "jsonl", "path": "in.jsonl"},
            "output": {
                "format": "jdbc",
                "jdbc": {
                    "url": "jdbc:postgresql://db/shop",
                    "table": "public.orders",
                    "write_mode": write_mode,
                },
            },
            "endpoint": {"model": "m"},
            "prompt": {"template": "{{ q }}"},
        }
    )
    return JdbcStore(None, spec)  # type: ignore[arg-type]


def test_jdbc_overwrite_refuses_a_table_no_job_made(monkeypatch):
    store_ = jdbc_store(monkeypatch, ["order_id", "amount"], "overwrite")
    with pytest.raises(SpecError, match=r"'public.orders' has no 'run' column"):
        store_.prepare()


@pytest.mark.parametrize(
    ("columns", "write_mode"),
    [(["id", "answer", "error", "run"], "overwrite"), (None, "overwrite"), (["x"], "upsert")],
)
def test_jdbc_overwrite_takes_a_jobs_table_or_none(monkeypatch, columns, write_mode):
    assert jdbc_store(monkeypatch, columns, write_mode).prepare() is (
        columns is not None and write_mode != "overwrite"
    )
