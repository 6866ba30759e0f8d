#!/usr/bin/env bash
# Spark's GPU discovery script (spark.executor.resource.gpu.discoveryScript): prints the
# GPUs this container can see as {"name": "gpu", "addresses": ["0", ...]}. Used when the
# chart's rapids.enabled gives the Spark container GPUs of its own.
set -euo pipefail
indexes=$(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' ' | paste -sd, -)
printf '{"name": "gpu", "addresses": ["%s"]}\n' "${indexes//,/\",\"}"
