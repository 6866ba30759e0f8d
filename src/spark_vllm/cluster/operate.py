"""Operate jobs on a Kubernetes cluster from the command line, on either of the chart's
paths (a SparkApplication for the Spark Operator, or the operator-less Job running
spark-submit): `submit` installs a job spec as a release of charts/spark-vllm and follows it;
`status`, `logs`, `cancel` and `list` act on such releases.

The chart is the one source of the Kubernetes objects: `submit` runs `helm install` with the
user's chart values and the job spec as the `job:` value, and creates nothing itself. It
then watches the release's pods with the `kubernetes` client (found by the labels the chart
and Spark give them: `app.kubernetes.io/instance=<release>`, `spark-role`,
`app.kubernetes.io/component=submitter`) and streams the driver's log, whose last lines are
the job's summary. The driver container's exit code is `spark-vllm run`'s. On the operator
path the SparkApplication's state (status.applicationState) is read between watches: a
submission the operator reports failed ends the follow before any driver exists.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from spark_vllm.cluster.chart import (
    APP_GROUP,
    APP_PLURAL,
    APP_VERSION,
    CHART_NAME,
    COMPONENT_LABEL,
    DRIVER_CONTAINER,
    EXECUTOR_CONTAINER,
    INSTANCE_LABEL,
    SIDECAR_CONTAINER,
    SIDECAR_PORT,
    SPARK_ROLE_LABEL,
    SUBMITTER_COMPONENT,
)
from spark_vllm.errors import SpecError
from spark_vllm.redact import redact
from spark_vllm.spec import apply_overrides, read_document, spec_from_dict

# The chart keeps its full name to 40 characters (Spark's pod names must fit in 63).
MAX_RELEASE = 40
# The checkout this module runs from (src/spark_vllm/cluster/operate.py), whose charts/ it uses
SOURCE_ROOT = Path(__file__).resolve().parents[3]
EXIT_TIMEOUT = 124  # as timeout(1)
SUMMARY_HEAD = "spark-vllm summary"
# The label the HTTP trigger (spark_vllm.cluster.trigger) puts on each object of a run it created.
RUN_LABEL = "spark-vllm.io/run"
# How helm reports a `fail` of the chart's own templates (its message in group 1).
CHART_FAIL = r"execution error at \([^)]*\): (.*?)(\n\s*Use --debug.*)?$"
# SparkApplication states (status.applicationState.state) after which no driver will come.
APP_FAILED = ("SUBMISSION_FAILED", "FAILED")
NOT_SEEN = "not yet seen by the Spark Operator"


class OperateError(Exception):
    """A problem the user fixes (no chart, no helm, no such release); exit 1."""


def say(message: str) -> None:
    print(f"spark-vllm: {message}", flush=True)


# --- submitting ------------------------------------------------------------------------


def release_name(spec_path: str | Path) -> str:
    """The release name `submit` derives from the spec's file name: lower case, DNS-1123
    (letters, digits, '-'), at most 40 characters."""
    stem = Path(spec_path).name.split(".", 1)[0].lower()
    name = re.sub(r"[^a-z0-9]+", "-", stem).strip("-")[:MAX_RELEASE].rstrip("-")
    return name or "spark-vllm-job"


def check_release_name(name: str) -> str:
    if len(name) > MAX_RELEASE or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name):
        raise SpecError(
            f"release name {name!r}: use at most {MAX_RELEASE} lower-case letters, digits "
            "and '-', starting and ending with a letter or digit"
        )
    return name


def find_chart(explicit: str | None) -> Path:
    """--chart, else the chart beside the source tree this package runs from."""
    if explicit is not None:
        chart = Path(explicit)
        if not (chart / "Chart.yaml").is_file():
            raise OperateError(f"--chart {explicit}: no Chart.yaml there")
        return chart
    chart = SOURCE_ROOT / "charts" / CHART_NAME
    if (chart / "Chart.yaml").is_file():
        return chart
    raise OperateError(
        f"no {CHART_NAME} chart beside this installation ({chart} does not exist): pass "
        "--chart DIR (charts/spark-vllm of the project's repository)"
    )


def find_helm() -> str:
    """$HELM, else helm on PATH, else the one `make tools` puts in build/tools/bin."""
    for candidate in (
        os.environ.get("HELM"),
        shutil.which("helm"),
        str(SOURCE_ROOT / "build" / "tools" / "bin" / "helm"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    raise OperateError("helm not found: put it on PATH or name it in $HELM (make tools gets one)")


def helm_write_args(helm: str) -> list[str]:
    """Helm 4 applies server-side by default, which API servers before 1.21 refuse for the
    chart's Services; client-side apply works everywhere."""
    proc = _run([helm, "version", "--short"])
    major = re.match(r"v?(\d+)", proc.stdout.strip())
    return ["--server-side=false"] if major and int(major.group(1)) >= 4 else []


