"""The image's `submit` role: spark-submit in cluster mode from inside a Kubernetes pod.

The chart's operator-less path runs it in a Job (see charts/spark-vllm/templates/submit.yaml):

    entrypoint.sh submit --properties-file FILE local:///APP.py ARGS...

It does what spark-submit alone does not:
- it reaches the API server without cluster DNS: SPARK_VLLM_API_SERVER, else the
  `kubernetes` Service's address from the KUBERNETES_SERVICE_* variables every pod gets
  (Spark's default inside the driver, https://kubernetes.default.svc, needs cluster DNS);
- it names the driver pod SPARK_VLLM_DRIVER_POD, replacing a finished driver of that name
  (a rerun of the job) and refusing to start while one still runs;
- it exits with the driver's outcome: Spark 4's spark-submit waits for the driver but
  exits 0 whatever became of it, so a Job would report success for a failed job.

Only the standard library: the pod's ServiceAccount token authenticates it.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def say(message: str) -> None:
    print(f"spark-vllm submit: {message}", file=sys.stderr, flush=True)


def api_server() -> str:
    explicit = os.environ.get("SPARK_VLLM_API_SERVER", "").rstrip("/")
    if explicit:
        return explicit
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if not host:
        sys.exit(
            "spark-vllm submit: no KUBERNETES_SERVICE_HOST: not in a pod? set SPARK_VLLM_API_SERVER"
        )
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


class Api:
    """The few pod calls the role needs, as this pod's ServiceAccount."""

    def __init__(self, server: str, namespace: str) -> None:
        self.base = f"{server}/api/v1/namespaces/{namespace}/pods"
        with open(f"{SERVICE_ACCOUNT}/token") as fh:
            self.token = fh.read().strip()
        self.context = ssl.create_default_context(cafile=f"{SERVICE_ACCOUNT}/ca.crt")

    def _call(self, method: str, name: str) -> dict[str, object] | None:
        # The URL is the API server's https address from the pod's environment or the chart.
        request = urllib.request.Request(  # noqa: S310
            f"{self.base}/{name}",
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as response:  # noqa: S310
                result: dict[str, object] = json.load(response)
                return result
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def phase(self, name: str) -> str | None:
        """The pod's phase, or None when there is no such pod."""
        pod = self._call("GET", name)
        if pod is None:
            return None
        status = pod.get("status")
        return str(status.get("phase", "Unknown")) if isinstance(status, dict) else "Unknown"

    def delete(self, name: str) -> None:
        self._call("DELETE", name)


def clear_finished_driver(api: Api, name: str) -> None:
    phase = api.phase(name)
    if phase is None:
        return
    if phase not in ("Succeeded", "Failed"):
        sys.exit(f"spark-vllm submit: driver pod {name} is {phase}: the job is running already")
    say(f"removing the finished driver pod {name} ({phase}) of an earlier run")
    api.delete(name)
    for _ in range(120):
        if api.phase(name) is None:
            return
        time.sleep(1)
    sys.exit(f"spark-vllm submit: driver pod {name} was not removed within 120 s")


def main(args: list[str]) -> int:
    server = api_server()
    namespace = os.environ["SPARK_VLLM_NAMESPACE"]
    driver = os.environ["SPARK_VLLM_DRIVER_POD"]
    api = Api(server, namespace)
    clear_finished_driver(api, driver)
    command = [
        f"{os.environ['SPARK_HOME']}/bin/spark-submit",
        "--master",
        f"k8s://{server}",
        "--deploy-mode",
        "cluster",
        "--conf",
        f"spark.kubernetes.driver.master={server}",
        "--conf",
        f"spark.kubernetes.driver.pod.name={driver}",
        "--conf",
        f"spark.kubernetes.authenticate.submission.caCertFile={SERVICE_ACCOUNT}/ca.crt",
        "--conf",
        f"spark.kubernetes.authenticate.submission.oauthTokenFile={SERVICE_ACCOUNT}/token",
        *args,
    ]
    code = subprocess.call(command)  # noqa: S603 (spark-submit with the role's own arguments)
    if code != 0:
        say(f"spark-submit exited with {code}")
        return code
    phase = api.phase(driver)
    if phase == "Succeeded":
        say(f"driver pod {driver} succeeded")
        return 0
    say(f"driver pod {driver} ended {phase or 'deleted'}: the job failed")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
