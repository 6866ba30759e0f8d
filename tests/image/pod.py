"""Run containers the way the kubelet would run the chart's containers, with plain Docker.

Translates a rendered Kubernetes container (command, args, env, volume mounts, security
context) into `docker run` arguments, and runs exec probes as the kubelet does. Only what
the chart uses is translated; anything else fails loudly instead of being dropped.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
Obj = dict[str, Any]

# What makes the CPU image: a change to any of these builds a new one.
IMAGE_INPUTS = [
    ".dockerignore",
    "docker/Dockerfile",
    "docker/getGpusResources.sh",
    "docker/entrypoint.sh",
    "docker/submit.py",
    "docker/notebook.py",
    "docker/setup-image.sh",
    "pyproject.toml",
    "scripts/build-image.sh",
    "scripts/get-jars.sh",
    "requirements",
    "src",
    "jobs",
    "charts/spark-vllm",
]


def docker(*args: str, check: bool = True, timeout: float | None = None) -> str:
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} ... failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def image_exists(name: str) -> bool:
    proc = subprocess.run(["docker", "image", "inspect", name], capture_output=True, check=False)
    return proc.returncode == 0


def docker_engine_problem() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    proc = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["docker info failed"])[-1]
        return f"no Docker engine ({last}); start one with scripts/start-dockerd.sh"
    return None


def inputs_digest() -> str:
    """A digest of the image's build inputs, so an unchanged tree reuses its image."""
    digest = hashlib.sha256()
    for name in IMAGE_INPUTS:
        path = ROOT / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if "__pycache__" in f.parts:
                continue
            digest.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _quantity_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


@dataclass
class PodVolumes:
    """The pod's volumes, as Docker sees them: host directories for hostPath and
    configMap volumes, tmpfs for emptyDir."""

    volumes: list[Obj]
    host_dirs: dict[str, Path] = field(default_factory=dict)

    def mount_args(self, mounts: list[Obj]) -> list[str]:
        by_name = {v["name"]: v for v in self.volumes}
        args: list[str] = []
        for mount in mounts:
            volume = by_name[mount["name"]]
            target = mount["mountPath"]
            ro = ":ro" if mount.get("readOnly") else ""
            if mount["name"] in self.host_dirs:
                args += ["-v", f"{self.host_dirs[mount['name']]}:{target}{ro}"]
            elif "emptyDir" in volume:
                size = volume["emptyDir"].get("sizeLimit")
                if target == "/dev/shm":
                    args += ["--shm-size", str(_quantity_bytes(size))] if size else []
                    continue
                # emptyDir is writable by the pod's fsGroup and allows executables
                # (torch inductor loads the libraries it compiles there).
                opts = "rw,exec,mode=1777" + (f",size={_quantity_bytes(size)}" if size else "")
                args += ["--tmpfs", f"{target}:{opts}"]
            else:
                raise AssertionError(f"volume {mount['name']!r} has no stand-in: {volume}")
        return args


def security_args(ctx: Obj) -> list[str]:
    args: list[str] = []
    if "runAsUser" in ctx:
        args += ["--user", f"{ctx['runAsUser']}:{ctx.get('runAsGroup', ctx['runAsUser'])}"]
    if ctx.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if ctx.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    for cap in ctx.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    return args


def env_args(env: list[Obj]) -> list[str]:
    args: list[str] = []
    for var in env:
        if "value" not in var:
            raise AssertionError(f"env {var['name']} comes from {var}: give it a plain value")
        args += ["-e", f"{var['name']}={var['value']}"]
    return args


def run_args(
    container: Obj, image: str, volumes: PodVolumes, name: str, network: str | None = None
) -> list[str]:
    """`docker run` arguments for one Kubernetes container. As in Kubernetes, `command`
    replaces the image's entrypoint and `args` its default command."""
    args = ["run", "--detach", "--name", name]
    if network:
        args += ["--network", network]
    memory = container.get("resources", {}).get("limits", {}).get("memory")
    if memory:
        args += ["--memory", str(_quantity_bytes(memory))]
    args += security_args(container.get("securityContext", {}))
    args += env_args(container.get("env", []))
    args += volumes.mount_args(container.get("volumeMounts", []))
    command = container.get("command") or []
    if command:
        args += ["--entrypoint", command[0]]
    args += [image, *command[1:], *container.get("args", [])]
    return args


def running(name: str) -> bool:
    return docker("inspect", "--format", "{{.State.Running}}", name).strip() == "true"


def wait_for_probe(name: str, probe: Obj) -> float:
    """Run an exec probe like the kubelet until it passes; seconds it took.

    Fails when the container exits or after failureThreshold periods."""
    command = probe["exec"]["command"]
    period = probe.get("periodSeconds", 10)
    timeout = probe.get("timeoutSeconds", 1)
    start = time.monotonic()
    for _ in range(probe.get("failureThreshold", 3)):
        if not running(name):
            raise AssertionError(f"container {name} exited before its probe passed")
        try:
            proc = subprocess.run(
                ["docker", "exec", name, *command], capture_output=True, timeout=timeout
            )
            if proc.returncode == 0:
                return time.monotonic() - start
        except subprocess.TimeoutExpired:
            pass
        time.sleep(period)
    raise AssertionError(f"probe of {name} did not pass: {command}")


def logs(name: str) -> str:
    proc = subprocess.run(["docker", "logs", name], capture_output=True, text=True, check=False)
    return proc.stdout + proc.stderr