def chart_values(chart: Path, values_file: str | None) -> dict[str, Any]:
    """The chart's defaults with the user's values file over them (for what the chart fills
    into the job spec), checked to leave `job:` to the spec."""
    merged: dict[str, Any] = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    if values_file is None:
        return merged
    try:
        user = yaml.safe_load(Path(values_file).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"--values {values_file}: cannot read it as YAML: {exc}") from None
    if user is None:
        return merged
    if not isinstance(user, dict):
        raise SpecError(f"--values {values_file}: expected a mapping of chart values")
    if "job" in user:
        raise SpecError(
            f"--values {values_file} has a job: key; `submit` takes the job spec from its "
            "JOB.yaml argument: move it there, or leave it out of the values"
        )
    for mode in ("trigger", "notebook"):
        if ((user.get(mode) or {}) if isinstance(user.get(mode), dict) else {}).get("enabled"):
            raise SpecError(
                f"--values {values_file} sets {mode}.enabled, which makes a release run no "
                f"job; `submit` installs a job: leave {mode}.enabled out (install the "
                f"{mode} with helm install)"
            )
    return _merge(merged, user)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def job_document(
    spec_path: str | Path, overrides: list[str], values: dict[str, Any]
) -> dict[str, Any]:
    """The spec file's document after the --set overrides, validated as `run` validates it
    with the endpoint the chart fills in (its vLLM sidecar, unless the spec names one)."""
    doc = read_document(spec_path)
    if not isinstance(doc, dict):
        spec_from_dict(doc)  # raises, naming what it got
    doc = apply_overrides(doc, overrides)
    check_for_chart(doc, values)
    return doc


def check_for_chart(doc: dict[str, Any], values: dict[str, Any]) -> None:
    """Validate a spec as `run` validates it in the chart's driver: with the endpoint the
    chart fills in (its vLLM sidecar), unless the spec names one. Raises SpecError."""
    sidecar = values.get("sidecar") or {}
    chart_endpoint = {
        "base_url": f"http://127.0.0.1:{sidecar.get('port', SIDECAR_PORT)}/v1",
        "model": (values.get("model") or {}).get("servedName", "model"),
    }
    checked = copy.deepcopy(doc)
    endpoint = doc.get("endpoint")
    checked["endpoint"] = {**chart_endpoint, **(endpoint if isinstance(endpoint, dict) else {})}
    spec_from_dict(checked)


def helm_install_command(
    helm: str,
    name: str,
    chart: Path,
    namespace: str,
    values_file: str | None,
    job_file: Path,
    extra: list[str],
) -> list[str]:
    """`helm install`: the user's values, then the job spec's file; the values choose the
    path (operator.enabled, the chart's default, or the operator-less Job)."""
    command = [helm, "install", name, str(chart), "-n", namespace]
    if values_file is not None:
        command += ["-f", values_file]
    return [*command, "-f", str(job_file), *extra]


