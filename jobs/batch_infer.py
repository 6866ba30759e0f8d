"""spark-submit entry point (the SparkApplication's mainApplicationFile).

Usage: spark-submit jobs/batch_infer.py JOB.yaml [--set KEY.PATH=VALUE ...]
It runs the same code as `spark-vllm run`.
"""

import sys

from spark_vllm.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
