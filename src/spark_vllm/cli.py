"""The `spark-vllm` command: validate a job spec, plan it (count what a run would send),
run a job, run it with a local vLLM, or serve a local vLLM for your own code; and submit,
follow, read and cancel jobs on Kubernetes (spark_vllm.cluster.operate).

Exit codes: 0 done; 1 the job failed (a row failed under on_error: fail, the sidecar
never became ready, Spark failed); 2 the job spec or the command line is wrong (also a
max_tokens larger than the served model's context, and a Kubernetes verb without the
`k8s` extra installed); 3 the run stopped at its budget (what
finished is committed); 130 interrupted (Ctrl-C): what was committed stays, and the same
command resumes.

Each verb imports the modules it runs when it runs (Spark, the Kubernetes client, the
trigger's web server): `--help` and `validate` start without them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_vllm.errors import (
    ContextExceeded,
    JdbcError,
    SidecarNotReady,
    SpecError,
    task_error,
)
from spark_vllm.spec import JobSpec, conf_key_allowed, load_spec

if TYPE_CHECKING:
    from spark_vllm.driver.local_server import LocalServer
    from spark_vllm.storage.inputs import Columns

OPERATE_COMMANDS = ("submit", "status", "logs", "cancel", "list", "trigger")

# Local mode stays on loopback and keeps the console readable.
LOCAL_DEFAULTS = {
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.ui.showConsoleProgress": "false",
}


def _add_spec_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="the job spec (YAML)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one field of the spec, e.g. --set sampling.max_tokens=64 (repeatable)",
    )


def _add_server_args(parser: argparse.ArgumentParser, default_port: int | None) -> None:
    parser.add_argument("--model", required=True, help="model directory or id for vLLM")
    parser.add_argument(
        "--port",
        type=int,
        default=default_port,
        help=f"server port (default: {default_port or 'a free one'})",
    )
    parser.add_argument(
        "--vllm-arg",
        dest="vllm_args",
        action="append",
        default=[],
        metavar="ARG",
        help="passed to vLLM untouched, e.g. --vllm-arg=--max-model-len=1024 (repeatable)",
    )
    parser.add_argument(
        "--server-log", default="build/vllm-server.log", help="where the server's output goes"
    )
    parser.add_argument(
        "--server-timeout", type=float, default=600.0, help="seconds to wait for the server"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spark-vllm", description="Batch LLM inference with Spark and a vLLM sidecar."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser(
        "validate",
        help="check a job spec, that a local input path is there, and the input's columns "
        "where that is cheap",
    )
    _add_spec_args(validate)
    validate.add_argument(
        "--spark",
        action="store_true",
        help="also read the columns of a table, a JDBC input or a remote path (s3a://, "
        "hdfs://: without --spark not checked, not even that it exists) with a local Spark "
        "session",
    )
    validate.add_argument(
        "--input-elsewhere",
        action="store_true",
        help="the input is on the machines that run the job, not this one (the chart's helm "
        "test pod): a local input path with nothing here is said, not refused",
    )
    _add_spec_args(sub.add_parser("run", help="run a job against its endpoint (the sidecar)"))
    local = sub.add_parser(
        "local", help="start a vLLM server on loopback, run the job against it, stop it"
    )
    _add_spec_args(local)
    _add_server_args(local, None)
    serve = sub.add_parser(
        "serve",
        help="start a vLLM server on loopback, as `local` does, until Ctrl-C "
        "(for the column functions and your own code)",
    )
    _add_server_args(serve, 8000)
    serve.add_argument(
        "--served-model-name", default=None, help="the name to serve it under (default: --model)"
    )
    summary = sub.add_parser(
        "summary",
        help="print the summary an earlier run of the job left beside its output (a local "
        "output is read without Spark)",
    )
    _add_spec_args(summary)
    summary.add_argument("--run", default=None, help="the run's id (default: the latest run)")
    summary.add_argument(
        "--json", action="store_true", help="print the summary's JSON document instead"
    )
    summary.add_argument("--all", action="store_true", help="every run's summary, the oldest first")
    planning = sub.add_parser(
        "plan",
        help="everything `run` does but send: rows to send after resume, rows that would "
        "fail, tokens in and at most out, time and GPU-hours",
    )
    _add_spec_args(planning)
    planning.add_argument(
        "--tokenizer",
        default=None,
        metavar="DIR",
        help="count with these tokenizer files (a model directory or Hugging Face id) "
        "instead of the server's POST /tokenize (default: the spec's endpoint)",
    )
    planning.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        metavar="N",
        help="the model's context in tokens, as the server's --max-model-len (with "
        "--tokenizer: default the config's max_position_embeddings, which vLLM may lower; "
        "without: default the server's)",
    )
    planning.add_argument(
        "--report",
        default=None,
        metavar="FILE",
        help="write the figures as JSON to FILE (default: none written)",
    )
    _add_operate_commands(sub)
    return parser


def _add_operate_commands(sub: Any) -> None:
    """submit, status, logs, cancel, list: jobs on Kubernetes (spark_vllm.cluster.operate)."""
    ns_help = "the Kubernetes namespace"
    submit = sub.add_parser(
        "submit",
        help="install the job on Kubernetes through the chart (helm install; the values' "
        "operator.enabled chooses a SparkApplication or the operator-less Job) and follow it: "
        "exit code as `run`'s",
    )
    _add_spec_args(submit)
    submit.add_argument("-n", "--namespace", required=True, help=ns_help)
    submit.add_argument(
        "--release",
        default=None,
        metavar="NAME",
        help="the release's name (default: the spec's file name, DNS-1123, at most 40 characters)",
    )
    submit.add_argument(
        "--values", default=None, metavar="FILE", help="chart values (image, model, sidecar, ...)"
    )
    submit.add_argument(
        "--chart", default=None, metavar="DIR", help="the chart (default: charts/spark-vllm)"
    )
    submit.add_argument(
        "--no-follow", action="store_true", help="return once installed, without following"
    )
    submit.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="stop following after S seconds, exit 124 (the job goes on)",
    )
    status = sub.add_parser(
        "status", help="a job's pods, its Job, and the driver's summary once it ended"
    )
    status.add_argument("name", help="the release's name")
    status.add_argument("-n", "--namespace", required=True, help=ns_help)
    logs = sub.add_parser("logs", help="a job's driver log, or an executor's, or its vLLM's")
    logs.add_argument("name", help="the release's name")
    logs.add_argument("-n", "--namespace", required=True, help=ns_help)
    logs.add_argument(
        "--executor",
        type=int,
        default=None,
        metavar="N",
        help="executor N's Spark container (0: the first created)",
    )
    logs.add_argument(
        "--sidecar", action="store_true", help="the vLLM sidecar of executor N (default 0)"
    )
    logs.add_argument("-f", "--follow", action="store_true", help="follow the log")
    cancel = sub.add_parser(
        "cancel",
        help="stop a job and remove it: its submitter Job, its driver pod (the executors go "
        "with it), then helm uninstall; the rows it committed stay in its output, and "
        "`submit` of the same spec resumes from them",
    )
    cancel.add_argument("name", help="the release's name")
    cancel.add_argument("-n", "--namespace", required=True, help=ns_help)
    listing = sub.add_parser("list", help="this chart's releases in a namespace, and their state")
    listing.add_argument("-n", "--namespace", required=True, help=ns_help)
    trigger = sub.add_parser(
        "trigger",
        help="serve the HTTP trigger (the chart's trigger pod): POST /jobs runs a job spec "
        "with a release's values, GET /jobs/ID reports it, DELETE /jobs/ID cancels it",
    )
    trigger.add_argument(
        "--release", required=True, help="the trigger's release (run names start with it)"
    )
    trigger.add_argument("-n", "--namespace", required=True, help=ns_help)
    trigger.add_argument(
        "--values",
        required=True,
        metavar="FILE",
        help="the chart values every run is rendered with",
    )
    trigger.add_argument(
        "--chart", default=None, metavar="DIR", help="the chart (default: charts/spark-vllm)"
    )
    trigger.add_argument(
        "--token-file", required=True, metavar="FILE", help="the bearer token requests must send"
    )
    trigger.add_argument("--host", default="127.0.0.1", help="address to listen on")
    trigger.add_argument("--port", type=int, default=8080, help="port to listen on")
    trigger.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, metavar="N", help="largest body accepted"
    )
    trigger.add_argument(
        "--allow-env",
        action="append",
        default=[],
        metavar="NAME",
        help="an environment variable of the job's pods that a posted spec may name in a "
        "*_env key (repeatable; none by default)",
    )
    trigger.add_argument(
        "--allow-spark-conf",
        action="append",
        default=[],
        metavar="KEY",
        help="a spark.conf key a posted spec may set, or a prefix ending in '.' (repeatable; "
        "none by default)",
    )
    trigger.add_argument(
        "--allow-path",
        action="append",
        default=[],
        metavar="PREFIX",
        help="a path prefix a posted spec may read or write under, a JDBC URL, or "
        "table:NAME / table:DB. (repeatable; none by default: every path is refused)",
    )
    trigger.add_argument(
        "--max-running",
        type=int,
        default=0,
        metavar="N",
        help="at most N runs pending or running at once, 429 beyond (0: no cap)",
    )


# What the commands that act on Kubernetes import beyond the core: spark-vllm's `k8s` extra.
K8S_EXTRA = {"kubernetes": "kubernetes", "fastapi": "fastapi", "uvicorn": "uvicorn"}


def missing_extra(command: str) -> list[str]:
    """The distributions of the `k8s` extra that `command` needs and this Python lacks."""
    needed = ["kubernetes", "fastapi", "uvicorn"] if command == "trigger" else ["kubernetes"]
    missing = []
    for module in needed:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(K8S_EXTRA[module])
    return missing


def operate(args: argparse.Namespace) -> int:
    """The commands that act on jobs on Kubernetes."""
    missing = missing_extra(args.command)
    if missing:
        print(
            f"spark-vllm {args.command}: needs {', '.join(missing)}, which come with "
            "spark-vllm's k8s extra: pip install 'spark-vllm[k8s]'",
            file=sys.stderr,
        )
        return 2

    from spark_vllm.cluster import operate as op

    if args.command == "submit":
        return op.submit(args)
    if args.command == "trigger":
        from spark_vllm.cluster.trigger import serve

        try:
            return serve(args)
        except op.OperateError as exc:
            print(f"spark-vllm: {exc}", file=sys.stderr)
            return 1
    try:
        kube = op.Kube.connect()
        if args.command == "status":
            return op.status(kube, args.name, args.namespace)
        if args.command == "logs":
            return op.logs(
                kube, args.name, args.namespace, args.executor, args.sidecar, args.follow
            )
        if args.command == "cancel":
            return op.cancel(kube, args.name, args.namespace)
        return op.list_jobs(kube, args.namespace)
    except op.OperateError as exc:
        print(f"spark-vllm: {exc}", file=sys.stderr)
        return 1


def make_plan(spec: JobSpec, args: argparse.Namespace) -> int:
    """`spark-vllm plan`: the job planned and its requests counted, nothing sent."""
    import json

    from spark_vllm.driver.job import plan
    from spark_vllm.driver.preflight import choose_tokens, file_context, preflight

    try:
        tokens, context = choose_tokens(spec, args.tokenizer)
        if args.max_model_len is not None:
            context = args.max_model_len
        if context is None and args.tokenizer is not None:
            context = file_context(args.tokenizer)
        if context is None:
            raise SpecError(
                "plan needs the model's context: give --max-model-len N (the server's "
                "--max-model-len)"
            )
    except SpecError as exc:
        print(f"spark-vllm: {exc}", file=sys.stderr)
        return 2
    spark = spark_session(spec)
    try:
        job = plan(spark, spec, sending=False)
        done = job.census.skipped
        answered = job.result is None and done > 0
        if answered:
            # Every id is answered: count what a fresh run would send instead of nothing,
            # and say that a resume sends none of it.
            fresh = spec.model_copy(deep=True)
            fresh.output.mode = "overwrite"
            job = plan(spark, fresh, sending=False)
        report = preflight(spark, spec, job, tokens, context)
        report.done, report.fresh = done, answered
    except SpecError as exc:
        print(f"spark-vllm: {exc}", file=sys.stderr)
        return 2
    except JdbcError as exc:
        print(f"spark-vllm: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a task's failure (tokenizer files missing on an executor, …)
        known = task_error(exc)
        lines = str(known or exc).strip().splitlines()
        print(f"spark-vllm: plan failed: {lines[-1] if lines else exc!r}", file=sys.stderr)
        return 1
    finally:
        if not _under_spark_submit():
            spark.stop()
    print(report.render())
    if args.report is None:
        print("  report        not written (--report FILE writes these figures as JSON)")
    else:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"  report        {args.report}")
    return 0


def show_summaries(spec: JobSpec, args: argparse.Namespace) -> int:
    """`spark-vllm summary`: the summaries earlier runs left beside the spec's output."""
    import json

    from spark_vllm.driver.summary import Summary
    from spark_vllm.storage.results import local_summaries

    found = None
    if spec.output.format != "jdbc" and spec.output.path is not None:
        found = local_summaries(spec.output.path)  # a local output: read without Spark
    if found is None:  # a database, s3a://, hdfs://: Spark reaches them
        from spark_vllm.storage.stores import store_for

        spark = spark_session(spec)
        try:
            found = store_for(spark, spec).summaries()
        finally:
            if not _under_spark_submit():
                spark.stop()
    where = spec.output.where()
    if not found:
        print(f"spark-vllm: {where} holds no run summary", file=sys.stderr)
        return 1
    runs = sorted(found)  # run ids begin with their UTC start time
    if args.run is not None:
        if args.run not in found:
            print(
                f"spark-vllm: {where} holds no summary of run {args.run!r}; it holds "
                f"{', '.join(runs)}",
                file=sys.stderr,
            )
            return 1
        runs = [args.run]
    elif not args.all:
        runs = runs[-1:]
    for run in runs:
        if args.json:
            print(found[run])
            continue
        try:
            print(Summary.from_dict(json.loads(found[run])).render())
        except (ValueError, KeyError, TypeError) as exc:
            print(f"spark-vllm: the summary of run {run} at {where} is not a summary "
                  f"document ({type(exc).__name__}: {exc}); --json prints it as it is",
                  file=sys.stderr)  # fmt: skip
            return 1
    return 0


