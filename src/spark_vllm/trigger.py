"""The HTTP trigger: job specs posted over HTTP, each run as a job on the cluster.

`spark-vllm trigger` serves, in the chart's trigger pod (chart value `trigger.enabled`):

- `POST /jobs`, body a job spec (JSON, or YAML with a YAML content type): the spec is
  validated as `spark-vllm run` validates it (400 naming the key path when it is wrong),
  rendered with `helm template` from the chart in the image and the trigger release's values
  (the spec as `job:`), and the rendered objects created; 202 `{"id": RUN, ...}`.
- `GET /jobs`: the runs this trigger created. `GET /jobs/{id}`: the run's state, its pods,
  the driver's exit code and, once it ended, the job's summary.
- `DELETE /jobs/{id}`: the run cancelled (its submitter Job or SparkApplication, its driver
  and its ConfigMaps deleted); what it committed stays in its output.

Every request needs `Authorization: Bearer <token>`, the token read from a mounted Secret
and compared in constant time (401 otherwise); bodies above `--max-body-bytes` get 413.
The chart stays the one source of the Kubernetes objects: the trigger creates what
`helm template` rendered, of the kinds in `RUN_KINDS` only, and labels each with the run.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import re
import secrets
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from spark_vllm import operate
from spark_vllm.errors import SpecError

# What a run may consist of, in the order created (the spec's ConfigMaps before what mounts
# them). Anything else the chart renders for a run is refused: the trigger's Role allows
# these only.
RUN_KINDS = (
    ("v1", "ConfigMap"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("batch/v1", "Job"),
    ("sparkoperator.k8s.io/v1beta2", "SparkApplication"),
)
TRIGGER_LABEL = "spark-vllm.io/trigger"
RUN_LABEL = operate.RUN_LABEL
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
# A run's name: the release's (cut to 31 characters) and 8 hex digits, at most 40 in all.
_RUN_ID = re.compile(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?-[0-9a-f]{8}")


# How helm reports its values schema's refusals (the chart's own: operate.CHART_FAIL).
_SCHEMA_FAIL = r"values don't meet the specifications of the schema\(s\).*"


class RunError(Exception):
    """The run could not be created; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_posted(doc: dict[str, Any], allowed_env: frozenset[str]) -> None:
    """What a posted spec may not say, because the trigger's release says it: the endpoint
    (a run talks to its executors' vLLM sidecars), and the environment variables of the
    job's pods it may name (`*_env` keys: an API key, a database password), unless the
    release lists them in trigger.allowedEnv. Otherwise a token holder could have the job
    send a Secret of the namespace to a host of their choosing. Raises SpecError."""
    if "endpoint" in doc:
        raise SpecError(
            "endpoint: a job posted to the trigger talks to its executors' vLLM sidecars, "
            "which the trigger's release sets; leave endpoint out of the spec"
        )

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}.{key}" if path else str(key)
                if str(key).endswith("_env") and value not in allowed_env:
                    allowed = ", ".join(sorted(allowed_env)) or "none"
                    raise SpecError(
                        f"{where}: {value!r} names an environment variable of the job's "
                        f"pods, which a posted spec may name only when the trigger's "
                        f"release lists it in trigger.allowedEnv (listed: {allowed})"
                    )
                walk(value, where)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(doc, "")


def parse_body(body: bytes, content_type: str) -> dict[str, Any]:
    """The posted job spec: JSON, or YAML under a YAML content type. Raises SpecError (not
    a mapping, not parsable) or RunError 415 (another content type)."""
    kind = content_type.split(";")[0].strip().lower()
    try:
        if kind in YAML_TYPES:
            doc = yaml.safe_load(body.decode("utf-8"))
        elif kind in ("application/json", ""):
            doc = json.loads(body)
        else:
            raise RunError(
                415, f"content type {kind!r}: expected application/json or application/yaml"
            )
    except (ValueError, yaml.YAMLError) as exc:
        if kind in YAML_TYPES:
            raise SpecError(f"the body is not a YAML document: {exc}") from None
        raise SpecError(
            f"the body is not a JSON document: {exc} (send YAML with Content-Type: "
            "application/yaml)"
        ) from None
    if not isinstance(doc, dict):
        raise SpecError(
            f"the body is a {type(doc).__name__}; expected a job spec (a mapping with "
            "input, output, prompt, ...)"
        )
    return doc


