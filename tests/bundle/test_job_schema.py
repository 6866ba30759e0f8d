"""helm checks the chart's `job:` value against the job spec's schema, generated from the
pydantic models by scripts/job_schema.py, and refuses a bad spec before anything starts."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from .render import CHART, ROOT, Case, run_helm

pytestmark = pytest.mark.bundle

JOBS = ROOT / "examples" / "jobs"


def render_job_spec(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_helm(
        helm, "template", "t", str(CHART), *args, "--show-only", "templates/configmap.yaml"
    )


def test_committed_schema_matches_the_job_spec_models() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "job_schema.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (("job.outptu", {"path": "x"}), "at '/job': additional properties 'outptu' not allowed"),
        (("job.input.id_colum", "x"), "at '/job/input': additional properties 'id_colum' not"),
        (("job.sampling.max_tokens", "many"), "at '/job/sampling/max_tokens': got string, want"),
        (("job.task", "chatt"), "at '/job/task': value must be one of 'chat', 'completion'"),
        (("job.output.mode", "append"), "at '/job/output/mode': value must be one of"),
        (("job.concurrency.per_executor", 0), "at '/job/concurrency/per_executor': minimum"),
    ],
)
def test_schema_refuses_a_bad_job_spec_naming_its_path(
    helm: str, override: tuple[str, object], message: str
) -> None:
    result = render_job_spec(helm, *Case("chat.yaml", (override,)).helm_args())
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_a_job_that_says_anything_must_say_what_to_read_and_where_to_write(helm: str) -> None:
    result = render_job_spec(helm, "--set", "model.id=some/model", "--set", "job.task=chat")
    assert result.returncode != 0
    assert "at '/job': missing properties 'input', 'output'" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "override",
    [
        ("job.concurrency", {"max_per_executor": 512}),  # the deprecated name of max_per_task
        ("job.sampling.ignore_eos", True),  # sampling passes unknown keys to vLLM
        ("job.endpoint", {"api_key_env": "KEY"}),  # the chart fills in base_url and model
    ],
)
def test_schema_accepts_what_the_job_accepts(helm: str, override: tuple[str, object]) -> None:
    from spark_vllm.spec import spec_from_dict

    result = render_job_spec(helm, *Case("chat.yaml", (override,)).helm_args())
    assert result.returncode == 0, result.stderr
    job = yaml.safe_load(yaml.safe_load(result.stdout)["data"]["job.yaml"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the deprecated name warns, as it should
        spec_from_dict(job)


@pytest.mark.parametrize("path", sorted(JOBS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_job_spec_passes_the_charts_schema(helm: str, path: Path) -> None:
    job = json.dumps(yaml.safe_load(path.read_text(encoding="utf-8")))
    result = render_job_spec(helm, "--set", "model.id=some/model", "--set-json", f"job={job}")
    assert result.returncode == 0, result.stderr
