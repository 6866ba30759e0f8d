"""One operator-less spark-vllm job on the node: its values, its release, its output.

Each job gets a data folder on the node's disk (the machine's: one node), mounted at /data
in the driver and the executors by Spark itself (spark.kubernetes.*.volumes.hostPath.*):
input/questions.jsonl in, output/ out, written by uid 185.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml
from deltalake import DeltaTable

from tests.conftest import chart_model_values

from .kube import ROOT, Cluster, Obj, wait_for

CHART = "charts/spark-vllm"
QUESTIONS = ROOT / "examples" / "data" / "questions.jsonl"


def questions(n: int) -> list[dict[str, Any]]:
    with QUESTIONS.open() as fh:
        return [json.loads(line) for _, line in zip(range(n), fh, strict=False)]


def values(
    name: str, image: str, model_root: Path, data: Path, api_server: str, job: dict[str, Any]
) -> dict[str, Any]:
    """The chart's values for a small CPU job on the 2-core node, operator-less."""
    repository, tag = image.rsplit(":", 1)
    mount = {
        f"spark.kubernetes.{role}.volumes.hostPath.data.{key}": value
        for role in ("driver", "executor")
        for key, value in (
            ("mount.path", "/data"),
            ("mount.readOnly", "false"),
            ("options.path", str(data)),
        )
    }
    return {
        "fullnameOverride": name,
        "operator": {"enabled": False},
        # No kube-proxy on this node: the kubernetes Service's address routes nowhere.
        "submitter": {"apiServer": api_server},
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "model": chart_model_values(model_root),
        "sidecar": {
            # The chart's default mode, native: the node is Kubernetes 1.35.
            # A request only: vLLM may use both cores when they are idle.
            "cpu": "500m",
            "memoryMi": 4096,
            "shmSizeMi": 512,
            "startupTimeoutSeconds": 600,
            "gpu": {"count": 0},
            # float32: the CPU's bfloat16 kernels are slow without AVX-512 BF16.
            "vllm": {"gpuMemoryUtilization": None, "maxModelLen": 512, "dtype": "float32"},
            "env": [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"}],
        },
        "driver": {"cores": 1, "memoryMi": 1024, "memoryOverheadMi": 512},
        "executor": {
            "instances": 1,
            "cores": 1,
            "memoryMi": 1024,
            "memoryOverheadMi": 1024,
            "tolerations": [],
        },
        "sparkConf": {
            # Fractions of a core, so that the submitter, the driver, the executor and its
            # sidecar fit on two cores (and the chart's Volcano minResources count them).
            "spark.kubernetes.driver.request.cores": "300m",
            "spark.kubernetes.executor.request.cores": "300m",
            **mount,
        },
        "timeToLiveSeconds": None,
        "job": job,
    }


def chat_job(**overrides: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "input": {"format": "jsonl", "path": "/data/input/questions.jsonl", "id_column": "id"},
        "output": {"format": "parquet", "path": "/data/output", "keep_columns": ["question"]},
        "task": "chat",
        "prompt": {"template": "{{ question }}"},
        "sampling": {"max_tokens": 16, "temperature": 0.0},
        "partitions": 4,
        "concurrency": {"per_executor": 32},
        "on_error": "record",
    }
    job.update(overrides)
    return job


@dataclass
class Job:
    """A release of the chart with operator.enabled false, and its data folder."""

    cluster: Cluster
    namespace: str
    name: str
    data: Path
    values_file: Path

    @property
    def submitter(self) -> str:
        return f"{self.name}-submit"

    @property
    def driver(self) -> str:
        return f"{self.name}-driver"

    @property
    def output(self) -> Path:
        return self.data / "output"

    def install(self) -> None:
        self.cluster.helm(
            "install", self.name, CHART, "-n", self.namespace, "-f", str(self.values_file),
            "--server-side=false",
        )  # fmt: skip

    def rerun(self) -> None:
        """Run the job again as the chart's NOTES say: delete the Job, upgrade the release."""
        self.cluster.kubectl("delete", "job", self.submitter, "-n", self.namespace, "--wait=true")
        self.cluster.helm(
            "upgrade", self.name, CHART, "-n", self.namespace, "--reuse-values",
            "--server-side=false",
        )  # fmt: skip

    def uninstall(self) -> None:
        self.cluster.helm("uninstall", self.name, "-n", self.namespace, "--wait", check=False)
        self.cluster.kubectl(
            "delete", "pods", "-n", self.namespace, "-l", f"app.kubernetes.io/instance={self.name}",
            "--wait=false", check=False,
        )  # fmt: skip

    def job_status(self) -> str | None:
        """Complete, Failed, or None while the Job runs."""
        job = self.cluster.find("job", self.submitter, self.namespace)
        for condition in (job or {}).get("status", {}).get("conditions", []):
            if condition["status"] == "True" and condition["type"] in ("Complete", "Failed"):
                return str(condition["type"])
        return None

    def wait_finished(self, timeout: float) -> str:
        return wait_for(f"Job {self.submitter} to finish", self.job_status, timeout, every=3)

    def executors(self) -> list[Obj]:
        return self.cluster.pods(
            self.namespace, f"app.kubernetes.io/instance={self.name},spark-role=executor"
        )

    def logs(self, pod: str, container: str | None = None) -> str:
        args = ["logs", pod, "-n", self.namespace] + (["-c", container] if container else [])
        proc = self.cluster.kubectl(*args, check=False)
        return proc.stdout + proc.stderr

    def report(self) -> str:
        """What went on, for a failing assertion: pods, the submitter's and driver's logs."""
        pods = self.cluster.kubectl(
            "get", "pods", "-n", self.namespace, "-o", "wide", "-l",
            f"app.kubernetes.io/instance={self.name}", check=False,
        ).stdout  # fmt: skip
        submit = self.cluster.kubectl(
            "logs", f"job/{self.submitter}", "-n", self.namespace, "--tail=40", check=False
        )
        return (
            f"--- pods ---\n{pods}\n"
            f"--- submitter ---\n{submit.stdout[-3000:]}{submit.stderr[-500:]}"
            f"\n--- driver ---\n{self.logs(self.driver)[-5000:]}"
        )

    def committed_tasks(self) -> int:
        """Task outputs committed so far, over all runs."""
        return len(list(self.output.glob("run=*/part-*")))

    def committed_tasks_of_newest_run(self) -> int:
        """Task outputs committed so far by the newest run (run ids sort by their start);
        0 before any run has begun its write."""
        newest = max(self.output.glob("run=*"), default=None)
        return len(list(newest.glob("part-*"))) if newest else 0

    def set_gpus(self, count: int) -> None:
        """The vLLM sidecar's GPU count in the values file (the node advertises some)."""
        values = yaml.safe_load(self.values_file.read_text())
        values["sidecar"]["gpu"] = {"count": count}
        self.values_file.write_text(yaml.safe_dump(values))

    def successes(self) -> Counter[Any]:
        """Successful rows per input id, over all runs."""
        return Counter(
            r["id"] for rows in self.rows_by_run().values() for r in rows if r["error"] is None
        )

    def rows_by_run(self) -> dict[str, list[dict[str, Any]]]:
        """Rows per `run=<id>` folder; for a Delta table (read by delta-rs, not Spark), rows
        per `run` column value, keyed the same way."""
        if (self.output / "_delta_log").is_dir():
            by_run: dict[str, list[dict[str, Any]]] = {}
            for row in DeltaTable(str(self.output)).to_pyarrow_table().to_pylist():
                by_run.setdefault(f"run={row['run']}", []).append(row)
            return by_run
        runs = {}
        for folder in sorted(self.output.glob("run=*")):
            files = sorted(folder.glob("part-*.parquet"))
            runs[folder.name] = [r for f in files for r in pq.read_table(f).to_pylist()]
        return runs


def make_job(
    cluster: Cluster,
    namespace: str,
    name: str,
    tmp: Path,
    image: str,
    model_root: Path,
    rows: int,
    job: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Job:
    """The job's data folder and values (`extra`: more top-level values)."""
    data = tmp / "data"
    (data / "input").mkdir(parents=True)
    (data / "output").mkdir()
    for folder in (data, data / "input", data / "output"):
        folder.chmod(0o777)  # the job writes as uid 185
    (data / "input" / "questions.jsonl").write_text(
        "".join(json.dumps(q) + "\n" for q in questions(rows))
    )
    values_file = tmp / "values.yaml"
    chart_values = values(name, image, model_root, data, cluster.api_server, job)
    values_file.write_text(yaml.safe_dump({**chart_values, **(extra or {})}))
    return Job(cluster, namespace, name, data, values_file)


def until(what: str, check: Any, timeout: float, every: float = 1) -> Any:
    start = time.monotonic()
    value = wait_for(what, check, timeout, every)
    print(f"{what}: after {time.monotonic() - start:.0f}s")
    return value


def rendered_application(cluster: Cluster, release: str, namespace: str, *args: str) -> Obj:
    """The SparkApplication `helm template RELEASE` renders from the chart (ARGS: values
    files, --set ...) for the node's Kubernetes version (helm template alone assumes an
    old one, for which the chart refuses native sidecars), as a dict."""
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    rendered = cluster.helm(
        "template", release, CHART, "-n", namespace,
        "--kube-version", version["gitVersion"], *args,
    ).stdout  # fmt: skip
    apps: list[Obj] = [
        d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "SparkApplication"
    ]
    (app,) = apps
    return app
