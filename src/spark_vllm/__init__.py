"""spark-vllm: offline batch LLM inference with Spark and a vLLM sidecar per executor."""

from spark_vllm.spec import JobSpec, SpecError, load_spec

__all__ = ["JobSpec", "SpecError", "__version__", "load_spec"]
__version__ = "0.1.0"