def submit(args: Any) -> int:
    """`spark-vllm submit`: validate, install the release, follow it (unless --no-follow)."""
    try:
        chart = find_chart(args.chart)
        values = chart_values(chart, args.values)
        doc = job_document(args.spec, args.overrides, values)
        name = check_release_name(args.release or release_name(args.spec))
    except SpecError as exc:
        print(f"spark-vllm: {exc}", file=sys.stderr)
        return 2
    except OperateError as exc:
        print(f"spark-vllm: {exc}", file=sys.stderr)
        return 1
    try:
        helm = find_helm()
        kube = None if args.no_follow else Kube.connect()
        # Pods of an earlier release of this name (a finished driver) are not this run's.
        stale = set() if kube is None else {p.metadata.uid for p in kube.pods(name, args.namespace)}
        with tempfile.TemporaryDirectory(prefix="spark-vllm-submit-") as tmp:
            job_file = Path(tmp) / "job-values.yaml"
            job_file.write_text(yaml.safe_dump({"job": doc}, sort_keys=False))
            command = helm_install_command(
                helm, name, chart, args.namespace, args.values, job_file, helm_write_args(helm)
            )
            proc = _run(command)
    except OperateError as exc:
        print(f"spark-vllm: {exc}", file=sys.stderr)
        return 1
    refused = re.search(CHART_FAIL, proc.stderr, re.S)
    if proc.returncode != 0 and refused:  # the chart's own rules: the spec or the values
        print(f"spark-vllm: the chart refused the job: {refused.group(1).strip()}", file=sys.stderr)
        return 2
    if proc.returncode != 0:
        hint = ""
        if "cannot re-use a name" in proc.stderr:
            hint = (
                f"\nspark-vllm: release {name} exists in {args.namespace}: `spark-vllm cancel "
                f"{name} -n {args.namespace}` removes it (its committed output stays), or "
                "pass --release NAME"
            )
        print(f"spark-vllm: helm install failed:\n{proc.stderr.strip()}{hint}", file=sys.stderr)
        return 1
    path = "a SparkApplication" if operator_path(values) else "the operator-less Job"
    say(f"submitted {name} (helm release in namespace {args.namespace}, {path})")
    if args.no_follow:
        say(f"follow it with: spark-vllm status {name} -n {args.namespace}")
        return 0
    assert kube is not None
    return follow(kube, name, args.namespace, args.timeout, stale)


def operator_path(values: dict[str, Any]) -> bool:
    """Whether the values install a SparkApplication (the chart's default) or the Job."""
    return bool((values.get("operator") or {}).get("enabled", True))


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    except OSError as exc:
        raise OperateError(f"{command[0]}: {exc.strerror}") from None


# --- the cluster -----------------------------------------------------------------------


@dataclass
class Kube:
    """The two API groups the commands read: pods (and their logs) and Jobs."""

    core: Any
    batch: Any
    custom: Any = None  # CustomObjectsApi: the Spark Operator's SparkApplications

    def application(self, name: str, namespace: str) -> dict[str, Any] | None:
        """The release's SparkApplication (the operator path; with a schedule, its newest
        run: the ScheduledSparkApplication gives each run its labels), or None
        (operator-less path, no such object, or no SparkApplication kind on the cluster)."""
        if self.custom is None:
            return None
        from kubernetes.client.exceptions import ApiException

        try:
            found = self.custom.list_namespaced_custom_object(
                APP_GROUP, APP_VERSION, namespace, APP_PLURAL, label_selector=_selector(name)
            )
        except ApiException as exc:
            if exc.status == 404:  # the CRD is not installed
                return None
            raise
        items = [i for i in found.get("items", []) if i.get("kind") == "SparkApplication"]
        # RFC 3339 times in UTC sort as text.
        return max(items, key=lambda i: i["metadata"].get("creationTimestamp") or "", default=None)

    @classmethod
    def connect(cls) -> Kube:
        """$KUBECONFIG or ~/.kube/config, else the pod's in-cluster config (at the API
        server's own address when $SPARK_VLLM_API_SERVER names one, as the chart's
        `submitter.apiServer` does for clusters whose Service addresses do not route)."""
        from kubernetes import client, config

        try:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            server = urlsplit(os.environ.get("SPARK_VLLM_API_SERVER", ""))
            if server.hostname:
                # The in-cluster loader builds its URL from these, and builds it again on
                # every token refresh: a host set on the configuration afterwards is lost.
                os.environ["KUBERNETES_SERVICE_HOST"] = server.hostname
                os.environ["KUBERNETES_SERVICE_PORT"] = str(server.port or 443)
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                raise OperateError(
                    "no Kubernetes configuration: set KUBECONFIG or write ~/.kube/config"
                ) from None
        return cls(client.CoreV1Api(), client.BatchV1Api(), client.CustomObjectsApi())

    def pods(self, name: str, namespace: str) -> list[Any]:
        return list(self.core.list_namespaced_pod(namespace, label_selector=_selector(name)).items)

    def submitter_job(self, name: str, namespace: str) -> Any | None:
        jobs = self.batch.list_namespaced_job(
            namespace, label_selector=f"{_selector(name)},{COMPONENT_LABEL}={SUBMITTER_COMPONENT}"
        ).items
        return jobs[0] if jobs else None

    def log(self, pod: str, namespace: str, container: str) -> str:
        text: str = self.core.read_namespaced_pod_log(pod, namespace, container=container)
        return text

    def log_lines(self, pod: str, namespace: str, container: str) -> Iterator[str]:
        """The container's log, followed until the container ends."""
        response = self.core.read_namespaced_pod_log(
            pod, namespace, container=container, follow=True, _preload_content=False
        )
        try:
            pending = b""
            for chunk in response.stream(4096):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")
            if pending:
                yield pending.decode(errors="replace")
        finally:
            response.release_conn()


