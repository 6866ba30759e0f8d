"""Notebook mode on the real node: the chart with notebook.enabled starts JupyterLab (its
token from a Secret), and the example notebook, copied in with `kubectl cp` as the chart's
NOTES say, runs headless (nbclient, inside the notebook pod) to its end: its kernel's Spark
driver in client mode starts an executor with the vLLM sidecar through the chart's pod
template, and `spark_vllm.chat()` answers one row per question."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml

from .jobs import CHART, until, values
from .kube import ROOT, Cluster, Obj, container_ready, pod_containers

pytestmark = pytest.mark.cluster

NAME = "nb-chat"
NOTEBOOK = ROOT / "examples" / "notebooks" / "chat.ipynb"
RUNNER = Path(__file__).with_name("run_notebook.py")
# Run after the notebook's own cells, in its kernel: what its table of answers holds.
PROBE = (
    "import json\n"
    "print('PROBE ' + json.dumps({'questions': len(questions),\n"
    "    'rows': table[['id', 'response', 'error']].to_dict('records')}))"
)


def notebook_values(
    cluster: Cluster, image: str, model_root: Path, tmp: Path, secret: str
) -> dict[str, Any]:
    """The cluster tier's small CPU values (jobs.values), in notebook mode: no job."""
    chart_values = values(NAME, image, model_root, tmp, cluster.api_server, job={})
    del chart_values["job"], chart_values["timeToLiveSeconds"]
    # Kept after spark.stop(), so that the test sees what Spark made of the pod template.
    chart_values["executor"]["deleteOnTermination"] = False
    chart_values["notebook"] = {
        "enabled": True,
        "tokenSecret": {"name": secret},
        "cpu": "200m",
        "memoryMi": 1024,
    }
    return chart_values


def notebook_pod(cluster: Cluster, namespace: str) -> Obj | None:
    pods = cluster.pods(
        namespace, f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component=notebook"
    )
    ready = [p for p in pods if container_ready(p, "notebook")]
    return ready[0] if ready else None


def report(cluster: Cluster, namespace: str) -> str:
    pods = cluster.kubectl(
        "get", "pods", "-n", namespace, "-o", "wide", "-l", f"app.kubernetes.io/instance={NAME}",
        check=False,
    ).stdout  # fmt: skip
    log = cluster.kubectl(
        "logs", f"deployment/{NAME}-notebook", "-n", namespace, "--tail=60", check=False
    )
    return f"--- pods ---\n{pods}\n--- notebook ---\n{log.stdout[-4000:]}{log.stderr[-500:]}"


def test_notebook_pod_runs_the_example_notebook_with_one_answer_per_question(
    cluster: Cluster, namespace: str, image: str, model_root: Path, tmp_path: Path
) -> None:
    secret = f"{NAME}-token"
    token = secrets.token_hex(16)
    cluster.kubectl(
        "create", "secret", "generic", secret, "-n", namespace, f"--from-literal=token={token}"
    )
    values_file = tmp_path / "values.yaml"
    values_file.write_text(
        yaml.safe_dump(notebook_values(cluster, image, model_root, tmp_path, secret))
    )
    start = time.monotonic()
    try:
        cluster.helm(
            "install", NAME, CHART, "-n", namespace, "-f", str(values_file), "--server-side=false"
        )
        kinds = cluster.get(
            "all,configmap", "-n", namespace, "-l", f"app.kubernetes.io/instance={NAME}"
        )
        made = {(o["kind"], o["metadata"]["name"]) for o in kinds["items"]}
        assert ("Deployment", f"{NAME}-notebook") in made, made
        assert "Job" not in {kind for kind, _ in made}, made
        pod = until("the notebook pod Ready", lambda: notebook_pod(cluster, namespace), 180)
        name = pod["metadata"]["name"]

        # JupyterLab answers only with the Secret's token.
        check = (
            "import sys, urllib.request, urllib.error\n"
            "def status(headers):\n"
            "    url = 'http://127.0.0.1:8888/api/contents'\n"
            "    request = urllib.request.Request(url, headers=headers)\n"
            "    try:\n"
            "        return urllib.request.urlopen(request, timeout=10).status\n"
            "    except urllib.error.HTTPError as e:\n"
            "        return e.code\n"
            "print(status({}), status({'Authorization': 'token ' + sys.argv[1]}))\n"
        )
        statuses = cluster.kubectl(
            "exec", "-i", name, "-n", namespace, "-c", "notebook", "--",
            "python", "-", token, stdin=check,
        ).stdout.split()  # fmt: skip
        assert statuses == ["403", "200"], statuses

        cluster.kubectl(
            "cp", str(NOTEBOOK.relative_to(ROOT)), f"{namespace}/{name}:/notebooks/chat.ipynb",
            "-c", "notebook",
        )  # fmt: skip
        ran = time.monotonic()
        proc = cluster.kubectl(
            "exec", "-i", name, "-n", namespace, "-c", "notebook", "--",
            "python", "-", "/notebooks/chat.ipynb", PROBE,
            stdin=RUNNER.read_text(), check=False, timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, f"{proc.stderr[-6000:]}\n{report(cluster, namespace)}"
        print(f"the notebook ran in {time.monotonic() - ran:.0f}s")
        # Spark made the executors from the chart's template (the vLLM sidecar beside the
        # executor), owned by the notebook pod, so that they go when it goes.
        executors = cluster.pods(
            namespace, f"app.kubernetes.io/instance={NAME},spark-role=executor"
        )
        assert executors, report(cluster, namespace)
        for executor in executors:
            names = set(pod_containers(executor))
            assert names == {"spark-kubernetes-executor", "vllm"}, names
            owners = [o["name"] for o in executor["metadata"].get("ownerReferences", [])]
            assert owners == [name], owners
    except BaseException:
        print(report(cluster, namespace))
        raise
    finally:
        cluster.helm("uninstall", NAME, "-n", namespace, "--wait", check=False)
        cluster.kubectl(
            "delete", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={NAME}",
            "--wait=false", check=False,
        )  # fmt: skip
        cluster.kubectl("delete", "secret", secret, "-n", namespace, check=False)
    print(f"install to the notebook's end and uninstall: {time.monotonic() - start:.0f}s")

    executed = nbformat.reads(proc.stdout, as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], outputs
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    probe = json.loads(printed.split("PROBE ", 1)[1].splitlines()[0])
    # The kernel's Spark ran against the API server (client mode), not local[*].
    results = [o for o in outputs if o.output_type == "execute_result"]
    assert "'k8s://https://" in results[0]["data"]["text/plain"], results[0]
    rows = probe["rows"]
    assert sorted(r["id"] for r in rows) == list(range(probe["questions"])), rows
    assert all(r["error"] is None and r["response"] for r in rows), rows
    print(f"answer 0 (the tiny model's random weights): {rows[0]['response']!r}")
    assert f"{probe['questions']} answers for {probe['questions']} questions, 0 failed" in printed