# Set by the chart on the driver (value jobSparkConfAllowed, a JSON list): the driver
# runs under an account that may create pods, so there a spec's spark.conf may not touch
# what places pods, mounts Secrets, loads code or reaches other hosts, unless the release
# allows the key. Unset (`make run`, `spark-vllm local`): every key is the user's own.
CHART_CONF_ENV = "SPARK_VLLM_JOB_SPARK_CONF_ALLOWED"
CHART_GUARDED_CONF = (
    "spark.kubernetes.",
    "spark.driver.",
    "spark.executor.",
    "spark.jars",
    "spark.plugins",
    "spark.hadoop.",
    "spark.master",
)


def check_chart_conf(spec: JobSpec) -> None:
    """When the chart started this driver: refuse the spec's spark.master and the spark.conf
    keys of CHART_GUARDED_CONF that the release's jobSparkConfAllowed does not list.
    Raises SpecError naming the key and what is allowed, or the variable when it is not a
    JSON list of strings."""
    listed = os.environ.get(CHART_CONF_ENV)
    if listed is None:
        return
    try:
        allowed = json.loads(listed)
    except ValueError:
        allowed = None
    if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
        raise SpecError(
            f"{CHART_CONF_ENV}: expected a JSON list of Spark keys or prefixes (the chart's "
            f"jobSparkConfAllowed), got {listed[:200]!r}"
        )
    allowed = [entry.strip() for entry in allowed if entry.strip()]
    keys = [*spec.spark.conf, *(["spark.master"] if spec.spark.master else [])]
    for key in keys:
        if key.startswith(CHART_GUARDED_CONF) and not conf_key_allowed(key, allowed):
            where = "spark.master" if key == "spark.master" else f"spark.conf.{key}"
            raise SpecError(
                f"{where}: the chart's driver takes no {', '.join(CHART_GUARDED_CONF)}* "
                f"setting from the job spec unless the release lists it in "
                f"jobSparkConfAllowed (listed: {', '.join(allowed) or 'none'})"
            )


