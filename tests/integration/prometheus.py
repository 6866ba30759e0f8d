"""A real Prometheus server for the metrics tests: Debian's `prometheus` package, on a free
loopback port with a fresh TSDB in a temporary directory, scraping the targets it is given
every half second, stopped at the end."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import yaml

from spark_vllm.driver.local_server import free_port  # internal helper: a free loopback port

SCRAPE_INTERVAL = "500ms"


def binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise RuntimeError(
            "no prometheus here: install Debian's prometheus package (make test does, with "
            "apt-get, when it runs as root)"
        )
    return found


class Prometheus:
    """`jobs`: scrape job name → (target host:port, file holding the bearer token, or
    None to send none)."""

    def __init__(self, root: Path, jobs: dict[str, tuple[str, Path | None]]) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        scrape_configs: list[dict[str, Any]] = []
        for name, (target, token_file) in jobs.items():
            job: dict[str, Any] = {"job_name": name, "static_configs": [{"targets": [target]}]}
            if token_file is not None:
                job["authorization"] = {"type": "Bearer", "credentials_file": str(token_file)}
            scrape_configs.append(job)
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
            "scrape_configs": scrape_configs,
        }
        self.config = root / "prometheus.yml"
        self.process: subprocess.Popen[bytes] | None = None

        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(config))

    def start(self, timeout_s: float = 60) -> Prometheus:
        log = (self.root / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary(), f"--config.file={self.config}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready after {timeout_s}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return (self.root / "prometheus.log").read_text(errors="replace")

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>: its `data`."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = orjson.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """An instant query: (labels, value) per series."""
        data = self.api("query", query=promql)
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def targets(self) -> dict[str, dict[str, Any]]:
        """Active targets by scrape job: health, lastError..."""
        return {t["scrapePool"]: t for t in self.api("targets")["activeTargets"]}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
