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


def main(args: list[str]) -> int:
    # An empty token would make JupyterLab serve anyone who reaches the port.
    if not os.environ.get("JUPYTER_TOKEN", "").strip():
        print(
            "spark-vllm notebook: JUPYTER_TOKEN is empty; the token Secret's key must hold one",
            file=sys.stderr,
        )
        return 64
    conf_dir = Path(os.environ["SPARK_CONF_DIR"])  # the chart's: under the pod's /tmp
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "spark-defaults.conf").write_text(spark_defaults())
    os.execvp("jupyter", ["jupyter", "lab", *args])  # noqa: S606, S607 (the image's JupyterLab)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
