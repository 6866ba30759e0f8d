"""The image's `notebook` role: JupyterLab whose kernels are Spark drivers in client mode.

The chart (notebook.enabled) mounts the kernels' Spark properties (the operator-less
submitter's, turned into client mode) and the executor pod template that carries the vLLM
sidecar. What only the running pod knows is added here: the API server as Spark's master,
the pod's IP (or the Service's name) that executors connect back to, and the pod's name, so
that the executors are owned by this pod and go when it goes. The result is written as
spark-defaults.conf into SPARK_CONF_DIR, which every `SparkSession.builder.getOrCreate()` in
a kernel reads; then JupyterLab replaces this process.

Usage (the chart's container args): notebook JUPYTERLAB-ARGS...
Only the standard library and the submitter's own API server lookup.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from submit import api_server


def spark_defaults() -> str:
    properties = Path(os.environ["SPARK_VLLM_PROPERTIES"]).read_text()
    host = os.environ.get("SPARK_VLLM_DRIVER_HOST") or os.environ["SPARK_VLLM_POD_IP"]
    extra = {
        "spark.master": f"k8s://{api_server()}",
        "spark.driver.host": host,
        "spark.kubernetes.driver.pod.name": os.environ["SPARK_VLLM_POD_NAME"],
    }
    return properties.rstrip("\n") + "\n" + "".join(f"{k}={v}\n" for k, v in extra.items())


def token_problem() -> str | None:
    """Why JupyterLab would not be protected by the token the chart gives it, if it would not.

    The chart mounts the token Secret's key as a file named by JUPYTER_TOKEN_FILE (kept out of
    the environment the kernels inherit); `docker run -e JUPYTER_TOKEN=...` works too. JupyterLab
    takes JUPYTER_TOKEN first, else the file's whole text: an empty one serves anyone who
    reaches the port, a trailing newline is a token nobody can type.
    """
    if os.environ.get("JUPYTER_TOKEN", "").strip():
        return None
    path = os.environ.get("JUPYTER_TOKEN_FILE", "")
    if not path:
        return "JUPYTER_TOKEN is empty and JUPYTER_TOKEN_FILE is not set (the chart sets it)"
    try:
        token = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read the token file {path} (JUPYTER_TOKEN_FILE): {exc.__class__.__name__}"
    if not token.strip():
        return f"the token file {path} is empty; the token Secret's key must hold one"
    if token != token.strip():
        return (
            f"the token file {path} starts or ends with white space (a newline?), which "
            "JupyterLab would count as part of the token; create the Secret with "
            "--from-literal=token=... (no newline)"
        )
    return None


def main(args: list[str]) -> int:
    problem = token_problem()
    if problem is not None:
        print(f"spark-vllm notebook: {problem}", file=sys.stderr)
        return 64
    conf_dir = Path(os.environ["SPARK_CONF_DIR"])  # the chart's: under the pod's /tmp
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "spark-defaults.conf").write_text(spark_defaults())
    os.execvp("jupyter", ["jupyter", "lab", *args])  # noqa: S606, S607 (the image's JupyterLab)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
