"""Talk to the cluster tier's one-node Kubernetes: kubectl, helm and polling, nothing else.

Both binaries are the real ones from build/tools/bin (scripts/get-helm.sh): kubectl 1.35
and helm 4 against the node's API server 1.35. The helm calls that write pass
--server-side=false, as users of clusters older than 1.21 must (Helm 4 applies server-side by
default, which 1.20 refused for the chart's Services); both ways work on 1.35.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / "build" / "tools" / "bin"
T = TypeVar("T")
Obj = dict[str, Any]


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 2) -> T:
    """Poll until probe returns something truthy; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@dataclass(frozen=True)
class Cluster:
    """The running node: its admin kubeconfig and the API server's address."""

    kubeconfig: str
    api_server: str
    node_dir: Path
    node_name: str

    def _env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": self.kubeconfig}

    def run(
        self,
        tool: str,
        *args: str,
        check: bool = True,
        timeout: float = 300,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        binary = os.environ.get(tool.upper()) or str(TOOLS_BIN / tool)
        proc = subprocess.run(
            [binary, *args],
            capture_output=True,
            text=True,
            env=self._env(),
            cwd=ROOT,
            timeout=timeout,
            input=stdin,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{tool} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                f"{proc.stderr[-3000:]}"
            )
        return proc

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, **kw)

    def helm(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, **kw)

    def get(self, *args: str) -> Obj:
        """`kubectl get ARGS -o json`, parsed."""
        result: Obj = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return result

    def find(self, kind: str, name: str, namespace: str) -> Obj | None:
        proc = self.kubectl(
            "get", kind, name, "-n", namespace, "-o", "json", "--ignore-not-found", check=False
        )
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    def pods(self, namespace: str, selector: str) -> list[Obj]:
        items: list[Obj] = self.get("pods", "-n", namespace, "-l", selector)["items"]
        return items

    def can_i(self, verb: str, resource: str, namespace: str, who: str) -> bool:
        """`kubectl auth can-i` as `who`; RESOURCE/SUB names a subresource (pods/exec)."""
        resource, _, sub = resource.partition("/")
        args = ["auth", "can-i", verb, resource, "-n", namespace, "--as", who]
        args += [f"--subresource={sub}"] if sub else []
        proc = self.kubectl(*args, check=False)
        answer = proc.stdout.strip()
        assert answer in ("yes", "no"), f"kubectl auth can-i: {proc.stdout}{proc.stderr}"
        return answer == "yes"


@dataclass(frozen=True)
class Operator:
    """The Spark Operator running in the node: its namespace, Deployments and image."""

    namespace: str
    controller: str
    webhook: str
    image: str


def container_statuses(pod: Obj) -> list[Obj]:
    """The statuses of a pod's containers and of its init containers: a native sidecar (an
    init container with restartPolicy Always, such as the chart's vLLM) reports there."""
    status = pod.get("status", {})
    return [*status.get("containerStatuses", []), *status.get("initContainerStatuses", [])]


def pod_containers(pod: Obj) -> dict[str, Obj]:
    """A pod's containers by name, its native sidecars (init containers with restartPolicy
    Always) included; other init containers are left out."""
    spec = pod["spec"]
    sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    return {c["name"]: c for c in [*spec["containers"], *sidecars]}


def started_at(pod: Obj, name: str) -> str | None:
    """When the container NAME of the pod started running (RFC 3339), if it has."""
    for status in container_statuses(pod):
        if status["name"] == name:
            state = status.get("state", {})
            when = (state.get("running") or state.get("terminated") or {}).get("startedAt")
            return str(when) if when else None
    return None


def container_ready(pod: Obj, name: str) -> bool:
    return any(s["name"] == name and s.get("ready") for s in container_statuses(pod))


def restart_count(pod: Obj, name: str) -> int:
    statuses = container_statuses(pod)
    return next((int(s.get("restartCount", 0)) for s in statuses if s["name"] == name), 0)