def _selector(name: str) -> str:
    return f"{INSTANCE_LABEL}={name}"


def role(pod: Any) -> str:
    labels = pod.metadata.labels or {}
    if labels.get(COMPONENT_LABEL) == SUBMITTER_COMPONENT:
        return SUBMITTER_COMPONENT
    return str(labels.get(SPARK_ROLE_LABEL) or labels.get(COMPONENT_LABEL) or "other")


def executors_in_order(pods: list[Any]) -> list[Any]:
    """Executor pods, the first created first (Spark's executor ids break ties)."""
    found = [p for p in pods if role(p) == "executor"]

    def key(pod: Any) -> tuple[float, int]:
        created = pod.metadata.creation_timestamp
        exec_id = str((pod.metadata.labels or {}).get("spark-exec-id", "0"))
        return (created.timestamp() if created else 0.0, int(exec_id) if exec_id.isdigit() else 0)

    return sorted(found, key=key)


def exit_code(pod: Any, container: str) -> int | None:
    for status in pod.status.container_statuses or []:
        if status.name == container and status.state and status.state.terminated:
            return int(status.state.terminated.exit_code)
    return None


def unschedulable(pod: Any) -> str | None:
    """Why the scheduler has not placed a Pending pod: its PodScheduled condition's message
    as the scheduler wrote it (for example "0/1 nodes are available: 1 Insufficient
    nvidia.com/gpu."), or None once the pod is placed or before the scheduler has tried."""
    if pod.status is None or pod.status.phase != "Pending":
        return None
    for condition in pod.status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return str(condition.message or condition.reason or "not scheduled yet")
    return None


def app_state(app: dict[str, Any] | None) -> str:
    """A SparkApplication's state as the operator reports it, or that it has not yet."""
    if app is None:
        return "gone"
    state = ((app.get("status") or {}).get("applicationState") or {}).get("state")
    return str(state) if state else NOT_SEEN


# The API server's own words inside a Java client exception: "... Message: <them>. Received
# status: Status(...)".
_K8S_MESSAGE = re.compile(r"Message: (.+?)(?:\. Received status:|$)")


def app_error(app: dict[str, Any] | None) -> str:
    """The operator's errorMessage (status.applicationState), in one line.

    A failed submission carries spark-submit's whole output: JVM warnings, INFO lines and a
    stack trace, ~100 lines. Kept: its first line (the operator's own words) and, from the
    first exception line, the API server's message (or the exception itself); the full text
    stays in the application's status (`kubectl describe sparkapplication`)."""
    state = ((app or {}).get("status") or {}).get("applicationState") or {}
    message = str(state.get("errorMessage") or "").strip()
    lines = message.splitlines()
    if len(lines) <= 1:
        return message
    cause = next((line for line in lines if "Exception" in line), "")
    found = _K8S_MESSAGE.search(cause)
    detail = found.group(1) if found else cause.strip()
    first = lines[0].split(": WARNING:")[0].rstrip(": ")
    return f"{first}: {detail}" if detail else first


