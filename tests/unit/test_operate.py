"""`spark-vllm submit` before the cluster: the release's name, the values handed to helm,
and a bad spec refused before helm runs (a fake helm records every call)."""

import itertools
import json
import os
import stat

import pytest
import yaml

from spark_vllm.cli import main
from spark_vllm.cluster.operate import (
    SOURCE_ROOT,
    chart_values,
    find_chart,
    job_document,
    release_name,
    summary_block,
)
from spark_vllm.errors import SpecError

pytestmark = pytest.mark.unit

CHART = SOURCE_ROOT / "charts" / "spark-vllm"


def spec_doc(**extra):
    doc = {
        "input": {"format": "jsonl", "path": "/data/input/questions.jsonl", "id_column": "id"},
        "output": {"format": "parquet", "path": "/data/output"},
        "task": "chat",
        "prompt": {"template": "{{ question }}"},
    }
    doc.update(extra)
    return doc


@pytest.fixture
def fake_helm(tmp_path, monkeypatch):
    """A helm that answers `version` as helm 4 and records every other call, with the
    contents of the values files it was given, in calls.jsonl."""
    calls = tmp_path / "calls.jsonl"
    helm = tmp_path / "bin" / "helm"
    helm.parent.mkdir()
    helm.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        "args = sys.argv[1:]\n"
        "if args[:1] == ['version']:\n"
        "    print('v4.1.4+g05fa379'); sys.exit(0)\n"
        "files = {a: open(a).read() for p, a in zip(args, args[1:]) if p == '-f'}\n"
        f"with open({str(calls)!r}, 'a') as fh:\n"
        "    fh.write(json.dumps({'args': args, 'files': files}) + '\\n')\n"
        "import os\n"
        "if os.environ.get('FAKE_HELM_FAILS'):\n"
        "    sys.stderr.write(os.environ['FAKE_HELM_FAILS']); sys.exit(1)\n"
    )
    helm.chmod(helm.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("HELM", str(helm))
    monkeypatch.setenv("PATH", f"{helm.parent}{os.pathsep}{os.environ['PATH']}")
    return calls


def recorded(calls):
    if not calls.exists():
        return []
    return [json.loads(line) for line in calls.read_text().splitlines()]


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("examples/jobs/chat.yaml", "chat"),
        ("/tmp/My_Job v2.yaml", "my-job-v2"),
        ("nightly.embed.yml", "nightly"),
        ("--__.yaml", "spark-vllm-job"),
        ("a" * 30 + "-" + "b" * 30 + ".yaml", "a" * 30 + "-" + "b" * 9),
        ("a" * 39 + "_x.yaml", "a" * 39),
    ],
)
def test_release_name_is_the_spec_file_name_as_a_dns_label(path, name):
    derived = release_name(path)
    assert derived == name
    assert len(derived) <= 40


def test_the_chart_beside_the_source_tree_is_the_default():
    assert find_chart(None) == CHART


def test_overrides_apply_and_the_chart_fills_the_endpoint_only_for_validation(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(spec_doc()))
    doc = job_document(spec, ["sampling.max_tokens=7"], chart_values(CHART, None))
    assert doc["sampling"] == {"max_tokens": 7}
    assert "endpoint" not in doc  # left to the chart, which fills in its sidecar


def test_a_values_file_with_a_job_key_is_refused(tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"job": spec_doc()}))
    with pytest.raises(SpecError, match="has a job: key"):
        chart_values(CHART, str(values))


def test_a_bad_spec_is_refused_before_helm_runs(tmp_path, fake_helm, capsys):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(spec_doc(sampling={"max_tokens": "many"})))
    code = main(["submit", str(spec), "-n", "jobs", "--no-follow"])
    assert code == 2
    assert "sampling.max_tokens" in capsys.readouterr().err
    assert recorded(fake_helm) == []


def test_a_bad_override_is_refused_before_helm_runs(tmp_path, fake_helm, capsys):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(spec_doc()))
    code = main(["submit", str(spec), "-n", "jobs", "--no-follow", "--set", "task=dance"])
    assert code == 2
    assert "task" in capsys.readouterr().err
    assert recorded(fake_helm) == []


def test_submit_installs_the_values_then_the_spec_after_overrides(tmp_path, fake_helm):
    spec = tmp_path / "Chat Job.yaml"
    spec.write_text(yaml.safe_dump(spec_doc()))
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"image": {"tag": "dev"}}))
    code = main(
        [
            "submit", str(spec), "-n", "jobs", "--values", str(values), "--no-follow",
            "--set", "sampling.max_tokens=9",
        ]
    )  # fmt: skip
    assert code == 0
    (call,) = recorded(fake_helm)
    args = call["args"]
    assert args[:5] == ["install", "chat-job", str(CHART), "-n", "jobs"]
    files = [a for p, a in itertools.pairwise(args) if p == "-f"]
    assert files[0] == str(values)  # the user's values first, the spec's after them
    assert yaml.safe_load(call["files"][files[1]]) == {"job": spec_doc(sampling={"max_tokens": 9})}
    assert "--server-side=false" in args  # helm 4 against API servers before 1.21
    # The values choose the path: nothing is forced over them.
    assert "--set" not in args and "operator.enabled=false" not in " ".join(args)


def test_the_summary_block_is_cut_from_the_driver_log():
    log = "\n".join(
        [
            "INFO SparkContext: Running Spark version 4.2.0",
            "spark-vllm progress: 20/20 rows (100.0 %), 20 succeeded",
            "spark-vllm summary (run 20261130T222000Z-abc)",
            "  rows          20",
            "  succeeded     20",
            "INFO ShutdownHookManager: Shutdown hook called",
        ]
    )
    assert summary_block(log) == [
        "spark-vllm summary (run 20261130T222000Z-abc)",
        "  rows          20",
        "  succeeded     20",
    ]
    assert summary_block("no summary here") == []


def test_values_that_turn_a_release_into_a_trigger_or_notebook_are_refused(tmp_path, fake_helm):
    spec = tmp_path / "chat.yaml"
    spec.write_text(yaml.safe_dump(spec_doc()))
    for mode in ("trigger", "notebook"):
        values = tmp_path / f"{mode}.yaml"
        values.write_text(yaml.safe_dump({mode: {"enabled": True}}))
        with pytest.raises(SpecError, match=f"sets {mode}.enabled, which makes a release run no"):
            chart_values(CHART, str(values))
        assert main(["submit", str(spec), "-n", "jobs", "--values", str(values)]) == 2
    assert recorded(fake_helm) == []


def test_a_refusal_of_the_chart_itself_is_exit_2_with_its_message(
    tmp_path, fake_helm, monkeypatch, capsys
):
    spec = tmp_path / "chat.yaml"
    spec.write_text(yaml.safe_dump(spec_doc()))
    monkeypatch.setenv(
        "FAKE_HELM_FAILS",
        "Error: INSTALLATION FAILED: execution error at (spark-vllm/templates/submit.yaml:2:4): "
        "job.budget with restartPolicy.type OnFailure: set restartPolicy.type Never\n"
        "Use --debug flag to render out invalid YAML\n",
    )
    assert main(["submit", str(spec), "-n", "jobs", "--no-follow"]) == 2
    assert capsys.readouterr().err.strip() == (
        "spark-vllm: the chart refused the job: job.budget with restartPolicy.type OnFailure: "
        "set restartPolicy.type Never"
    )
