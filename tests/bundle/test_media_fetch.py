"""The sidecar's vLLM fetches a row's http(s) image URL only from the hosts the values list."""

from __future__ import annotations

from typing import Any

import pytest

from .render import CASES, CHART, Case, Rendered, containers_of, render, run_helm, vllm_container

pytestmark = pytest.mark.bundle

NO_HOST = "no-remote-media.invalid"


def media_hosts(args: list[str]) -> list[str]:
    """The hosts after the last --allowed-media-domains (vLLM's parser keeps the last)."""
    flags = [i for i, arg in enumerate(args) if arg.startswith("--allowed-media-domains")]
    assert flags, args
    hosts = []
    for arg in args[flags[-1] + 1 :]:
        if arg.startswith("--"):
            break
        hosts.append(arg)
    return hosts


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_sidecar_fetches_no_remote_media_by_default(
    rendered: dict[str, Rendered], name: str
) -> None:
    vllm = vllm_container(rendered[name].app_spec())
    assert media_hosts(vllm["args"]) == [NO_HOST]
    assert not any(a.startswith("--allowed-local-media-path") for a in vllm["args"])
    assert env_of(vllm)["VLLM_MEDIA_URL_ALLOW_REDIRECTS"] == "0"


def test_listed_hosts_are_the_only_ones_on_both_paths(helm: str) -> None:
    hosts = ["images.example.com", "cdn.example.org"]
    listed = ("sidecar.vllm.allowedMediaDomains", hosts)
    app = render(helm, "media", Case("chat.yaml", (listed,))).app_spec()
    assert media_hosts(vllm_container(app)["args"]) == hosts
    submit = render(helm, "media-submit", Case("chat.yaml", (listed, ("operator.enabled", False))))
    (vllm,) = [c for c in containers_of(submit.pod_template("executor")) if c["name"] == "vllm"]
    assert media_hosts(vllm["args"]) == hosts
    assert env_of(vllm)["VLLM_MEDIA_URL_ALLOW_REDIRECTS"] == "0"


@pytest.mark.parametrize("bad", [["http://images.example.com"], ["a b"], "images.example.com"])
def test_the_schema_refuses_what_is_not_a_list_of_host_names(helm: str, bad: object) -> None:
    case = Case("chat.yaml", (("sidecar.vllm.allowedMediaDomains", bad),))
    done = run_helm(helm, "template", "media", str(CHART), *case.helm_args())
    assert done.returncode != 0
    assert "allowedMediaDomains" in done.stderr