@dataclass
class Runs:
    """The Kubernetes side: runs rendered by helm from the chart and created in one namespace."""

    release: str
    namespace: str
    chart: Path
    values_file: Path
    helm: str
    kube: operate.Kube
    dynamic: Any
    kube_version: str

    @classmethod
    def connect(cls, release: str, namespace: str, chart: Path, values_file: Path) -> Runs:
        from kubernetes import client, dynamic

        kube = operate.Kube.connect()
        version = client.VersionApi().get_code().git_version
        return cls(
            release=release,
            namespace=namespace,
            chart=chart,
            values_file=values_file,
            helm=operate.find_helm(),
            kube=kube,
            dynamic=dynamic.DynamicClient(client.ApiClient()),  # type: ignore[no-untyped-call]
            kube_version=str(version).split("+")[0],
        )

    @cached_property
    def values(self) -> dict[str, Any]:
        """The release's values (read once: the chart restarts the pod when they change)."""
        loaded = yaml.safe_load(self.values_file.read_text()) or {}
        return loaded if isinstance(loaded, dict) else {}

    def new_id(self) -> str:
        return f"{self.release[:31].rstrip('-')}-{secrets.token_hex(4)}"

    def render(self, run: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
        """`helm template` of the run: the chart, the trigger's values, the spec as job:."""
        with tempfile.TemporaryDirectory(prefix="spark-vllm-trigger-") as tmp:
            job_file = Path(tmp) / "job.yaml"
            job_file.write_text(yaml.safe_dump({"job": doc}, sort_keys=False))
            command = [
                self.helm,
                "template",
                run,
                str(self.chart),
                "-n",
                self.namespace,
                "-f",
                str(self.values_file),
                "-f",
                str(job_file),
                "--set",
                f"fullnameOverride={run}",
                "--skip-tests",
                "--kube-version",
                self.kube_version,
            ]
            proc = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        if proc.returncode != 0:
            # The chart's own checks (`fail`) are the spec's fault: say them as they are.
            found = re.search(operate.CHART_FAIL, proc.stderr, re.S)
            if found:
                raise RunError(400, found.group(1).strip())
            found = re.search(_SCHEMA_FAIL, proc.stderr, re.S)
            if found:
                raise RunError(400, found.group(0).strip())
            raise RunError(500, f"helm template failed: {proc.stderr.strip()}")
        return [d for d in yaml.safe_load_all(proc.stdout) if isinstance(d, dict)]

    def create(self, doc: dict[str, Any]) -> str:
        """Render and create a run; its id. Raises RunError."""
        run = self.new_id()
        objects = self.render(run, doc)
        order = {kind: i for i, kind in enumerate(RUN_KINDS)}
        for obj in objects:
            kind = (obj.get("apiVersion"), obj.get("kind"))
            if kind not in order:
                raise RunError(
                    500,
                    f"the chart rendered a {kind[1]} ({kind[0]}) for a run; the trigger "
                    f"creates only {', '.join(k for _, k in RUN_KINDS)}",
                )
            labels = obj.setdefault("metadata", {}).setdefault("labels", {})
            labels[TRIGGER_LABEL] = self.release
            labels[RUN_LABEL] = run
            obj["metadata"]["namespace"] = self.namespace
        created: list[tuple[Any, str]] = []
        try:
            for obj in sorted(objects, key=lambda o: order[(o["apiVersion"], o["kind"])]):
                api = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
                api.create(body=obj, namespace=self.namespace)
                created.append((api, obj["metadata"]["name"]))
        except Exception as exc:
            for api, name in reversed(created):
                with contextlib.suppress(Exception):
                    api.delete(name=name, namespace=self.namespace)
            raise RunError(500, f"creating the run's objects failed: {exc}") from None
        return run

    def _objects(self, kind: tuple[str, str], selector: str) -> list[Any]:
        try:
            api = self.dynamic.resources.get(api_version=kind[0], kind=kind[1])
            return list(api.get(namespace=self.namespace, label_selector=selector).items)
        except Exception:  # the kind is not served (no CRD) or not ours to read
            return []

    def ids(self) -> list[str]:
        """The runs this trigger created (by their ConfigMaps' labels), oldest first."""
        found = self._objects(RUN_KINDS[0], f"{TRIGGER_LABEL}={self.release}")
        found.sort(key=lambda o: str(o.metadata.creationTimestamp))
        return list(dict.fromkeys(o.metadata.labels[RUN_LABEL] for o in found))

    def exists(self, run: str) -> bool:
        return bool(_RUN_ID.fullmatch(run)) and bool(
            self._objects(RUN_KINDS[0], f"{TRIGGER_LABEL}={self.release},{RUN_LABEL}={run}")
        )

    def report(self, run: str) -> dict[str, Any]:
        """The run's state: pods, the submitter Job's or the SparkApplication's state, the
        driver's exit code and the summary block of its log once it ended."""
        operator = operate.operator_path(self.values)
        out = operate.report(self.kube, run, self.namespace, submitter=not operator)
        apps = self._objects(RUN_KINDS[4], f"{RUN_LABEL}={run}") if operator else []
        if apps:
            state = operate.app_state(apps[0].to_dict())
            out["application"] = state
            if state == "COMPLETED" or state in operate.APP_FAILED:
                out["state"] = "succeeded" if state == "COMPLETED" else "failed"
            elif out["state"] == "gone":  # the application exists; its pods do not yet
                out["state"] = "pending"
        return out

    def delete(self, run: str) -> None:
        """Cancel: the submitter Job or SparkApplication first (no new driver), the driver
        pod (its executors go with it), then the run's other objects."""
        selector = f"{TRIGGER_LABEL}={self.release},{RUN_LABEL}={run}"
        for kind in (RUN_KINDS[3], RUN_KINDS[4], RUN_KINDS[1], RUN_KINDS[2], RUN_KINDS[0]):
            api = None
            for obj in self._objects(kind, selector):
                api = api or self.dynamic.resources.get(api_version=kind[0], kind=kind[1])
                with contextlib.suppress(Exception):
                    api.delete(
                        name=obj.metadata.name,
                        namespace=self.namespace,
                        body={"propagationPolicy": "Background"},
                    )
            if kind == RUN_KINDS[4]:
                for pod in self.kube.pods(run, self.namespace):
                    if operate.role(pod) == "driver":
                        with contextlib.suppress(Exception):
                            self.kube.core.delete_namespaced_pod(pod.metadata.name, self.namespace)


def create_app(
    runs: Any,
    token: str | Callable[[], str],
    max_body_bytes: int,
    allowed_env: frozenset[str] = frozenset(),
) -> Any:
    """The FastAPI application over `runs` (a `Runs`, or anything with its methods).
    `token`: the bearer token, or a function reading it for each request (a mounted Secret
    changes in place when it is rotated)."""
    read_token = token if callable(token) else (lambda: token)
    if not read_token():
        raise ValueError("the trigger needs a non-empty token")
    bearer = HTTPBearer(auto_error=False)

    def authorized(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        given = (creds.credentials if creds else "").encode()
        expected = read_token().encode()
        if not expected or not hmac.compare_digest(given, expected):
            raise HTTPException(
                status_code=401,
                detail="a bearer token is required (Authorization: Bearer <token>)"
                if creds is None
                else "the bearer token is wrong",
                headers={"WWW-Authenticate": "Bearer"},
            )

    app = FastAPI(
        title="spark-vllm trigger",
        dependencies=[Depends(authorized)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            return JSONResponse(
                {"detail": f"the body has {length} bytes; at most {max_body_bytes} are accepted"},
                status_code=413,
            )
        return await call_next(request)

    async def read_limited(request: Request) -> bytes:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise HTTPException(
                    status_code=413,
                    detail=f"the body has more than {max_body_bytes} bytes, the most accepted",
                )
        return body

    @app.post("/jobs", status_code=202)
    async def submit(request: Request) -> dict[str, Any]:
        body = await read_limited(request)
        try:
            doc = parse_body(body, request.headers.get("content-type", ""))
            check_posted(doc, allowed_env)
            operate.check_for_chart(doc, runs.values)
        except SpecError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        except RunError as exc:
            raise HTTPException(status_code=exc.status, detail=str(exc)) from None
        try:
            run = await run_in_threadpool(runs.create, doc)
        except RunError as exc:
            raise HTTPException(status_code=exc.status, detail=str(exc)) from None
        return {"id": run, "status": f"/jobs/{run}"}

    @app.get("/jobs")
    def listing() -> dict[str, Any]:
        return {"jobs": runs.ids()}

    @app.get("/jobs/{run}")
    def status(run: str) -> dict[str, Any]:
        if not runs.exists(run):
            raise HTTPException(status_code=404, detail=f"no job {run}")
        return {"id": run, **runs.report(run)}

    @app.delete("/jobs/{run}", status_code=202)
    def cancel(run: str) -> dict[str, Any]:
        if not runs.exists(run):
            raise HTTPException(status_code=404, detail=f"no job {run}")
        runs.delete(run)
        return {"id": run, "cancelled": True}

    return app


def serve(args: argparse.Namespace) -> int:
    """`spark-vllm trigger`: serve the trigger until stopped."""
    import uvicorn

    token_file = Path(args.token_file)

    def token() -> str:
        try:
            return token_file.read_text().strip()
        except OSError:
            return ""  # no token, no access

    if not token():
        print(f"spark-vllm: the token file {args.token_file} is empty or unreadable", flush=True)
        return 2
    chart = operate.find_chart(args.chart)
    runs = Runs.connect(args.release, args.namespace, chart, Path(args.values))
    app = create_app(runs, token, args.max_body_bytes, frozenset(args.allow_env))
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