def job_state(job: Any | None) -> str:
    if job is None:
        return "gone"
    for condition in job.status.conditions or []:
        if condition.status == "True" and condition.type in ("Complete", "Failed"):
            return str(condition.type)
    return "Running" if job.status.active else "Pending"


# --- following -------------------------------------------------------------------------


@dataclass
class _Follow:
    """What the watch has seen of one release, and the thread streaming the driver's log."""

    kube: Kube
    name: str
    namespace: str
    driver_phase: str | None = None
    driver_seen: bool = False
    executors_up: int = 0
    running_executors: set[str] = field(default_factory=set)
    failed_submitters: set[str] = field(default_factory=set)
    waiting: dict[str, str] = field(default_factory=dict)
    backoff_limit: int = 0
    app_state: str | None = None
    log_thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, message: str) -> None:
        with self.lock:
            say(message)

    def stream_driver_log(self, pod: str) -> None:
        def run() -> None:
            with contextlib.suppress(Exception):  # the pod went; its state says why
                for line in self.kube.log_lines(pod, self.namespace, DRIVER_CONTAINER):
                    with self.lock:
                        print(line, flush=True)

        self.log_thread = threading.Thread(target=run, daemon=True)
        self.log_thread.start()

    def see(self, event_type: str, pod: Any) -> int | None:
        """Print what changed; the exit code once the job has ended."""
        kind, pod_name = role(pod), pod.metadata.name
        phase = pod.status.phase if event_type != "DELETED" else "Deleted"
        reason = unschedulable(pod) if event_type != "DELETED" else None
        if reason and self.waiting.get(pod_name) != reason:
            self.waiting[pod_name] = reason
            self.say(f"{kind} {pod_name} is not scheduled: {reason}")
        if kind == "driver":
            return self._driver(pod, pod_name, phase)
        if kind == "executor":
            if phase == "Running" and pod.metadata.deletion_timestamp is None:
                self.running_executors.add(pod_name)
            else:
                self.running_executors.discard(pod_name)
            if len(self.running_executors) != self.executors_up:
                self.executors_up = len(self.running_executors)
                self.say(f"executors up {self.executors_up}")
            return None
        if kind == "submitter" and phase == "Failed" and not self.driver_seen:
            self.failed_submitters.add(pod_name)
            if len(self.failed_submitters) > self.backoff_limit:
                tail = ""
                with contextlib.suppress(Exception):
                    log = self.kube.log(pod_name, self.namespace, "spark-submit")
                    tail = "\n".join(log.strip().splitlines()[-20:])
                tail = tail or "(its log could not be read)"
                self.say(
                    f"failed: the submitter Job failed before a driver existed; its pod "
                    f"{pod_name} said:\n{tail}"
                )
                return 1
        return None

    def see_application(self, app: dict[str, Any] | None) -> int | None:
        """The operator path: print the SparkApplication's state changes; 1 when it failed
        (or went) before any driver pod did, which the pods' watch cannot see."""
        current = app_state(app)
        if current != self.app_state:
            self.app_state = current
            self.say(f"application {current.lower() if current != NOT_SEEN else current}")
        if self.driver_seen:
            return None  # the driver's own end decides
        if app is None:
            self.say("failed: the SparkApplication was deleted (cancelled) before a driver ran")
            return 1
        if current in APP_FAILED:
            self.say(f"failed: the Spark Operator reports {current}: {app_error(app)}")
            return 1
        return None

    def _driver(self, pod: Any, pod_name: str, phase: str) -> int | None:
        self.driver_seen = True
        if phase != self.driver_phase:
            self.driver_phase = phase
            self.say(f"driver {pod_name} {phase.lower()}")
        if phase in ("Running", "Succeeded", "Failed") and self.log_thread is None:
            self.stream_driver_log(pod_name)
        deleted = phase == "Deleted" or pod.metadata.deletion_timestamp is not None
        if deleted and phase != "Running":  # a deleted pod may show Running until it goes
            self.say(f"failed: the driver pod {pod_name} was deleted (cancelled) before it ended")
            return 1
        if phase not in ("Succeeded", "Failed"):
            return None
        code = exit_code(pod, DRIVER_CONTAINER)
        if self.log_thread is not None:
            self.log_thread.join(timeout=60)
        code = code if code is not None else (0 if phase == "Succeeded" else 1)
        self.say("completed" if code == 0 else f"failed: the driver exited with code {code}")
        return code


