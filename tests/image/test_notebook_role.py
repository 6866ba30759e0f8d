"""The image's `notebook` role (the chart's notebook.enabled) run as the chart runs it: uid
185, a read-only root with /tmp writable, the token in a file mounted from the Secret
(JUPYTER_TOKEN_FILE), never in the environment the kernels inherit. It writes the kernels'
spark-defaults.conf from the mounted properties and what only the pod knows, then serves
JupyterLab only to requests carrying the token; without a usable token it does not start."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from .pod import docker, logs

pytestmark = pytest.mark.image

TOKEN = uuid.uuid4().hex
STATUS = """
import sys, urllib.request, urllib.error
def status(headers):
    request = urllib.request.Request("http://127.0.0.1:8888/api/contents", headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=5).status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0
print(status({}), status({"Authorization": "token " + sys.argv[1]}))
"""


def test_notebook_role_refuses_to_serve_without_a_token(image: str) -> None:
    proc = subprocess.run(
        ["docker", "run", "--rm", "-e", "JUPYTER_TOKEN=", image, "notebook"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 64, proc.stderr
    assert "JUPYTER_TOKEN is empty" in proc.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "is empty"), (TOKEN + "\n", "starts or ends with white space")],
)
def test_notebook_role_refuses_a_token_file_jupyterlab_would_misread(
    image: str, tmp_path: Path, text: str, message: str
) -> None:
    token = tmp_path / "token"
    token.write_text(text)
    token.chmod(0o444)
    proc = subprocess.run(
        ["docker", "run", "--rm", "-v", f"{token}:/etc/spark-vllm/notebook-token/token:ro",
         "-e", "JUPYTER_TOKEN_FILE=/etc/spark-vllm/notebook-token/token", image, "notebook"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 64, proc.stderr
    assert message in proc.stderr, proc.stderr


def test_notebook_role_writes_spark_defaults_and_serves_jupyterlab_with_the_token(
    image: str, tmp_path: Path
) -> None:
    spark = tmp_path / "spark"
    spark.mkdir()
    (spark / "spark.properties").write_text("spark.submit.deployMode=client\n")
    spark.chmod(0o755)
    token = tmp_path / "token"
    token.write_text(TOKEN)  # as kubectl create secret --from-literal stores it: no newline
    token.chmod(0o444)
    name = f"notebook-role-{uuid.uuid4().hex[:8]}"
    docker(
        "run", "--detach", "--name", name, "--read-only",
        "--tmpfs", "/tmp:rw,exec,mode=1777", "-v", f"{spark}:/etc/spark-vllm/submit:ro",
        "-v", f"{token}:/etc/spark-vllm/notebook-token/token:ro",
        "-e", "JUPYTER_TOKEN_FILE=/etc/spark-vllm/notebook-token/token",
        "-e", "SPARK_CONF_DIR=/tmp/spark-conf",
        "-e", "SPARK_VLLM_PROPERTIES=/etc/spark-vllm/submit/spark.properties",
        "-e", "SPARK_VLLM_POD_NAME=nb-notebook-0", "-e", "SPARK_VLLM_POD_IP=10.1.2.3",
        "-e", "SPARK_VLLM_API_SERVER=https://10.0.0.1:6443",
        image, "notebook", "--no-browser", "--ip=0.0.0.0", "--port=8888",
        "--ServerApp.root_dir=/tmp",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            statuses = docker("exec", name, "python", "-c", STATUS, TOKEN, check=False).split()
            if statuses and statuses[0] != "0":
                break
            assert time.monotonic() < deadline, f"JupyterLab never answered:\n{logs(name)[-3000:]}"
            time.sleep(2)
        assert statuses == ["403", "200"], statuses
        defaults = docker("exec", name, "cat", "/tmp/spark-conf/spark-defaults.conf")
        assert defaults.splitlines() == [
            "spark.submit.deployMode=client",
            "spark.master=k8s://https://10.0.0.1:6443",
            "spark.driver.host=10.1.2.3",
            "spark.kubernetes.driver.pod.name=nb-notebook-0",
        ]
        processes = docker("exec", name, "ps", "-eo", "user:12,args")
        assert "jupyter-lab" in processes or "jupyter lab" in processes, processes
        assert TOKEN not in processes, "the token is on a command line"
        # Nothing a kernel inherits holds it: not JupyterLab's environment, not the container's.
        environments = docker(
            "exec", name, "sh", "-c", "cat /proc/[0-9]*/environ 2>/dev/null; true"
        )
        assert TOKEN not in environments, "the token is in a process's environment"
        assert "root" not in processes.split(), processes
    finally:
        docker("rm", "--force", name, check=False)
