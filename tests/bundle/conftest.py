"""Fixtures of the bundle tier: helm, the chart rendered once per values case, the tools."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest
import yaml

from .render import (
    CASES,
    NOTEBOOK_CASES,
    ROOT,
    SUBMIT_CASES,
    Rendered,
    helm_binary,
    operator_pod,
    render,
    spark_pod,
    venv_tool,
)


@pytest.fixture(scope="session")
def helm() -> str:
    return helm_binary()


@pytest.fixture(scope="session")
def rendered(helm: str) -> dict[str, Rendered]:
    """Every case of render.CASES, rendered once for the whole session."""
    return {name: render(helm, name, case) for name, case in CASES.items()}


@pytest.fixture(scope="session")
def checkov_report(
    rendered: dict[str, Rendered], tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    """One checkov run over every rendered object plus the pods the operator would create
    from each SparkApplication (checkov knows Pods, not SparkApplications), and, for the
    operator-less path, its Job and Spark's pod templates as Pods."""
    checkov = venv_tool("checkov", "CHECKOV")
    scan = tmp_path_factory.mktemp("checkov")
    for name, result in rendered.items():
        docs = [d for d in result.docs if not d["kind"].endswith("SparkApplication")]
        spec = result.app_spec()
        docs += [operator_pod(spec, "driver", name), operator_pod(spec, "executor", name)]
        (scan / f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    helm = helm_binary()
    for name, case in SUBMIT_CASES.items():
        result = render(helm, name, case)
        docs = list(result.docs)
        props = result.spark_properties()
        for role in ("driver", "executor"):
            docs.append(spark_pod(result.pod_template(role), props, role, f"{name}-{role}"))
        (scan / f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    for name, case in NOTEBOOK_CASES.items():
        result = render(helm, name, case)
        docs = list(result.docs)
        props = result.spark_properties("-notebook")
        executor = result.pod_template("executor", "-notebook")
        docs.append(spark_pod(executor, props, "executor", f"{name}-executor"))
        (scan / f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    proc = subprocess.run(
        [
            checkov,
            "--directory",
            str(scan),
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--quiet",
            "--compact",
            "--skip-download",
            "--skip-results-upload",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},  # no guideline lookups: offline
    )
    # Exit code 1 only means "some check failed"; the test judges them against the skip file.
    assert proc.returncode in (0, 1), f"checkov crashed:\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    return report if isinstance(report, list) else [report]
