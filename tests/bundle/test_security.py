"""Security defaults of the rendered objects, and the linters: checkov, hadolint, yamllint."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .render import (
    CASES,
    CHART,
    EXAMPLES,
    MANIFESTS,
    PLATFORM_CHART,
    ROOT,
    Rendered,
    containers_of,
    operator_pod,
    venv_tool,
)

pytestmark = pytest.mark.bundle

SKIPS_FILE = Path(__file__).with_name("checkov-skips.yaml")
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|ACCESS_KEY|CREDENTIAL)", re.IGNORECASE)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_container_runs_locked_down(rendered: dict[str, Rendered], name: str) -> None:
    spec = rendered[name].app_spec()
    for role in ("driver", "executor"):
        pod = operator_pod(spec, role, name)
        pod_context = pod["spec"]["securityContext"]
        assert pod_context["runAsNonRoot"] is True
        assert pod_context["runAsUser"] == 185
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in containers_of(pod):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["runAsNonRoot"] is True, container["name"]
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{container['name']} has a read-only root and no /tmp"


def _env_vars(doc: Any) -> list[dict[str, Any]]:
    """Every EnvVar-looking object anywhere in a document."""
    found = []
    if isinstance(doc, dict):
        if "name" in doc and ("value" in doc or "valueFrom" in doc):
            found.append(doc)
        for value in doc.values():
            found += _env_vars(value)
    elif isinstance(doc, list):
        for item in doc:
            found += _env_vars(item)
    return found


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_secret_is_written_in_plain_text(rendered: dict[str, Rendered], name: str) -> None:
    for doc in rendered[name].docs:
        assert doc["kind"] != "Secret", "the chart takes Secrets by reference only"
        for env in _env_vars(doc):
            if SECRET_NAME.search(env["name"]):
                assert "valueFrom" in env and "value" not in env, (
                    f"{doc['kind']} sets {env['name']} in plain text"
                )
        text = yaml.safe_dump(doc)
        assert "--api-key" not in text
        assert not re.search(r"hf_[A-Za-z0-9]{20,}", text), "a Hugging Face token leaked"


def _load_skips() -> list[dict[str, Any]]:
    skips = yaml.safe_load(SKIPS_FILE.read_text(encoding="utf-8"))
    for skip in skips:
        assert set(skip) == {"check", "resources", "reason"}, skip
        assert len(skip["reason"].split()) >= 8, f"{skip['check']}: give a real reason"
    return skips


def test_checkov_finds_nothing_outside_the_reasoned_skip_list(
    checkov_report: list[dict[str, Any]],
) -> None:
    skips = _load_skips()
    used: set[str] = set()
    unexplained = []
    for report in checkov_report:
        assert report["summary"]["parsing_errors"] == 0
        assert report["summary"]["resource_count"] > 0
        for failed in report["results"]["failed_checks"]:
            match = next(
                (
                    s
                    for s in skips
                    if s["check"] == failed["check_id"]
                    and any(re.search(r, failed["resource"]) for r in s["resources"])
                ),
                None,
            )
            if match is None:
                unexplained.append(
                    f"{failed['check_id']} {failed['resource']}: {failed['check_name']}"
                )
            else:
                used.add(match["check"])
    assert not unexplained, "checkov failures without a reason in checkov-skips.yaml:\n" + (
        "\n".join(sorted(set(unexplained)))
    )
    stale = {s["check"] for s in skips} - used
    assert not stale, f"checkov-skips.yaml lists checks that no longer fail: {sorted(stale)}"


def test_dockerfiles_pass_hadolint() -> None:
    """docker/ belongs to the image work; this lints whatever Dockerfiles it holds."""
    hadolint = venv_tool("hadolint", "HADOLINT")
    dockerfile = ROOT / "docker" / "Dockerfile"
    assert dockerfile.is_file(), "docker/Dockerfile is missing"
    files = sorted({dockerfile, *(ROOT / "docker").glob("Dockerfile*")})
    result = subprocess.run(
        [hadolint, *map(str, files)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_yaml_files_pass_yamllint() -> None:
    yamllint = venv_tool("yamllint", "YAMLLINT")
    config = (
        "{extends: default, rules: {line-length: {max: 120}, document-start: disable, "
        "comments: {min-spaces-from-content: 1}, truthy: {check-keys: false}, "
        "comments-indentation: disable, indentation: {indent-sequences: whatever}}}"
    )
    files = [
        CHART / "values.yaml",
        CHART / "Chart.yaml",
        PLATFORM_CHART / "values.yaml",
        PLATFORM_CHART / "Chart.yaml",
        SKIPS_FILE,
        *sorted(EXAMPLES.glob("*.yaml")),
        *sorted(MANIFESTS.glob("*.yaml")),
    ]
    result = subprocess.run(
        [yamllint, "--strict", "-d", config, *map(str, files)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
