"""Resume reuses only answers made with the same settings (the run's fingerprint), and
a run with nothing to send costs nothing."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from spark_vllm import SpecError, run_job, spec_from_dict
from spark_vllm.driver.job import execute, plan  # internal: the two halves of run_job
from tests.conftest import sample_rows
from tests.integration.jobs import read_rows, run_cli, spec_doc

pytestmark = pytest.mark.integration

ROWS = 8


def runs(path):
    return sorted(p.name for p in path.glob("run=*"))


def test_a_rerun_with_other_settings_is_refused_naming_what_changed(spark, vllm_server, tmp_path):
    doc = spec_doc(tmp_path, vllm_server, sample_rows(ROWS))
    first = run_job(spark, spec_from_dict(doc))
    assert first.succeeded == ROWS
    before = runs(tmp_path / "out")

    # The README's completion example, run into the chat example's output path.
    completion = {**doc, "task": "completion", "prompt": {"template": "{{ question }}"}}
    with pytest.raises(SpecError) as info:
        run_job(spark, spec_from_dict(completion))
    message = str(info.value)
    assert f"holds {ROWS} answer(s) that resume would count as done" in message
    assert f"came from run {first.run_id}, made with other settings" in message
    assert 'task: "chat" → "completion"' in message
    assert 'prompt.system: "Answer briefly." → null' in message
    assert "output.mode: overwrite, or another output.path" in message
    assert "output.on_change: resume" in message
    # Refused before anything was written: no run folder, no empty file.
    assert runs(tmp_path / "out") == before

    # The same for a structured schema, and for a sampling setting.
    structured = {**doc, "structured_output": {"ddl": "category STRING"}}
    with pytest.raises(SpecError, match='structured_output: null → {"ddl": "category STRING"'):
        run_job(spark, spec_from_dict(structured))
    longer = {**doc, "sampling": {**doc["sampling"], "max_tokens": 32}}
    with pytest.raises(SpecError, match="sampling.max_tokens: 16 → 32"):
        run_job(spark, spec_from_dict(longer))

    # Asked to, it resumes anyway, and the answers it adopted count from then on.
    adopted = {**completion, "output": {**doc["output"], "on_change": "resume"}}
    summary = run_job(spark, spec_from_dict(adopted))
    assert (summary.skipped, summary.rows) == (ROWS, 0)
    again = run_job(spark, spec_from_dict(completion))
    assert (again.skipped, again.rows) == (ROWS, 0)
    # Settings that only change speed or safety are no change.
    faster = {**doc, "concurrency": {"per_executor": 4, "mode": "fixed"}, "partitions": 1,
              "retries": {"attempts": 9}, "timeouts": {"ready_s": 99}}  # fmt: skip
    assert run_job(spark, spec_from_dict(faster)).skipped == ROWS


def test_earlier_answers_that_all_failed_are_no_reason_to_refuse(spark, vllm_server, tmp_path):
    rows = sample_rows(4)
    doc = spec_doc(tmp_path, vllm_server, rows, prompt={"template": "{{ question * 3000 }}"})
    assert run_job(spark, spec_from_dict(doc)).failed == 4  # longer than the context
    fixed = {**doc, "prompt": {"template": "{{ question }}"}}
    summary = run_job(spark, spec_from_dict(fixed))
    assert (summary.skipped, summary.rows, summary.failed) == (0, 4, 0)


def test_an_output_written_before_fingerprints_is_refused_unless_resumed_anyway(
    spark, vllm_server, tmp_path
):
    doc = spec_doc(tmp_path, vllm_server, sample_rows(4))
    run_job(spark, spec_from_dict(doc))
    shutil.rmtree(tmp_path / "out" / "_spark_vllm")  # as an older spark-vllm left it
    with pytest.raises(SpecError, match="recorded no settings"):
        run_job(spark, spec_from_dict(doc))
    doc["output"]["on_change"] = "resume"
    assert run_job(spark, spec_from_dict(doc)).skipped == 4


def test_nothing_to_send_waits_for_no_server_and_starts_none(spark, vllm_server, tmp_path):
    doc = spec_doc(tmp_path, vllm_server, sample_rows(ROWS))
    run_job(spark, spec_from_dict(doc))
    before = runs(tmp_path / "out")

    # Every id is done: a closed port and a long ready timeout cost nothing.
    gone = {**doc, "endpoint": {**doc["endpoint"], "base_url": "http://127.0.0.1:9/v1"},
            "timeouts": {"ready_s": 900}}  # fmt: skip
    start = time.monotonic()
    summary = run_job(spark, spec_from_dict(gone))
    assert time.monotonic() - start < 120
    assert summary.note == "nothing to send: every id succeeded in earlier runs"
    assert (summary.rows, summary.skipped, summary.output_ids) == (0, ROWS, ROWS)
    assert runs(tmp_path / "out") == before
    assert "nothing to send" in summary.render()

    # `spark-vllm local` does not even start vLLM (this model would not load).
    model = str(tmp_path / "no-such-model")
    done = run_cli(gone, tmp_path, "--model", model, timeout=300, command="local")
    assert done.returncode == 0, done.stderr
    assert "starting vLLM" not in done.stdout
    assert "nothing to send" in done.stdout
    assert runs(tmp_path / "out") == before
    assert len(read_rows(tmp_path / "out")) == ROWS


def test_overwrite_replaces_the_output_only_once_the_run_starts_sending(spark, tmp_path):
    """A run stopped while it plans or while its vLLM starts (Ctrl-C, a server that never
    gets ready) leaves the earlier output as it was; the output is replaced when the run
    starts sending. A run of an empty input replaces it too, with nothing."""
    earlier = tmp_path / "out" / "run=20260101T000000000000Z"
    earlier.mkdir(parents=True)
    (earlier / "part-0.parquet").write_bytes(b"earlier answers")
    (tmp_path / "out" / "_SPARK_VLLM_OUTPUT").write_text("")  # a spark-vllm output
    doc = spec_doc(tmp_path, "http://127.0.0.1:9/v1", [], output={"mode": "overwrite"})
    spec = spec_from_dict(doc)
    job = plan(spark, spec)
    assert (earlier / "part-0.parquet").exists()
    summary = execute(spark, spec, job)
    assert summary.note == "the input is empty"
    assert not earlier.exists()


def test_ctrl_c_while_vllm_starts_leaves_the_output_as_it_was(tiny_model, tmp_path):
    """A new user's Ctrl-C during `local`'s vLLM start under overwrite: the output was
    already deleted, and the message promised a resume. Now nothing is touched before the
    run sends, and the message says so."""
    rows = sample_rows(ROWS)
    doc = spec_doc(tmp_path, "http://127.0.0.1:9/v1", rows, output={"mode": "overwrite"})
    earlier = tmp_path / "out" / "run=20260101T000000000000Z"
    earlier.mkdir(parents=True)
    (earlier / "part-0.parquet").write_bytes(b"earlier answers")
    (tmp_path / "out" / "_SPARK_VLLM_OUTPUT").write_text("")  # a spark-vllm output
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    command = [sys.executable, "-m", "spark_vllm.cli", "local", str(path),
               "--model", str(tiny_model)]  # fmt: skip
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if "starting vLLM" in line:
            break
    else:
        pytest.fail(f"no vLLM start: {proc.communicate()}")
    time.sleep(2)
    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.monotonic() - start < 20
    assert "interrupted before any request was sent" in err, err
    assert (earlier / "part-0.parquet").read_bytes() == b"earlier answers"


@pytest.mark.parametrize("mode", ["resume", "overwrite"])
def test_ctrl_c_stops_quietly_with_a_summary_and_the_rerun_resumes(vllm_server, tmp_path, mode):
    rows = sample_rows(60)
    doc = spec_doc(tmp_path, vllm_server, rows, partitions=6, output={"mode": mode},
                   sampling={"max_tokens": 64, "ignore_eos": True},
                   concurrency={"mode": "fixed", "per_executor": 2})  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    command = [sys.executable, "-m", "spark_vllm.cli", "run", str(path)]
    # In a process group of its own, as a terminal's foreground job: Ctrl-C reaches the
    # driver, the JVM and the Python workers alike.
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not list((tmp_path / "out").glob("run=*/part-*")):  # some task committed
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception" not in err, err
    assert "interrupted; the rows committed before it stay in" in err
    if mode == "resume":
        assert "running the same command again resumes from them" in err
        resume: tuple[str, ...] = ()
    else:  # the same command would delete them: the message says how to keep them
        assert "to resume from them, run again with --set output.mode=resume" in err
        resume = ("--set", "output.mode=resume")
    committed = int(re.search(r"rows +(\d+)", out)[1])
    assert 0 < committed < len(rows), out

    again = run_cli(doc, tmp_path, *resume)
    assert again.returncode == 0, again.stderr
    assert f"skipped       {committed} " in again.stdout