def _under_spark_submit() -> bool:
    return "PYSPARK_GATEWAY_PORT" in os.environ


def session_conf(spec: JobSpec, master: str | None) -> dict[str, str]:
    """The Spark settings of the job's session: local defaults, Delta's when the spec reads
    or writes Delta, then the spec's spark.conf over them."""
    from spark_vllm.storage import delta

    conf: dict[str, str] = {}
    if master and master.startswith("local"):
        from spark_vllm.driver.slots import local_cores

        conf.update(LOCAL_DEFAULTS)
        # A few shuffle partitions per core, not Spark's 200: the plan's census and the
        # resume join are shuffles, and a local job gains nothing from 200 reducers.
        conf["spark.sql.shuffle.partitions"] = str(2 * local_cores(master))
    own = dict(spec.spark.conf)
    # Where the connector comes from: spark-submit's submission (--jars, or Spark's jars
    # folder), Spark's jars folder here (the project's images), else get-jars.sh's folder.
    provided = _under_spark_submit() or delta.on_spark_classpath()
    jars = [] if provided else delta.local_jars()
    if delta.uses_delta(spec.input.format, spec.output.format) and (jars or provided):
        # Only then: Delta's SQL extension and catalog slow every session's start (see
        # docs/job-spec.md). Without the jars the job stops with what to do (see
        # delta.check_connector).
        conf.update(delta.DELTA_CONF)
        if master and master.startswith("local"):
            # Delta rebuilds a table's state in 50 tasks by default: a few per core here.
            conf[delta.SNAPSHOT_PARTITIONS] = conf["spark.sql.shuffle.partitions"]
        if jars:
            given = own.pop("spark.jars", "")
            conf["spark.jars"] = ",".join([*([given] if given else []), *jars])
    conf.update(own)
    return conf