def follow(
    kube: Kube, name: str, namespace: str, timeout: float | None, stale: set[str] | None = None
) -> int:
    """Watch the release's pods until its driver ends: state changes, the driver's log, its
    exit code. 124 after `timeout` seconds (the job goes on); 130 on Ctrl-C (likewise)."""
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    state = _Follow(kube, name, namespace)
    job = kube.submitter_job(name, namespace)
    state.backoff_limit = int(job.spec.backoff_limit or 0) if job is not None else 0
    operator = job is None and kube.application(name, namespace) is not None
    deadline = None if timeout is None else time.monotonic() + timeout
    say("following it (Ctrl-C stops following, not the job)")
    try:
        while True:
            if operator:
                code = state.see_application(kube.application(name, namespace))
                if code is not None:
                    return code
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                say(
                    f"timed out after {timeout:.0f} s; the job goes on: `spark-vllm status "
                    f"{name} -n {namespace}`, or `spark-vllm cancel {name} -n {namespace}`"
                )
                return EXIT_TIMEOUT
            # Short watches, so that the deadline is checked; each starts with the pods as
            # they are (ADDED), and what was printed already is not printed again.
            stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                kube.core.list_namespaced_pod,
                namespace,
                label_selector=_selector(name),
                # On the operator path the application's state is read between watches.
                timeout_seconds=max(1, int(min(left or 30, 5 if operator else 30))),
            )
            try:
                for event in stream:
                    if event["object"].metadata.uid in (stale or set()):
                        continue
                    code = state.see(event["type"], event["object"])
                    if code is not None:
                        return code
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: the watch is too old, start another
                    raise
    except KeyboardInterrupt:
        say(
            f"stopped following; the job goes on (`spark-vllm cancel {name} -n {namespace}` "
            "stops it)"
        )
        return 130


# --- status, logs, cancel, list --------------------------------------------------------


