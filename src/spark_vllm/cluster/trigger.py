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
and compared in constant time: 401 otherwise, before anything else is answered; then bodies
above `--max-body-bytes` get 413. A posted spec is a job, not a cluster configuration: what
the release does not allow (`Policy`: Spark settings, paths, JDBC drivers, `*_env` names,
the endpoint) is 403, and beyond `--max-running` runs at once a POST gets 429.
The chart stays the one source of the Kubernetes objects: the trigger creates what
`helm template` rendered, of the kinds in `RUN_KINDS` only, and labels each with the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import hmac
import json
import math
import posixpath
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
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from spark_vllm.cluster import operate
from spark_vllm.cluster.chart import APP_GROUP, APP_VERSION
from spark_vllm.errors import SpecError
from spark_vllm.redact import redact
from spark_vllm.spec import JobSpec, UniqueKeyLoader, conf_key_allowed

# What a run may consist of, in the order created (the spec's ConfigMaps before what mounts
# them). Anything else the chart renders for a run is refused: the trigger's Role allows
# these only.
RUN_KINDS = (
    ("v1", "ConfigMap"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("batch/v1", "Job"),
    (f"{APP_GROUP}/{APP_VERSION}", "SparkApplication"),
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


class Refused(SpecError):
    """A well-formed spec saying what a token holder may not say (answered 403)."""


# Deeper than any job spec needs; a body nested deeper is refused before it is walked.
MAX_DEPTH = 32
# Characters refused in a posted string: control characters (a YAML reader refuses most,
# and NEL breaks lines), the tab, newline and carriage return excepted.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(.*)", re.S)
# The chart's own keys in a rendered spec, filled in when the posted spec leaves them out.
_CHART_FILLED = {"metrics": ("enabled", "token_env"), "progress": ("port",)}


@dataclass(frozen=True)
class Policy:
    """What a posted spec may say beyond a plain job, as the trigger's release allows it.

    allowed_env: `*_env` names (trigger.allowedEnv). allowed_spark_conf: spark.conf keys,
    exact or prefixes ending in a dot (trigger.allowedSparkConf). allowed_paths: where a
    job may read and write (trigger.allowedPaths): path prefixes (`/data/`,
    `s3a://bucket/jobs/`), JDBC URLs (exactly) and catalog tables (`table:db.name`, or
    `table:db.` for a database's tables)."""

    allowed_env: frozenset[str] = frozenset()
    allowed_spark_conf: tuple[str, ...] = ()
    allowed_paths: tuple[str, ...] = ()


def normalise_location(value: str) -> str | None:
    """A path or URL with `.`/`..` segments resolved and `file:` spelt as a local path;
    None when it cannot be checked against a prefix (relative, or with Hadoop glob braces,
    escapes or percent-encoding, which could name something else once expanded)."""
    if any(c in value for c in "{}\\%") or _CONTROL.search(value):
        return None
    found = _SCHEME.fullmatch(value)
    scheme = found.group(1).lower() if found else ""
    rest = found.group(2) if found else value
    if scheme == "file":
        rest = "/" + rest.lstrip("/")
        scheme = ""
    if scheme:
        if not rest.startswith("//"):
            return None
        authority, _, path = rest[2:].partition("/")
        if not authority:
            return None
        return f"{scheme}://{authority}{posixpath.normpath('/' + path)}"
    if not rest.startswith("/"):
        return None
    return "/" + posixpath.normpath(rest).lstrip("/")


def location_allowed(value: str, allowed: tuple[str, ...]) -> bool:
    """Whether a path lies under one of the allowed prefixes, compared segment by segment
    after normalising both (so `/data/in/../../etc` is `/etc`, and `/data/inx` is not
    under `/data/in`)."""
    path = normalise_location(value)
    if path is None:
        return False
    for entry in allowed:
        prefix = normalise_location(entry)
        if prefix is None:
            continue
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return True
    return False


def _check_locations(doc: dict[str, Any], policy: Policy) -> None:
    listed = ", ".join(policy.allowed_paths) or "none"
    for side in ("input", "output"):
        block = doc.get(side)
        if not isinstance(block, dict):
            continue
        path = block.get("path")
        if isinstance(path, str) and not location_allowed(path, policy.allowed_paths):
            raise Refused(
                f"{side}.path: {redact(path)!r} is not under a location the trigger's release "
                f"allows in trigger.allowedPaths (listed: {listed}); a relative path, or one "
                "with {}, \\ or % in it, is never allowed"
            )
        table = block.get("table")
        if isinstance(table, str):
            name = f"table:{table}"
            if not any(
                name == entry or (entry.endswith(".") and name.startswith(entry))
                for entry in policy.allowed_paths
            ):
                raise Refused(
                    f"{side}.table: {table!r} is a catalog table the trigger's release does "
                    f"not list in trigger.allowedPaths as table:NAME or table:DB. "
                    f"(listed: {listed})"
                )
        jdbc = block.get("jdbc")
        if isinstance(jdbc, dict):
            for key in ("driver", "properties"):
                if key in jdbc:
                    raise Refused(
                        f"{side}.jdbc.{key}: a posted spec may not choose the JDBC driver "
                        "or its connection properties; leave it out (the URL's own driver "
                        "is used)"
                    )
            url = jdbc.get("url")
            if isinstance(url, str) and url not in policy.allowed_paths:
                raise Refused(
                    f"{side}.jdbc.url: {redact(url)!r} is not a JDBC URL the trigger's release "
                    f"lists (exactly) in trigger.allowedPaths (listed: {listed})"
                )


def _check_read_elsewhere(doc: dict[str, Any], policy: Policy) -> None:
    """Paths a run reads besides its input: the folders a row's image paths may lie under
    (read by the executors) and LoRA adapters to load (read, or fetched from a hub, by the
    sidecar's vLLM). Each must lie under trigger.allowedPaths, as input.path must."""
    listed = ", ".join(policy.allowed_paths) or "none"
    named: list[tuple[str, Any]] = []
    prompt = doc.get("prompt")
    if isinstance(prompt, dict) and isinstance(prompt.get("image_prefixes"), list):
        named += [
            (f"prompt.image_prefixes[{i}]", v) for i, v in enumerate(prompt["image_prefixes"])
        ]
    lora = doc.get("lora")
    if isinstance(lora, dict) and isinstance(lora.get("modules"), dict):
        named += [(f"lora.modules.{name}", v) for name, v in lora["modules"].items()]
    for where, value in named:
        if isinstance(value, str) and not location_allowed(value, policy.allowed_paths):
            raise Refused(
                f"{where}: {redact(value)!r} is not under a location the trigger's release "
                f"allows in trigger.allowedPaths (listed: {listed}); a hub id or a relative "
                "path is never allowed"
            )


def check_posted(doc: dict[str, Any], policy: Policy = Policy()) -> None:
    """What a posted spec may not say, because the trigger's release says it: the endpoint
    (a run talks to its executors' vLLM sidecars); the environment variables of the job's
    pods it may name (`*_env` keys: an API key, a database password) unless the release
    lists them in trigger.allowedEnv; Spark's master, and spark.conf keys the release does
    not list in trigger.allowedSparkConf; paths, tables and JDBC URLs outside
    trigger.allowedPaths (image prefixes and LoRA modules included), and JDBC drivers and
    properties. Otherwise a token holder could have the job send a Secret of the namespace
    to a host of their choosing, mount one in a pod of theirs, or read the pods' own files.
    Raises Refused (a SpecError)."""
    if "endpoint" in doc:
        raise Refused(
            "endpoint: a job posted to the trigger talks to its executors' vLLM sidecars, "
            "which the trigger's release sets; leave endpoint out of the spec"
        )
    spark = doc.get("spark")
    if isinstance(spark, dict):
        if "master" in spark:
            raise Refused(
                "spark.master: a posted spec runs on the trigger release's cluster; leave "
                "spark.master out"
            )
        conf = spark.get("conf")
        if isinstance(conf, dict):
            for key in conf:
                if not conf_key_allowed(str(key), policy.allowed_spark_conf):
                    allowed = ", ".join(policy.allowed_spark_conf) or "none"
                    raise Refused(
                        f"spark.conf.{key}: a posted spec may set only the Spark settings "
                        f"the trigger's release lists in trigger.allowedSparkConf "
                        f"(listed: {allowed})"
                    )
    _check_locations(doc, policy)
    _check_read_elsewhere(doc, policy)

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}.{key}" if path else str(key)
                if str(key).endswith("_env") and value not in policy.allowed_env:
                    allowed = ", ".join(sorted(policy.allowed_env)) or "none"
                    raise Refused(
                        f"{where}: {value!r} names an environment variable of the job's "
                        f"pods, which a posted spec may name only when the trigger's "
                        f"release lists it in trigger.allowedEnv (listed: {allowed})"
                    )
                walk(value, where)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(doc, "")


def check_plain(doc: Any) -> None:
    """A posted document is plain data: string keys, finite numbers, no control characters,
    nested at most MAX_DEPTH deep. Walked without recursion. Raises SpecError."""
    stack: list[tuple[Any, str, int]] = [(doc, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        where = path or "the body"
        if depth > MAX_DEPTH:
            raise SpecError(f"{where}: nested more than {MAX_DEPTH} deep; a job spec is not")
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise SpecError(f"{where}: the key {key!r} is not a string")
                if _CONTROL.search(key):
                    raise SpecError(f"{where}: a key holds a control character")
                stack.append((value, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(node))
        elif isinstance(node, float) and not math.isfinite(node):
            raise SpecError(f"{where}: {node!r} is not a number a job spec takes")
        elif isinstance(node, str) and _CONTROL.search(node):
            raise SpecError(
                f"{where}: holds a control character (only tab, newline and carriage "
                "return are accepted)"
            )


class _SpecLoader(UniqueKeyLoader):
    """The spec's loader (a key given twice is refused) without aliases (a few bytes of
    them expand to gigabytes) and with nesting bounded while composing (its composer
    recurses)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not accepted in a posted spec", mark
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} deep; a job spec is not", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a job spec takes")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when it gives a key twice (json would keep the last)."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the key {key!r} is given twice in one object; remove one")
        found[key] = value
    return found


def parse_body(body: bytes, content_type: str) -> dict[str, Any]:
    """The posted job spec: JSON, or YAML under a YAML content type; plain data only (see
    check_plain; YAML aliases refused). Raises SpecError (not a mapping, not parsable, not
    plain) or RunError 415 (another content type)."""
    kind = content_type.split(";")[0].strip().lower()
    try:
        if kind in YAML_TYPES:
            doc = yaml.load(body.decode("utf-8"), Loader=_SpecLoader)  # noqa: S506
        elif kind in ("application/json", ""):
            doc = json.loads(body, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
        else:
            raise RunError(
                415, f"content type {kind!r}: expected application/json or application/yaml"
            )
    except RecursionError:
        raise SpecError(
            f"the body is nested more than {MAX_DEPTH} deep; a job spec is not"
        ) from None
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
    check_plain(doc)
    return doc


def check_rendered(doc: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    """The job spec in the rendered ConfigMap is the posted one, with only the chart's own
    keys added (endpoint, and metrics/progress defaults): a string that broke out of the
    ConfigMap would show here. Raises RunError 400."""
    mounted = [
        yaml.safe_load(o["data"]["job.yaml"])
        for o in objects
        if o.get("kind") == "ConfigMap" and "job.yaml" in (o.get("data") or {})
    ]
    if len(mounted) != 1 or not isinstance(mounted[0], dict):
        raise RunError(400, "the chart did not render exactly one job spec for the run")
    got = copy.deepcopy(mounted[0])
    got.pop("endpoint", None)
    for key, filled in _CHART_FILLED.items():
        block, posted = got.get(key), doc.get(key)
        if isinstance(block, dict):
            for name in filled:
                if not (isinstance(posted, dict) and name in posted):
                    block.pop(name, None)
            if not block and key not in doc:
                del got[key]
    for key in sorted(set(got) | set(doc)):
        if got.get(key) != doc.get(key):
            raise RunError(
                400,
                f"{key}: the spec the chart rendered differs from the spec posted (a "
                "character the chart's YAML could not carry?); nothing was created",
            )


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

    def running(self) -> int:
        """How many of this trigger's runs are pending or running (no driver log is read)."""
        states = (self.report(run, summary=False)["state"] for run in self.ids())
        return sum(1 for state in states if state in ("pending", "running"))

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
        check_rendered(doc, objects)
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

    def report(self, run: str, summary: bool = True) -> dict[str, Any]:
        """The run's state: pods, the submitter Job's or the SparkApplication's state, the
        driver's exit code and, unless `summary` is False, the summary block of its log once
        it ended."""
        operator = operate.operator_path(self.values)
        out = operate.report(
            self.kube, run, self.namespace, submitter=not operator, summary=summary
        )
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
    policy: Policy = Policy(),
    max_running: int = 0,
) -> Any:
    """The FastAPI application over `runs` (a `Runs`, or anything with its methods).
    `token`: the bearer token, or a function reading it for each request (a mounted Secret
    changes in place when it is rotated). `max_running`: at most this many runs pending or
    running at once (429 beyond; 0: no cap)."""
    read_token = token if callable(token) else (lambda: token)
    if not read_token():
        raise ValueError("the trigger needs a non-empty token")
    bearer = HTTPBearer(auto_error=False)

    def refusal(header: str | None) -> JSONResponse | None:
        """401 unless `header` is `Bearer <the token>` (compared in constant time)."""
        scheme, _, given_token = (header or "").partition(" ")
        expected = read_token().encode()
        if scheme.lower() == "bearer" and expected:
            if hmac.compare_digest(given_token.strip().encode(), expected):
                return None
            detail = "the bearer token is wrong"
        else:
            detail = "a bearer token is required (Authorization: Bearer <token>)"
        return JSONResponse(
            {"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )

    def authorized(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        """Declares the bearer scheme in the OpenAPI document; the middleware checks it."""

    app = FastAPI(
        title="spark-vllm trigger",
        dependencies=[Depends(authorized)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        # The token before anything else: without it no answer says whether a path exists
        # or how large a body may be.
        refused = refusal(request.headers.get("authorization"))
        if refused is not None:
            return refused
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            return JSONResponse(
                {"detail": f"the body has {length} bytes; at most {max_body_bytes} are accepted"},
                status_code=413,
            )
        return await call_next(request)

    async def read_limited(request: Request) -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise HTTPException(
                    status_code=413,
                    detail=f"the body has more than {max_body_bytes} bytes, the most accepted",
                )
        return bytes(body)

    def checked(body: bytes, content_type: str) -> dict[str, Any]:
        doc = parse_body(body, content_type)
        operate.check_for_chart(doc, runs.values)  # a malformed spec: 400 naming the key
        check_posted(doc, policy)  # a well-formed one the release does not allow: 403
        return doc

    starting = asyncio.Lock()

    body_schema, schemas = _job_body()

    def openapi() -> dict[str, Any]:
        """The OpenAPI document (not served: for clients and the fuzz test), with the job
        spec's schemas among its components."""
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            document.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.post("/jobs", status_code=202, openapi_extra=body_schema)
    async def submit(request: Request) -> dict[str, Any]:
        body = await read_limited(request)
        try:
            # Parsing and validating take CPU time: off the event loop, so that one large
            # body does not hold up every other request.
            doc = await run_in_threadpool(checked, body, request.headers.get("content-type", ""))
        except Refused as exc:
            raise HTTPException(status_code=403, detail=str(exc)) from None
        except SpecError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        except RunError as exc:
            raise HTTPException(status_code=exc.status, detail=str(exc)) from None
        async with starting:  # counted and created one at a time, so the cap holds
            if max_running:
                active = await run_in_threadpool(runs.running)
                if active >= max_running:
                    raise HTTPException(
                        status_code=429,
                        detail=f"{active} jobs are pending or running, the most the trigger's "
                        f"release allows (trigger.maxRunning {max_running}); retry later",
                        headers={"Retry-After": "30"},
                    )
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


def _job_body() -> tuple[dict[str, Any], dict[str, Any]]:
    """POST /jobs's body in the OpenAPI document: the job spec's JSON schema (the handler
    reads the body itself, JSON or YAML)."""
    schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    # A posted spec never names the endpoint: the chart fills it in.
    schema["properties"].pop("endpoint", None)
    schema["required"] = [key for key in schema.get("required", []) if key != "endpoint"]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "application/yaml": {"schema": schema},
            },
        },
    }, defs


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
    policy = Policy(
        allowed_env=frozenset(args.allow_env),
        allowed_spark_conf=tuple(args.allow_spark_conf),
        allowed_paths=tuple(args.allow_path),
    )
    app = create_app(runs, token, args.max_body_bytes, policy, args.max_running)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