def spark_session(spec: JobSpec):  # type: ignore[no-untyped-def]
    """The job's SparkSession; master: the spec's, else spark-submit's, else local[*]."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(spec.spark.app_name)
    master = spec.spark.master or (None if _under_spark_submit() else "local[*]")
    if master:
        builder = builder.master(master)
    if master and master.startswith("local"):
        # Local Python workers must run this interpreter, which has spark_vllm installed.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    for key, value in session_conf(spec, master).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


class _CtrlC:
    """SIGINT while the job's Spark session lives.

    PySpark's own handler cancels the Spark jobs with a py4j call from the main thread,
    which is then itself inside a py4j call: the call re-enters the connection, fails
    with pages of tracebacks, and leaves the driver hanging. Here the first Ctrl-C
    cancels the jobs from a thread of its own, so the main thread's call returns with
    the job cancelled and the job ends with a summary of what was committed; a second
    Ctrl-C stops at once (the local vLLM first)."""

    def __init__(self, spark: Any, server: LocalServer | None) -> None:
        self.spark = spark
        self.server = server
        self.count = 0

    @property
    def seen(self) -> bool:
        return self.count > 0

    def __call__(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.count > 1:
            if self.server is not None:
                self.server.stop(grace_s=5)
            os._exit(130)
        print(
            "spark-vllm: interrupted: cancelling the Spark jobs (Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
        threading.Thread(target=self._cancel, daemon=True).start()

    def _cancel(self) -> None:
        with contextlib.suppress(Exception):  # the session may be stopping already
            context = self.spark.sparkContext
            context.setLogLevel("FATAL")  # no page of errors per cancelled task
            context.cancelAllJobs()


@contextlib.contextmanager
def _plain_sigint() -> Iterator[None]:
    """Ctrl-C as a KeyboardInterrupt, where the main thread makes no py4j call."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run(spec: JobSpec, server: LocalServer | None = None) -> int:
    """Plan the job, start `server` (if any) only when there is something to send, run."""
    from spark_vllm.driver.job import execute, plan
    from spark_vllm.driver.summary import JobFailed, JobInterrupted
    from spark_vllm.task.budget import BUDGET_REACHED

    spark = spark_session(spec)
    ctrl_c = _CtrlC(spark, server)
    signal.signal(signal.SIGINT, ctrl_c)
    sending = False

    def stopped() -> str:
        if not sending:
            return (
                "spark-vllm: interrupted before any request was sent; "
                f"{spec.output.where()} is as it was"
            )
        where = spec.output.where()
        where = f"spark-vllm: interrupted; the rows committed before it stay in {where}"
        if spec.output.mode == "resume":
            return f"{where}, and running the same command again resumes from them"
        instead = "starts afresh" if spec.output.mode == "overwrite" else "refuses the output"
        return (
            f"{where}; to resume from them, run again with --set output.mode=resume "
            f"(the same command, with output.mode {spec.output.mode}, {instead})"
        )

    job = None
    try:
        job = plan(spark, spec)
        if ctrl_c.seen:
            raise KeyboardInterrupt
        if job.result is not None and server is not None:
            with _plain_sigint():
                job.waited_s += _start(server)
        sending = True
        summary = execute(spark, spec, job)
    except SpecError as exc:
        print(f"spark-vllm: {exc}", file=sys.stderr)
        return 2
    except (JdbcError, SidecarNotReady) as exc:  # nothing was sent
        print(f"spark-vllm: {exc}", file=sys.stderr)
        return 1
    except (JobFailed, JobInterrupted) as exc:
        print(exc.summary.render())
        if ctrl_c.seen or isinstance(exc, JobInterrupted):
            print(stopped(), file=sys.stderr)
            return 130
        assert isinstance(exc, JobFailed)
        known = task_error(exc.cause)
        cause = known if known is not None else exc.cause
        reason = f"{type(cause).__name__}: {cause}"
        print(f"spark-vllm: job failed: {reason}", file=sys.stderr)
        return 2 if isinstance(known, ContextExceeded) else 1  # the spec asks too much
    except Exception:
        if not ctrl_c.seen:
            raise
        print(stopped(), file=sys.stderr)  # cancelled while planning: nothing was sent
        return 130
    except KeyboardInterrupt:
        print(stopped(), file=sys.stderr)
        return 130
    finally:
        if job is not None and job.progress is not None:
            job.progress.close()  # execute closes it; a run that never got there does not
        if not _under_spark_submit():
            spark.stop()
        if server is not None:
            _stop(server, grace_s=5 if ctrl_c.seen else 20)
    print(summary.render())
    if summary.status == BUDGET_REACHED:
        print(
            "spark-vllm: the budget is reached; what finished is committed, and running "
            "again with a larger budget (or none) sends the rest",
            file=sys.stderr,
        )
        return 3
    return 0


