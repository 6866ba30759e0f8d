"""The `spark-vllm` command: validate a job spec, run a job, or run it with a local vLLM.

Exit codes: 0 done; 1 the job failed (a row failed under on_error: fail, the sidecar
never became ready, Spark failed); 2 the job spec or the command line is wrong.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from spark_vllm.client import SidecarNotReady
from spark_vllm.spec import JobSpec, SpecError, load_spec

# Our own exceptions raised inside Spark tasks; their text is what the user needs.
_TASK_ERRORS = re.compile(
    r"(SidecarNotReady|SidecarDown|RowFailed|ErrorBudgetExceeded|SpecError): (.+)"
)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spark-vllm", description="Batch LLM inference with Spark and a vLLM sidecar."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_spec_args(sub.add_parser("validate", help="check a job spec and exit"))
    _add_spec_args(sub.add_parser("run", help="run a job against its endpoint (the sidecar)"))
    local = sub.add_parser(
        "local", help="start a vLLM server on loopback, run the job against it, stop it"
    )
    _add_spec_args(local)
    local.add_argument("--model", required=True, help="model directory or id for vLLM")
    local.add_argument("--port", type=int, default=None, help="server port (default: a free one)")
    local.add_argument(
        "--vllm-arg",
        dest="vllm_args",
        action="append",
        default=[],
        metavar="ARG",
        help="passed to vLLM untouched, e.g. --vllm-arg=--max-model-len=1024 (repeatable)",
    )
    local.add_argument(
        "--server-log", default="build/vllm-server.log", help="where the server's output goes"
    )
    local.add_argument(
        "--server-timeout", type=float, default=600.0, help="seconds to wait for the server"
    )
    return parser


def _under_spark_submit() -> bool:
    return "PYSPARK_GATEWAY_PORT" in os.environ


def spark_session(spec: JobSpec):  # type: ignore[no-untyped-def]
    """The job's SparkSession; master: the spec's, else spark-submit's, else local[*]."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(spec.spark.app_name)
    master = spec.spark.master or (None if _under_spark_submit() else "local[*]")
    conf: dict[str, str] = {}
    if master:
        builder = builder.master(master)
    if master and master.startswith("local"):
        # Local Python workers must run this interpreter, which has spark_vllm installed.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        conf.update(LOCAL_DEFAULTS)
    conf.update(spec.spark.conf)
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def _task_error(exc: BaseException) -> str | None:
    match = _TASK_ERRORS.search(str(exc))
    return f"{match.group(1)}: {match.group(2)}" if match else None


def run(spec: JobSpec) -> int:
    from spark_vllm.jdbc import JdbcError
    from spark_vllm.job import JobFailed, run_job

    spark = spark_session(spec)
    try:
        summary = run_job(spark, spec)
    except SpecError as exc:
        print(f"spark-vllm: {exc}", file=sys.stderr)
        return 2
    except JdbcError as exc:  # the database cannot be reached: nothing was sent
        print(f"spark-vllm: {exc}", file=sys.stderr)
        return 1
    except JobFailed as exc:
        print(exc.summary.render())
        reason = _task_error(exc.cause) or f"{type(exc.cause).__name__}: {exc.cause}"
        print(f"spark-vllm: job failed: {reason}", file=sys.stderr)
        return 1
    finally:
        if not _under_spark_submit():
            spark.stop()
    print(summary.render())
    return 0


def run_local(spec: JobSpec, args: argparse.Namespace) -> int:
    from spark_vllm.local_server import LocalServer

    server = LocalServer(
        model=args.model,
        served_model_name=spec.endpoint.model,
        log_path=Path(args.server_log),
        port=args.port,
        vllm_args=args.vllm_args,
        ready_timeout_s=args.server_timeout,
    )
    print(f"spark-vllm: starting vLLM for {args.model} (log: {args.server_log}) ...", flush=True)
    try:
        server.start()
    except SidecarNotReady as exc:
        print(f"spark-vllm: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"spark-vllm: vLLM ready at {server.base_url}", flush=True)
        spec.endpoint.base_url = server.base_url
        return run(spec)
    finally:
        print("spark-vllm: stopping vLLM", flush=True)
        server.stop()


def _terminate(signum: int, frame: object) -> None:
    # Unwind through the context managers so the local server is stopped.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = load_spec(args.spec, args.overrides)
    except SpecError as exc:
        print(f"spark-vllm: {exc}", file=sys.stderr)
        return 2
    if args.command == "validate":
        print(f"spark-vllm: {args.spec} is a valid job spec")
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    if args.command == "local":
        return run_local(spec, args)
    return run(spec)


if __name__ == "__main__":
    sys.exit(main())
