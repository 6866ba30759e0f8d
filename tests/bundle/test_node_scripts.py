"""The scripts around the cluster tier, run against stand-ins: scripts/start-dockerd.sh with a
fake `docker` client and fake `dockerd`s on PATH, and the runc wrapper with a fake runc.

The stand-ins model only what the script reads: `docker info` answers when the socket the
client uses exists (a dockerd serving it creates it), and reports the default runtime that
engine read from its configuration file (again on SIGHUP, as dockerd reloads runtimes)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .render import ROOT

pytestmark = pytest.mark.bundle

START_DOCKERD = ROOT / "scripts" / "start-dockerd.sh"
WRAPPER = ROOT / "scripts" / "k8s-node" / "runc-oom-score-adj"

FAKE_DOCKER = r"""#!/bin/bash
# docker client stand-in: talks to the socket in DOCKER_HOST only.
sock=${DOCKER_HOST#unix://}
case "$1" in
context) echo "unix:///nonexistent/default.sock"; exit 0 ;;
info|version)
    [ -e "$sock" ] || { echo "Cannot connect to the Docker daemon at $DOCKER_HOST" >&2; exit 1; }
    case "$*" in *DefaultRuntime*) cat "$sock.runtime" ;; *) echo fake ;; esac ;;
*) exit 2 ;;
esac
"""

FAKE_DOCKERD = r"""#!/bin/bash
# dockerd stand-in: serves the -H socket, reads default-runtime from --config-file (again
# on SIGHUP), writes its pid to --pidfile, records its arguments.
echo "$*" >>"$FAKE_DOCKERD_CALLS"
while [ $# -gt 0 ]; do
    case "$1" in
    -H) sock=${2#unix://}; shift ;;
    --config-file) config=$2; shift ;;
    --pidfile) pidfile=$2; shift ;;
    esac
    shift