def _local_server(spec: JobSpec | None, args: argparse.Namespace) -> LocalServer:
    from spark_vllm.driver.local_server import LocalServer

    name = args.served_model_name if spec is None else spec.endpoint.model
    return LocalServer(
        model=args.model,
        served_model_name=name or args.model,
        log_path=Path(args.server_log),
        port=args.port,
        vllm_args=args.vllm_args,
        ready_timeout_s=args.server_timeout,
    )


def _start(server: LocalServer) -> float:
    """Start `server`; return the seconds its start took."""
    print(f"spark-vllm: starting vLLM for {server.model} (log: {server.log_path}) ...", flush=True)
    started = time.monotonic()
    server.start()
    took = time.monotonic() - started
    print(f"spark-vllm: vLLM ready at {server.base_url} after {took:.0f} s", flush=True)
    return took


def _stop(server: LocalServer, grace_s: float = 20) -> None:
    if server.proc is not None:
        print("spark-vllm: stopping vLLM", flush=True)
        server.stop(grace_s)


def run_local(spec: JobSpec, args: argparse.Namespace) -> int:
    """`local`: the job against a vLLM on loopback, started only if there is anything to
    send (a resume with every id done starts none)."""
    server = _local_server(spec, args)
    spec.endpoint.base_url = server.base_url
    return run(spec, server)


