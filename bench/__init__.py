"""`make bench`: offline vLLM vs. the HTTP paths vs. the spark-vllm job, on one workload.

Run it as `python -m bench --help` from the repository root; bench/README.md explains
every path and how to read the report.
"""
