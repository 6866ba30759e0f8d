"""The local vLLM server fetches no row's image URL from a host nobody allowed."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from spark_vllm.driver.local_server import LocalServer

pytestmark = pytest.mark.unit


def media_hosts(command: list[str]) -> list[str]:
    """The hosts after the last --allowed-media-domains (vLLM's parser keeps the last)."""
    flags = [i for i, arg in enumerate(command) if arg.startswith("--allowed-media-domains")]
    assert flags, command
    last = command[flags[-1]]
    if "=" in last:
        return [last.split("=", 1)[1]]
    hosts = []
    for arg in command[flags[-1] + 1 :]:
        if arg.startswith("--"):
            break
        hosts.append(arg)
    return hosts


def test_local_server_allows_no_media_host_by_default(tmp_path):
    command = LocalServer("m", "m", tmp_path / "log", port=8000).command()
    assert media_hosts(command) == ["no-remote-media.invalid"]
    assert not any(arg.startswith("--allowed-local-media-path") for arg in command)


@pytest.mark.parametrize(
    "given",
    [
        ["--allowed-media-domains", "images.example.com"],
        ["--allowed-media-domains=images.example.com"],
    ],
)
def test_the_users_media_hosts_pass_through_alone(tmp_path, given):
    command = LocalServer("m", "m", tmp_path / "log", port=8000, vllm_args=given).command()
    assert media_hosts(command) == ["images.example.com"]
    assert "no-remote-media.invalid" not in command


def test_local_server_follows_no_media_redirect(tmp_path, monkeypatch):
    seen: dict[str, Any] = {}

    class Popen:
        pid = 4242

        def __init__(self, command: list[str], **kwargs: Any) -> None:
            seen.update(kwargs)

    monkeypatch.delenv("VLLM_MEDIA_URL_ALLOW_REDIRECTS", raising=False)
    monkeypatch.setattr(subprocess, "Popen", Popen)
    assert LocalServer("m", "m", tmp_path / "log", port=8000).launch() == 4242
    assert seen["env"]["VLLM_MEDIA_URL_ALLOW_REDIRECTS"] == "0"
