"""The README's local examples, as written and in the order shown, against the session's
one vLLM server (each `make run` of the README is `spark-vllm local` with a server of its
own; here the same spec and arguments go to `spark-vllm run` and the shared server)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

README = (ROOT / "README.md").read_text()
DEFAULT_JOB = "examples/jobs/chat.yaml"  # the Makefile's JOB
# `make jars run …`: the same run, after fetching the Delta connector (make test does that).
MAKE_RUN = re.compile(r'`make (?:jars )?run(?: JOB=(?P<job>\S+))?(?: ARGS="(?P<args>.*?)")?`')


def section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n## ", start + len(title))
    return README[start : end if end > 0 else None]


def make_runs() -> list[tuple[str, list[str]]]:
    """Each distinct `make run …` of the README's first section, in order: (job, args)."""
    found: dict[tuple[str, tuple[str, ...]], None] = {}
    for match in MAKE_RUN.finditer(section("## Two commands")):
        job = match["job"] or DEFAULT_JOB
        if "my-job" in job:  # the README's placeholder for a spec of your own
            continue
        found[(job, tuple(shlex.split(match["args"] or "")))] = None
    return [(job, list(args)) for job, args in found]


def spark_vllm(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spark_vllm.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable},
    )


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory that looks like a fresh clone: the examples, no build/."""
    where = tmp_path_factory.mktemp("clone")
    (where / "examples").symlink_to(ROOT / "examples")
    return where


def test_the_readme_names_the_examples_this_test_runs():
    runs = make_runs()
    assert runs[0] == (DEFAULT_JOB, [])
    assert (DEFAULT_JOB, ["--set", "output.mode=overwrite"]) in runs
    assert any("task=completion" in " ".join(args) for _, args in runs)
    assert any("structured_output.ddl=category STRING, short BOOLEAN" in args for _, args in runs)
    assert ("examples/jobs/openai-batch.yaml", []) in runs
    assert ("examples/jobs/delta.yaml", []) in runs


def test_every_make_run_of_the_readme_works_as_written_in_order(vllm_server, clone):
    served = ["--set", f"endpoint.base_url={vllm_server}"]
    first, *rest = make_runs()

    done = spark_vllm(clone, "run", first[0], *first[1], *served)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "  rows          300\n  succeeded     300" in done.stdout
    assert "output        build/output/chat (parquet): 300 ids, 0 failed" in done.stdout

    # "A second `make run` resumes: ... says `nothing to send ...` and `skipped 300`".
    again = spark_vllm(clone, "run", first[0], *first[1], *served)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to send: every id succeeded in earlier runs" in again.stdout
    assert "skipped       300" in again.stdout

    # `make plan` after `make run` (the manual's table): counted as a fresh run, and said so.
    planned = spark_vllm(clone, "plan", first[0], *first[1], *served)
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "  done          300 (succeeded in earlier runs)\n  to send       0 on resume" in (
        planned.stdout
    )
    assert "prompt tokens 25,320 in all" in planned.stdout, planned.stdout
    assert "report        not written" in planned.stdout
    assert not list(clone.glob("*.json")), "plan wrote into the working directory"

    for job, args in rest:
        done = spark_vllm(clone, "run", job, *args, *served)
        assert done.returncode == 0, (job, args, done.stderr[-3000:])
        assert "failed        0" in done.stdout, (job, args, done.stdout)
        assert "nothing to send" not in done.stdout, (job, args)


def test_the_commands_of_the_spark_vllm_section_work(clone):
    done = spark_vllm(clone, "validate", DEFAULT_JOB)
    assert done.returncode == 0, done.stderr
    assert "the columns it reads are in the input" in done.stdout
    wrong = spark_vllm(clone, "validate", DEFAULT_JOB, "--set", "prompt.template={{ question }}")
    assert wrong.returncode == 2 and "--set 'prompt.template=" in wrong.stderr
    quoted = spark_vllm(clone, "validate", DEFAULT_JOB, "--set", 'prompt.template="{{ question }}"')
    assert quoted.returncode == 0, quoted.stderr


def own_job_script(base_url: str) -> str:
    """The README's "Your own job" commands as a script for this test: `make plan` and
    `make run` go to `spark-vllm plan`/`run` against the session's server (as `make run`
    is `spark-vllm local` with a server of its own), `.venv/bin/…` to this Python."""
    block = section("## Your own job").split("```sh\n", 1)[1].split("\n```", 1)[0]
    script = block.replace(".venv/bin/spark-vllm", "@cli@").replace(".venv/bin/python", "@py@")
    served = f"--set endpoint.base_url={shlex.quote(base_url)}"
    script = re.sub(r"^make (plan|run) JOB=(\S+)$", rf"@cli@ \1 \2 {served}", script, flags=re.M)
    python = shlex.quote(sys.executable)
    return script.replace("@cli@", f"{python} -m spark_vllm.cli").replace("@py@", python)


def test_the_your_own_job_commands_of_the_readme_work(vllm_server, clone):
    script = own_job_script(vllm_server)
    assert script.count(" -m spark_vllm.cli ") == 3, script  # validate, plan, run
    done = subprocess.run(
        ["bash", "-ec", script],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=clone,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "build/my-job/job.yaml is a valid job spec, and the columns it reads" in done.stdout
    assert "  to send       3\n" in done.stdout, done.stdout
    assert "  rows          3\n  succeeded     3\n  failed        0" in done.stdout
    table = done.stdout.split("output        build/output/my-job", 1)[1]
    for ticket in ("t1", "t2", "t3"):
        assert f"{ticket} " in table, table
    assert "None" in table  # the error column of rows that succeeded
