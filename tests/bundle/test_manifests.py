"""manifests/ is generated from the chart: re-render it and compare, byte for byte."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .render import MANIFESTS, ROOT

pytestmark = pytest.mark.bundle


def test_manifests_match_the_chart(helm: str, tmp_path: Path) -> None:
    env = {**os.environ, "HELM": helm}
    env.pop("NAMESPACE", None)
    result = subprocess.run(
        [str(ROOT / "scripts" / "render-manifests.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    fresh = {p.name: p.read_text(encoding="utf-8") for p in tmp_path.glob("*.yaml")}
    committed = {p.name: p.read_text(encoding="utf-8") for p in MANIFESTS.glob("*.yaml")}
    assert sorted(committed) == sorted(fresh), "manifests/ has missing or extra files"
    drifted = [name for name in fresh if fresh[name] != committed[name]]
    assert not drifted, f"manifests/ drifted from the chart: {drifted}; run `make manifests`"


def test_manifests_hold_the_promised_objects() -> None:
    kinds = {}
    for path in MANIFESTS.glob("*.yaml"):
        kinds[path.name] = sorted(
            line.split(":", 1)[1].strip()
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.startswith("kind:")
        )
    assert kinds == {
        "rbac.yaml": ["Role", "RoleBinding", "ServiceAccount", "ServiceAccount"],
        "chat-job.yaml": ["ConfigMap", "NetworkPolicy", "NetworkPolicy", "SparkApplication"],
        "chat-job-spark-submit.yaml": [
            "ConfigMap",
            "ConfigMap",
            "Job",
            "NetworkPolicy",
            "NetworkPolicy",
            "NetworkPolicy",
        ],
        "embedding-job.yaml": ["ConfigMap", "NetworkPolicy", "NetworkPolicy", "SparkApplication"],
        "scheduled-job.yaml": [
            "ConfigMap",
            "NetworkPolicy",
            "NetworkPolicy",
            "ScheduledSparkApplication",
        ],
        "volcano-queue.yaml": ["Queue"],
        "trigger.yaml": [
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ],
        "notebook.yaml": ["ConfigMap", "Deployment", "NetworkPolicy", "NetworkPolicy", "Service"],
    }
    for text in (p.read_text(encoding="utf-8") for p in MANIFESTS.glob("*.yaml")):
        assert str(ROOT) not in text, "a path of this machine leaked into manifests/"
