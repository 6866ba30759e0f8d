"""Spark's task slots as spark-vllm counts them: how many tasks share one executor's
sidecar, each task's share of its window, and how many partitions a job is split into.
Driver side (they read the SparkSession's configuration)."""

from __future__ import annotations

import math
import os
import re

from pyspark.sql import SparkSession


def local_cores(master: str) -> int:
    """Task slots of a local master: local → 1, local[N] → N, local[*] → every core."""
    match = re.match(r"local\[(\*|\d+)", master)
    if not match:
        return 1
    if match.group(1) == "*":
        return os.cpu_count() or 1
    return int(match.group(1))


def task_slots(spark: SparkSession) -> int:
    """How many tasks run at once on one executor (they share its sidecar)."""
    sc = spark.sparkContext
    master = sc.master or ""
    if master.startswith("local"):
        return local_cores(master)
    conf = sc.getConf()
    cores = int(conf.get("spark.executor.cores", "1"))
    task_cpus = int(conf.get("spark.task.cpus", "1"))
    return max(1, cores // task_cpus)


def per_task_window(per_executor: int, slots: int) -> int:
    return max(1, math.ceil(per_executor / slots))


# Partitions per task slot on a cluster when the spec does not say: two waves of tasks,
# so executors that finish early (or join late) take work from the rest.
PARTITIONS_PER_SLOT = 2


def default_partitions(spark: SparkSession) -> int:
    """Tasks to split the input into when `partitions` is unset.

    Local mode: one per task slot (they share one sidecar, and the adaptive window lets
    the tasks still running take up a finished one's share). A cluster: two per task
    slot of the most executors the job may get (dynamic allocation's maxExecutors, else
    spark.executor.instances), so added executors find work waiting.
    """
    sc = spark.sparkContext
    slots = task_slots(spark)
    if (sc.master or "").startswith("local"):
        return slots
    conf = sc.getConf()
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        executors = int(conf.get("spark.dynamicAllocation.maxExecutors", "0") or 0)
    else:
        executors = int(conf.get("spark.executor.instances", "0") or 0)
    return max(sc.defaultParallelism, executors * slots) * PARTITIONS_PER_SLOT