def serve(args: argparse.Namespace) -> int:
    """`serve`: a vLLM on loopback until Ctrl-C or SIGTERM."""
    server = _local_server(None, args)
    try:
        _start(server)
        print(
            f"spark-vllm: serving {server.served_model_name!r} at {server.base_url} until Ctrl-C",
            flush=True,
        )
        assert server.proc is not None
        code = server.proc.wait()
        print(f"spark-vllm: vLLM exited with code {code}", file=sys.stderr)
        return 1
    except SidecarNotReady as exc:
        print(f"spark-vllm: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        _stop(server)


def validate(spec: JobSpec, args: argparse.Namespace) -> int:
    """`validate`: the spec, then the columns it reads against the input's, where cheap."""
    from spark_vllm.storage.inputs import (
        Columns,
        bad_ids_text,
        bad_ids_without_spark,
        columns_without_spark,
    )

    if spec.structured_output is not None and spec.structured_output.json_schema is not None:
        from spark_vllm.driver.job import kind_for, refuse_answer_clash

        # The answer's fields against the output's own columns, as `run` checks them; a
        # `ddl` is Spark's parser's to read, so its fields are checked when the job runs.
        try:
            refuse_answer_clash(spec, kind_for(spec))
        except SpecError as exc:
            print(f"spark-vllm: {exc}", file=sys.stderr)
            return 2
    try:
        columns = columns_without_spark(spec)
    except SpecError as exc:  # a local input.path with nothing at it, as `run` says
        if not args.input_elsewhere:
            print(f"spark-vllm: {exc}", file=sys.stderr)
            return 2
        columns = Columns(None, f"{exc} here (--input-elsewhere)")
    if columns.problems:
        print(
            f"spark-vllm: input.path {spec.input.path!r} has lines that `run` refuses "
            f"(read from {columns.source}):\n  " + "\n  ".join(columns.problems),
            file=sys.stderr,
        )
        return 2
    if columns.names is None and args.spark:
        try:
            columns = _columns_with_spark(spec)
        except SpecError as exc:  # Spark's reader refuses the input as `run` would
            print(f"spark-vllm: {exc}", file=sys.stderr)
            return 2
    if columns.names is None:
        print(f"spark-vllm: {args.spec} is a valid job spec")
        print(
            f"spark-vllm: the input's columns were not checked: {columns.source}; "
            "`run` checks them before any request"
            + ("" if args.spark else " (--spark reads them with a local Spark session)")
        )
        return 0
    try:
        spec.check_columns(columns.names)
    except SpecError as exc:
        if columns.complete:
            print(f"spark-vllm: {exc} (read from {columns.source})", file=sys.stderr)
            return 2
        print(f"spark-vllm: {args.spec} is a valid job spec")
        print(f"spark-vllm: warning: {exc}; only {columns.source} were read")
        return 0
    bad, read = bad_ids_without_spark(spec)
    if bad:  # as `run` refuses them, without its Spark session
        print(f"spark-vllm: {bad_ids_text(spec.id_column(), bad)} (read from {read})",
              file=sys.stderr)  # fmt: skip
        return 2
    print(
        f"spark-vllm: {args.spec} is a valid job spec, and the columns it reads are in the "
        f"input (read from {columns.source})"
    )
    return 0


def _columns_with_spark(spec: JobSpec) -> Columns:
    from spark_vllm.storage.inputs import Columns, read_input

    spark = spark_session(spec)
    try:
        df = read_input(spark, spec)
        return Columns(df.columns if df is not None else None, "Spark's reader")
    finally:
        spark.stop()


def _terminate(signum: int, frame: object) -> None:
    # Unwind through the context managers so the local server is stopped.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        signal.signal(signal.SIGTERM, _terminate)
        return serve(args)
    if args.command in OPERATE_COMMANDS:
        return operate(args)
    try:
        spec = load_spec(args.spec, args.overrides)
        check_chart_conf(spec)
    except SpecError as exc:
        print(f"spark-vllm: {exc}", file=sys.stderr)
        return 2
    if args.command == "validate":
        return validate(spec, args)
    if args.command == "summary":
        return show_summaries(spec, args)
    if args.command == "plan":
        return make_plan(spec, args)
    signal.signal(signal.SIGTERM, _terminate)
    if args.command == "local":
        return run_local(spec, args)
    return run(spec)


if __name__ == "__main__":
    sys.exit(main())
