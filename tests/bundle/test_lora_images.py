"""The sidecar serves LoRA adapters and images: sidecar.vllm.lora and limitMmPerPrompt become
vLLM's arguments (and its runtime-loading switch), on every container path, and the schema
refuses LoRA values that vLLM would refuse or that do nothing without `lora.enabled`."""

from __future__ import annotations

from typing import Any

import pytest

from .render import CHART, Case, Doc, containers_of, render, run_helm, vllm_container

pytestmark = pytest.mark.bundle

# The ways the vLLM container reaches an executor pod: the operator's initContainers (native)
# or sidecars (classic), and the operator-less path's executor pod template.
PATHS: dict[str, tuple[tuple[str, Any], ...]] = {
    "native": (("sidecar.mode", "native"),),
    "classic": (("sidecar.mode", "classic"),),
    "submit": (("operator.enabled", False), ("sidecar.mode", "classic")),
}

FLAGS = ("--enable-lora", "--max-lora", "--max-cpu-loras", "--lora-modules", "--limit-mm")
RUNTIME_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"

TWO_ADAPTERS = {
    "enabled": True,
    "maxLoras": 2,
    "maxLoraRank": 8,
    "adapters": [
        {"name": "alpha", "path": "/models/loras/alpha"},
        {"name": "beta", "path": "/models/loras/beta"},
    ],
}


def vllm_of(helm: str, path: str, *overrides: tuple[str, Any]) -> Doc:
    """The vLLM container of the executor pod, rendered from chat.yaml on `path`."""
    result = render(helm, f"lora-{path}", Case("chat.yaml", (*PATHS[path], *overrides)))
    if path == "submit":
        (found,) = [
            c for c in containers_of(result.pod_template("executor")) if c["name"] == "vllm"
        ]
        return found
    return vllm_container(result.app_spec())


def env_names(container: Doc) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def refusal(helm: str, *overrides: tuple[str, Any]) -> str:
    result = run_helm(helm, "template", "t", str(CHART), *Case("chat.yaml", overrides).helm_args())
    assert result.returncode != 0, "helm rendered values it should refuse"
    return result.stderr


@pytest.mark.parametrize("path", sorted(PATHS))
def test_default_values_render_no_lora_or_multimodal_arguments(helm: str, path: str) -> None:
    vllm = vllm_of(helm, path)
    assert [a for a in vllm["args"] if a.startswith(FLAGS)] == []
    assert RUNTIME_ENV not in env_names(vllm)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_lora_renders_its_flags_and_one_lora_modules_flag_for_all_adapters(
    helm: str, path: str
) -> None:
    vllm = vllm_of(helm, path, ("sidecar.vllm.lora", TWO_ADAPTERS))
    args = vllm["args"]
    assert [a for a in args if a.startswith(FLAGS)] == [
        "--enable-lora",
        "--max-loras=2",
        "--max-lora-rank=8",
        "--lora-modules",
    ]
    start = args.index("--lora-modules") + 1
    assert args[start : start + 2] == ["alpha=/models/loras/alpha", "beta=/models/loras/beta"]
    assert RUNTIME_ENV not in env_names(vllm), "runtime loading stays off unless asked for"


def test_max_cpu_loras_is_passed_only_when_set(helm: str) -> None:
    lora = {**TWO_ADAPTERS, "maxCpuLoras": 4}
    assert "--max-cpu-loras=4" in vllm_of(helm, "native", ("sidecar.vllm.lora", lora))["args"]


@pytest.mark.parametrize("path", sorted(PATHS))
def test_runtime_loading_lets_the_job_load_adapters_through_vllms_env(helm: str, path: str) -> None:
    lora = {"enabled": True, "runtimeLoading": True}
    vllm = vllm_of(helm, path, ("sidecar.vllm.lora", lora))
    assert {"name": RUNTIME_ENV, "value": "True"} in vllm["env"]
    assert "--lora-modules" not in vllm["args"], "no adapters preloaded"


@pytest.mark.parametrize("path", sorted(PATHS))
def test_limit_mm_per_prompt_renders_compact_json(helm: str, path: str) -> None:
    limit = {"image": 4, "video": 0}
    args = vllm_of(helm, path, ("sidecar.vllm.limitMmPerPrompt", limit))["args"]
    assert [a for a in args if a.startswith("--limit-mm")] == [
        '--limit-mm-per-prompt={"image":4,"video":0}'
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            (("sidecar.vllm.lora", {"enabled": True, "maxLoraRank": 7}),),
            "/sidecar/vllm/lora/maxLoraRank': value must be one of 1, 8, 16",
        ),
        (
            (("sidecar.vllm.lora", {"enabled": True, "adapters": [{"name": "-x", "path": "/a"}]}),),
            "/sidecar/vllm/lora/adapters/0/name': '-x' does not match pattern",
        ),
        (
            (("sidecar.vllm.lora", {"enabled": True, "adapters": [{"name": "a", "path": ""}]}),),
            "/sidecar/vllm/lora/adapters/0/path': minLength",
        ),
        (
            (("sidecar.vllm.lora.adapters", [{"name": "a", "path": "/a"}]),),
            "/sidecar/vllm/lora/enabled': value must be true",
        ),
        (
            (("sidecar.vllm.lora.runtimeLoading", True),),
            "/sidecar/vllm/lora/enabled': value must be true",
        ),
        (
            (("sidecar.vllm.lora", {"enabled": True, "maxLora": 2}),),
            "additional properties 'maxLora' not allowed",
        ),
    ],
    ids=["rank-7", "bad-name", "empty-path", "adapters-off", "runtime-off", "typo"],
)
def test_schema_refuses_lora_values_vllm_would_refuse_or_ignore(
    helm: str, overrides: tuple[tuple[str, Any], ...], message: str
) -> None:
    stderr = refusal(helm, *overrides)
    assert message in stderr, stderr


def test_max_cpu_loras_below_max_loras_is_refused(helm: str) -> None:
    lora = {"enabled": True, "maxLoras": 4, "maxCpuLoras": 2}
    assert "sidecar.vllm.lora.maxCpuLoras 2 is below maxLoras 4" in refusal(
        helm, ("sidecar.vllm.lora", lora)
    )


def test_two_adapters_of_one_name_are_refused(helm: str) -> None:
    adapters = [{"name": "a", "path": "/a"}, {"name": "a", "path": "/b"}]
    stderr = refusal(helm, ("sidecar.vllm.lora", {"enabled": True, "adapters": adapters}))
    assert "sidecar.vllm.lora.adapters names a twice" in stderr, stderr
