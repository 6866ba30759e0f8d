"""The instant stand-in server (bench/standin/main.go): build it, run it, ask it, load it.

The bench builds the Go source with the standard library only (no module proxy is
needed) into `build/standin/<source digest>/`, so an unchanged source is built once.
Where Go or wrk is missing and the bench runs as root, it installs Debian's packages.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from bench import proctree

SOURCE = Path(__file__).resolve().parent / "standin" / "main.go"

# Debian bookworm's packages, pinned: Go 1.19 builds the stand-in; wrk checks its speed.
GO_PACKAGE = "golang-1.19-go=1.19.8-2"
WRK_PACKAGE = "wrk=4.1.0-3+b2"


def _apt_install(package: str) -> bool:
    """Install a Debian package when running as root; False when that is not possible."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "--no-install-recommends", package]
    print(f"bench: apt-get install {package} ...", flush=True)
    if subprocess.run(argv, env=env, capture_output=True, check=False).returncode == 0:  # noqa: S603
        return True
    subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)  # noqa: S607
    return subprocess.run(argv, env=env, capture_output=True, check=False).returncode == 0  # noqa: S603


def _go() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    # Debian installs its versioned Go toolchains off the PATH.
    for root in sorted(Path("/usr/lib").glob("go-1.*"), reverse=True):
        if (root / "bin" / "go").exists():
            return str(root / "bin" / "go")
    return None


def ensure_binary(cache: Path) -> Path:
    """The stand-in's executable, built from the current source when not cached yet."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    binary = cache / digest / "standin"
    if binary.exists():
        return binary
    go = _go() or (_go() if _apt_install(GO_PACKAGE) else None)
    if go is None:
        raise SystemExit(
            "bench: the ceiling path builds its stand-in server with Go (>= 1.19), which is "
            f"not installed; as root: apt-get install {GO_PACKAGE.split('=')[0]}"
        )
    print(f"bench: building the stand-in server with {go} ...", flush=True)
    env = {
        **os.environ,
        "GOCACHE": str(cache / "gocache"),
        "GOPATH": str(cache / "gopath"),
        "GO111MODULE": "off",  # one file, standard library only: no module, no proxy
        "GOPROXY": "off",
        "CGO_ENABLED": "0",
    }
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".partial")
    subprocess.run(  # noqa: S603
        [go, "build", "-trimpath", "-o", str(partial), str(SOURCE)], env=env, check=True
    )
    partial.rename(binary)
    return binary


def ensure_wrk() -> str | None:
    """wrk's path, installed when missing and possible; None without it."""
    return shutil.which("wrk") or (shutil.which("wrk") if _apt_install(WRK_PACKAGE) else None)


class StandIn:
    """The stand-in on a free loopback port, for a `with` block; `base_url` ends in /v1."""

    def __init__(self, binary: Path, model: str, dimensions: int, log_path: Path) -> None:
        self.argv = [str(binary), "-model", model, "-dim", str(dimensions)]
        self.log_path = log_path
        self.root = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return self.root + "/v1"

    def __enter__(self) -> StandIn:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(  # noqa: S603
            self.argv, stdout=subprocess.PIPE, stderr=self._log, start_new_session=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        found = re.search(r"listening on (http://\S+)", line)
        if found is None:
            self.__exit__(None, None, None)
            raise SystemExit(
                f"bench: the stand-in server did not start: {line!r}; see {self.log_path}"
            )
        self.root = found.group(1)
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(self.root + "/health", timeout=2):  # noqa: S310
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()

    def cpu_s(self) -> float:
        """CPU seconds the stand-in has used so far."""
        assert self.proc is not None
        found = proctree.stat(self.proc.pid)
        return found.cpu_s if found is not None else 0.0

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.root + "/standin/stats", timeout=10) as resp:  # noqa: S310
            return dict(json.loads(resp.read()))


def wrk_rate(
    wrk: str, url: str, body: dict[str, Any], seconds: float, connections: int = 128
) -> float | None:
    """Requests/s wrk (one thread, keep-alive) gets POSTing `body` to `url`."""
    script = (
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
    try:
        out = subprocess.run(  # noqa: S603
            [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", fh.name, url],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    finally:
        os.unlink(fh.name)
    found = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if found is None or errors is not None:
        return None
    return float(found.group(1))
