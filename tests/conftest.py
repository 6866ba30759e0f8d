"""Shared fixtures: the tiny model, one real vLLM server and one local Spark per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "data" / "questions.jsonl"
SERVED_NAME = "tiny-llama"
# Small context so an over-long prompt is easy to make.
MAX_MODEL_LEN = 512
POSTGRES_JDBC_JAR = Path("/usr/share/java/postgresql.jar")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_tiny_model.py"), str(out)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def vllm_local(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The session's real vLLM server (CPU) on a free loopback port, or None.

    SPARK_VLLM_TEST_BASE_URL points the tests at a server you already run (same model
    name and --max-model-len) to save its start-up while iterating; then this is None
    and the one test that restarts the server cannot run.
    """
    from spark_vllm import LocalServer

    if os.environ.get("SPARK_VLLM_TEST_BASE_URL"):
        yield None
        return
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    server = LocalServer(
        model=str(tiny_model),
        served_model_name=SERVED_NAME,
        log_path=log,
        vllm_args=[
            "--max-model-len",
            str(MAX_MODEL_LEN),
            # float32: CPUs without AVX-512 BF16 run vLLM's bfloat16 kernels slowly.
            "--dtype",
            "float32",
            # A random-weight model under a JSON grammar would pad answers with whitespace
            # until max_tokens; real models do not, so only the tests need this.
            "--structured-outputs-config",
            '{"backend": "xgrammar", "disable_any_whitespace": true}',
        ],
        ready_timeout_s=420,
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def vllm_server(vllm_local) -> str:  # type: ignore[no-untyped-def]
    """Base URL of the session's vLLM server."""
    if vllm_local is None:
        return os.environ["SPARK_VLLM_TEST_BASE_URL"]
    return str(vllm_local.base_url)


@pytest.fixture(scope="session")
def postgres():  # type: ignore[no-untyped-def]
    """A real PostgreSQL server (Debian's package) on a free loopback port, with an empty
    database `shop`; started when a test first asks for it."""
    import shutil
    import tempfile

    from tests.integration.postgres import Postgres

    assert POSTGRES_JDBC_JAR.is_file(), (
        f"{POSTGRES_JDBC_JAR} is missing: install libpostgresql-jdbc-java (make test does)"
    )
    # Not under pytest's tmp_path: the postgres user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="spark-vllm-pg-"))
    root.chmod(0o755)
    server = Postgres(root).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def spark():  # type: ignore[no-untyped-def]
    from pyspark.sql import SparkSession

    from spark_vllm.cli import LOCAL_DEFAULTS
    from spark_vllm.storage import delta

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master("local[2]").appName("spark-vllm-tests")
    # The PostgreSQL JDBC driver (Debian's libpostgresql-jdbc-java) for the JDBC tests, and
    # the Delta Lake connector (scripts/get-jars.sh, `make jars`) for the Delta tests: one
    # session serves every test, so Delta's extension is on for all of them.
    jars = [str(POSTGRES_JDBC_JAR)] if POSTGRES_JDBC_JAR.is_file() else []
    delta_jars = delta.local_jars()
    if jars or delta_jars:
        builder = builder.config("spark.jars", ",".join([*jars, *delta_jars]))
    conf = {**LOCAL_DEFAULTS, "spark.sql.shuffle.partitions": "4"}
    if delta_jars:
        conf.update({**delta.DELTA_CONF, delta.SNAPSHOT_PARTITIONS: "4"})
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    yield session
    session.stop()


def sample_rows(n: int) -> list[dict[str, str]]:
    with SAMPLE.open() as fh:
        return [json.loads(line) for _, line in zip(range(n), fh, strict=False)]


def chart_model_values(model_root: Path, model_dir: str = "tiny-llama") -> dict[str, object]:
    """The chart's `model` values for the tiny model in a read-only hostPath cache:
    `model_root` on the node holds the model in `model_dir`, served as SERVED_NAME."""
    return {
        "servedName": SERVED_NAME,
        "path": model_dir,
        "offline": True,
        "cache": {
            "type": "hostPath",
            "readOnly": True,
            "hostPath": {"path": str(model_root), "type": "Directory"},
        },
    }


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