done
echo $$ >"$pidfile"
load() { jq -r '."default-runtime" // "runc"' "$config" >"$sock.runtime"; }
trap load HUP
load
touch "$sock"
while true; do sleep 0.2; done
"""

OTHER_DOCKERD = r"""#!/bin/bash
# Another engine's dockerd (rootless, another tool's): it serves some other socket.
touch "$1"
while true; do sleep 0.2; done
"""


class Sandbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        for name, text in (("docker", FAKE_DOCKER), ("dockerd", FAKE_DOCKERD)):
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        other = root / "other" / "dockerd"
        other.parent.mkdir()
        other.write_text(OTHER_DOCKERD)
        other.chmod(0o755)
        self.other = other
        (root / "run").mkdir()
        self.socket = root / "run" / "docker.sock"
        self.config = root / "etc" / "daemon.json"
        self.pidfile = root / "run" / "docker.pid"
        self.wrapper = root / "libexec" / "runc-oom-score-adj"
        self.calls = root / "dockerd-calls"
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKERD_CONFIG": str(self.config),
            "DOCKERD_PIDFILE": str(self.pidfile),
            "DOCKERD_LOG": str(self.root / "dockerd.log"),
            "DOCKERD_TIMEOUT": "15",
            "RUNC_WRAPPER": str(self.wrapper),
            "FAKE_DOCKERD_CALLS": str(self.calls),
        }

    def start_other_engine(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([str(self.other), str(self.root / "run" / "other.sock")])
        self.processes.append(proc)
        return proc

    def run(self) -> subprocess.CompletedProcess[str]:
        # SIGHUP back to its default for the script and the engine it starts: under nohup
        # it arrives ignored, and bash cannot trap a signal ignored on entry (the fake
        # engine would never reload; a real dockerd, in Go, takes it back either way)
        return subprocess.run(
            ["bash", str(START_DOCKERD)], env=self.env, capture_output=True, text=True,
            timeout=60, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
        )  # fmt: skip

    def starts(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    def stop(self) -> None:
        for proc in self.processes:
            proc.kill()
            proc.wait()
        if self.pidfile.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(self.pidfile.read_text()), signal.SIGKILL)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    if os.geteuid() != 0:
        pytest.fail("start-dockerd.sh runs as root (CI and these machines do)", pytrace=False)
    box = Sandbox(tmp_path)
    try:
        yield box
    finally:
        box.stop()


def test_another_dockerd_without_our_socket_does_not_stop_ours_from_starting(
    sandbox: Sandbox,
) -> None:
    other = sandbox.start_other_engine()
    time.sleep(0.3)
    assert subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True).returncode == 0
    start = time.monotonic()
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - start < 15, "it waited on the other engine"
    (call,) = sandbox.starts()
    assert f"-H unix://{sandbox.socket}" in call
    assert f"--config-file {sandbox.config}" in call
    assert other.poll() is None, "the other engine was touched"
    assert "default runtime spark-vllm-runc" in result.stderr


def test_the_runc_wrapper_is_installed_and_made_the_default_runtime(sandbox: Sandbox) -> None:
    sandbox.config.parent.mkdir()
    sandbox.config.write_text(json.dumps({"log-level": "warn"}))
    assert sandbox.run().returncode == 0
    config = json.loads(sandbox.config.read_text())
    assert config == {
        "log-level": "warn",
        "runtimes": {"spark-vllm-runc": {"path": str(sandbox.wrapper)}},
        "default-runtime": "spark-vllm-runc",
    }
    assert sandbox.wrapper.read_bytes() == WRAPPER.read_bytes()
    assert os.access(sandbox.wrapper, os.X_OK)


def test_a_running_engine_is_reused_and_reloads_a_missing_runtime(sandbox: Sandbox) -> None:
    assert sandbox.run().returncode == 0
    # The engine is ours, but its configuration lost the runtime (an older set-up).
    sandbox.config.write_text("{}")
    os.kill(int(sandbox.pidfile.read_text()), signal.SIGHUP)
    # the engine reloads once its shell is back from a sleep: wait for it
    runtime = Path(f"{sandbox.socket}.runtime")
    deadline = time.monotonic() + 10
    while runtime.read_text().strip() != "runc" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runtime.read_text().strip() == "runc", "the fake engine never reloaded"
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    assert len(sandbox.starts()) == 1, "a second engine was started"
    assert "reloading" in result.stderr
    assert "engine already running" in result.stderr
    assert "default runtime: spark-vllm-runc" in result.stderr


def test_a_dockerd_holding_the_pid_file_but_not_our_socket_is_named(sandbox: Sandbox) -> None:
    other = sandbox.start_other_engine()
    sandbox.pidfile.write_text(str(other.pid))
    time.sleep(0.3)
    result = sandbox.run()
    assert result.returncode == 1
    assert f"dockerd pid {other.pid} owns {sandbox.pidfile} but does not answer" in result.stderr
    assert not sandbox.starts()


@pytest.mark.parametrize(
    ("before", "after"), [(-998, 0), (-1, 0), (0, 0), (1000, 1000), (None, None)]
)
def test_runc_wrapper_raises_only_a_negative_oom_score_adj(
    tmp_path: Path, before: int | None, after: int | None
) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    process: dict[str, object] = {"args": ["/pause"]}
    if before is not None:
        process["oomScoreAdj"] = before
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "process": process}))
    runc = tmp_path / "runc"
    runc.write_text('#!/bin/sh\necho "$@" >"$(dirname "$0")/argv"\n')
    runc.chmod(0o755)
    args = ["--root", "/run/x", "--log-format", "json", "create", "--bundle", str(bundle), "c1"]
    proc = subprocess.run(
        ["sh", str(WRAPPER), *args],
        env={**os.environ, "SPARK_VLLM_REAL_RUNC": str(runc)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "argv").read_text().split() == args
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"].get("oomScoreAdj") == after
    assert config["process"]["args"] == ["/pause"]
