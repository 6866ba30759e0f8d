"""spark-vllm: offline batch LLM inference with Spark and a vLLM sidecar per executor.

The public surface, what the README and the manual (docs/) use:

- the job spec: `JobSpec`, `load_spec`, `spec_from_dict`;
- running a job: `run_job` (returns a `Summary`), `plan` and `execute` for the two
  halves, and the errors they raise (`SpecError`, `JobFailed`, `JobInterrupted`, …,
  all `SparkVllmError`s);
- column functions for your own PySpark code: `chat`, `embed`;
- reading a job's output: `read_results`;
- vLLM servers: `LocalServer` (one on this machine's loopback), `vllm_servers` (one per
  executor where there are no sidecars).

Everything else is internal and may change. Names are imported on first use, so
`import spark_vllm` stays light (the spec's checks need no Spark).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC = {
    "JobSpec": "spark_vllm.spec",
    "load_spec": "spark_vllm.spec",
    "spec_from_dict": "spark_vllm.spec",
    "run_job": "spark_vllm.driver.job",
    "plan": "spark_vllm.driver.job",
    "execute": "spark_vllm.driver.job",
    "Summary": "spark_vllm.driver.summary",
    "chat": "spark_vllm.driver.functions",
    "embed": "spark_vllm.driver.functions",
    "read_results": "spark_vllm.storage.results",
    "LocalServer": "spark_vllm.driver.local_server",
    "vllm_servers": "spark_vllm.driver.servers",
    "SparkVllmError": "spark_vllm.errors",
    "SpecError": "spark_vllm.errors",
    "RowError": "spark_vllm.errors",
    "JdbcError": "spark_vllm.errors",
    "TaskError": "spark_vllm.errors",
    "SidecarNotReady": "spark_vllm.errors",
    "SidecarDown": "spark_vllm.errors",
    "RowFailed": "spark_vllm.errors",
    "ErrorBudgetExceeded": "spark_vllm.errors",
    "JobFailed": "spark_vllm.driver.summary",
    "JobInterrupted": "spark_vllm.driver.summary",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'spark_vllm' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value