def summary_block(log: str) -> list[str]:
    """The last `spark-vllm summary` block of a driver's log: its head and indented lines."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(SUMMARY_HEAD)]
    if not starts:
        return []
    block = [lines[starts[-1]]]
    for line in lines[starts[-1] + 1 :]:
        if not line.startswith("  "):
            break
        block.append(line)
    return block


def ready(pod: Any) -> str:
    """Ready containers of the pod's containers, as kubectl's READY column (`0/2`): counted
    against its spec, since a pod no node has taken has no container statuses yet."""
    statuses = pod.status.container_statuses or []
    containers = pod.spec.containers if pod.spec is not None else None
    total = len(containers) if containers else len(statuses)
    return f"{sum(1 for s in statuses if s.ready)}/{total}"


def _restarts(pod: Any) -> int:
    return sum(int(s.restart_count or 0) for s in pod.status.container_statuses or [])


def summary_fields(lines: list[str]) -> dict[str, str]:
    """`rows 20`, `succeeded 19`, ... of a summary block, as a mapping (values as printed)."""
    fields: dict[str, str] = {}
    for line in lines[1:]:
        found = re.fullmatch(r"  ([a-z][a-z /]*?) {2,}(\S.*)", line)
        if found:
            fields[found.group(1).strip()] = found.group(2).strip()
    return fields


def report(
    kube: Kube, name: str, namespace: str, submitter: bool = True, summary: bool = True
) -> dict[str, Any]:
    """A job's state as data: `state` (pending, running, succeeded, failed or gone), its
    pods (role, name, phase), the submitter Job's state (not read with `submitter` False:
    the operator path has none), `unschedulable` (pod name: the scheduler's reason, see
    `unschedulable`) while a pod waits for a node, the driver's exit code and, once the
    driver ended and unless `summary` is False (the driver's log is not read then), its
    summary block (`summary`: the lines; `counts`: their fields)."""
    pods = kube.pods(name, namespace)
    job = kube.submitter_job(name, namespace) if submitter else None
    drivers = [p for p in pods if role(p) == "driver"]
    out: dict[str, Any] = {
        **({"submitter": job_state(job)} if submitter else {}),
        "pods": [
            {"role": role(p), "name": p.metadata.name, "phase": p.status.phase}
            for p in sorted(pods, key=lambda p: (role(p), p.metadata.name))
        ],
        "executors_running": sum(
            1 for p in pods if role(p) == "executor" and p.status.phase == "Running"
        ),
    }
    waiting = {p.metadata.name: reason for p in pods if (reason := unschedulable(p))}
    if waiting:
        out["unschedulable"] = waiting
    driver = drivers[0] if drivers else None
    code = exit_code(driver, DRIVER_CONTAINER) if driver is not None else None
    if driver is not None and driver.status.phase in ("Succeeded", "Failed"):
        out["state"] = "succeeded" if driver.status.phase == "Succeeded" else "failed"
        out["exit_code"] = code
        if summary:
            with contextlib.suppress(Exception):
                log = kube.log(driver.metadata.name, namespace, DRIVER_CONTAINER)
                lines = [redact(line) for line in summary_block(log)]
                out["summary"] = lines
                out["counts"] = summary_fields(lines)
    elif driver is not None and driver.status.phase == "Running":
        out["state"] = "running"
    elif out.get("submitter") == "Failed":
        out["state"] = "failed"
    elif job is None and not pods:
        out["state"] = "gone"
    else:
        out["state"] = "pending"
    return out


def status(kube: Kube, name: str, namespace: str) -> int:
    """`spark-vllm status`: the release's pods, its Job, the driver's summary once ended."""
    pods = kube.pods(name, namespace)
    job = kube.submitter_job(name, namespace)
    app = kube.application(name, namespace) if job is None else None
    if not pods and job is None and app is None:
        print(f"spark-vllm: no job {name} in namespace {namespace}", file=sys.stderr)
        return 1
    executors = {p.metadata.name: i for i, p in enumerate(executors_in_order(pods))}
    print(f"{'ROLE':<12} {'POD':<44} {'PHASE':<10} {'READY':<6} RESTARTS")
    for pod in sorted(pods, key=lambda p: (role(p), executors.get(p.metadata.name, 0))):
        kind = role(pod)
        if pod.metadata.name in executors:
            kind = f"executor {executors[pod.metadata.name]}"
        print(
            f"{kind:<12} {pod.metadata.name:<44} {pod.status.phase:<10} {ready(pod):<6} "
            f"{_restarts(pod)}"
        )
    for pod in pods:
        reason = unschedulable(pod)
        if reason:
            print(f"{pod.metadata.name} is not scheduled: {reason}")
    if app is not None:
        error = app_error(app)
        print(
            f"application {app['metadata']['name']}: {app_state(app)}"
            + (f" ({error})" if error else "")
        )
    else:
        print(f"job {job.metadata.name if job else name + '-submit'}: {job_state(job)}")
    for pod in pods:
        if role(pod) == "driver" and pod.status.phase in ("Succeeded", "Failed"):
            code = exit_code(pod, DRIVER_CONTAINER)
            print(f"driver exit code: {code if code is not None else 'unknown'}")
            with contextlib.suppress(Exception):
                for line in summary_block(kube.log(pod.metadata.name, namespace, DRIVER_CONTAINER)):
                    print(line)
    return 0


def logs(
    kube: Kube,
    name: str,
    namespace: str,
    executor: int | None,
    sidecar: bool,
    follow_log: bool,
) -> int:
    """`spark-vllm logs`: the driver's, executor N's, or executor N's vLLM sidecar's log."""
    pods = kube.pods(name, namespace)
    if executor is None and not sidecar:
        drivers = [p for p in pods if role(p) == "driver"]
        if not drivers:
            print(f"spark-vllm: job {name} in {namespace} has no driver pod", file=sys.stderr)
            return 1
        pod, container = drivers[0].metadata.name, DRIVER_CONTAINER
    else:
        index = executor or 0
        found = executors_in_order(pods)
        if index >= len(found):
            print(
                f"spark-vllm: job {name} in {namespace} has {len(found)} executor pod(s); "
                f"--executor counts from 0",
                file=sys.stderr,
            )
            return 1
        pod = found[index].metadata.name
        container = SIDECAR_CONTAINER if sidecar else EXECUTOR_CONTAINER
    if follow_log:
        for line in kube.log_lines(pod, namespace, container):
            print(line, flush=True)
    else:
        sys.stdout.write(kube.log(pod, namespace, container))
    return 0


def cancel(kube: Kube, name: str, namespace: str, wait_s: float = 180) -> int:
    """`spark-vllm cancel`: the submitter Job first (so that it submits no new driver), the
    driver pod (Spark's executors are its dependents and go with it), then `helm uninstall`.
    What the job committed stays on its output path."""
    job = kube.submitter_job(name, namespace)
    if job is not None:
        with contextlib.suppress(Exception):  # gone already
            kube.batch.delete_namespaced_job(
                job.metadata.name, namespace, propagation_policy="Background"
            )
    app = kube.application(name, namespace)
    if app is not None:  # the operator path: the operator then submits nothing more
        with contextlib.suppress(Exception):
            kube.custom.delete_namespaced_custom_object(
                APP_GROUP, APP_VERSION, namespace, APP_PLURAL, app["metadata"]["name"]
            )
    drivers = [p.metadata.name for p in kube.pods(name, namespace) if role(p) == "driver"]
    for pod in drivers:
        with contextlib.suppress(Exception):
            kube.core.delete_namespaced_pod(pod, namespace)
    proc = _run([find_helm(), "uninstall", name, "-n", namespace, "--wait"])
    if proc.returncode != 0 and "not found" not in proc.stderr:
        print(f"spark-vllm: helm uninstall failed:\n{proc.stderr.strip()}", file=sys.stderr)
        return 1
    if proc.returncode != 0 and job is None and app is None and not drivers:
        print(f"spark-vllm: no job {name} in namespace {namespace}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + wait_s
    while kube.pods(name, namespace):
        if time.monotonic() > deadline:
            say(f"cancelled {name}; some of its pods are still terminating")
            return 0
        time.sleep(2)
    say(
        f"cancelled {name}: its pods are gone and the release removed; the rows it committed "
        "stay in its output, and submitting the same spec again resumes from them"
    )
    return 0


def list_jobs(kube: Kube, namespace: str) -> int:
    """`spark-vllm list`: this chart's releases in the namespace, each with its state (a
    trigger or notebook release as such), then the runs the triggers there created."""
    proc = _run([find_helm(), "list", "-n", namespace, "-o", "json"])
    if proc.returncode != 0:
        print(f"spark-vllm: helm list failed:\n{proc.stderr.strip()}", file=sys.stderr)
        return 1
    releases = [
        r["name"]
        for r in json.loads(proc.stdout or "[]")
        if re.fullmatch(r"spark-vllm-\d.*", r["chart"])
    ]
    runs = sorted(
        {
            (cm.metadata.labels or {}).get(RUN_LABEL, "")
            for cm in kube.core.list_namespaced_config_map(
                namespace, label_selector=RUN_LABEL
            ).items
        }
        - {""}
    )
    print(f"{'NAME':<40} {'JOB':<9} {'DRIVER':<10} EXECUTORS")
    for name in sorted(releases) + runs:
        pods = kube.pods(name, namespace)
        driver = next((p.status.phase for p in pods if role(p) == "driver"), "-")
        running = sum(
            1
            for p in pods
            if role(p) == "executor"
            and p.status.phase == "Running"
            and p.metadata.deletion_timestamp is None
        )
        job = kube.submitter_job(name, namespace)
        app = kube.application(name, namespace) if job is None else None
        modes = {role(p) for p in pods} & {"trigger", "notebook"}
        if app is not None:
            what = app_state(app)
        elif job is None and modes:  # a release that runs no job of its own
            what = modes.pop()
        else:
            what = job_state(job)
        print(f"{name:<40} {what:<9} {driver:<10} {running}")
    return 0
