"""The names the chart (charts/spark-vllm) and the code that operates its releases share,
stated once: what `operate`, the trigger and the metrics proxy look for in what the chart
renders.
tests/bundle/test_chart_names.py renders the chart and holds each name to what it finds.
"""

from __future__ import annotations

CHART_NAME = "spark-vllm"
# Every object of a release carries the release name here (the chart's common labels).
INSTANCE_LABEL = "app.kubernetes.io/instance"
# What an object of a release is: "submitter" for the operator-less path's Job and its pod,
# "notebook" for the notebook; Spark's pods say it in SPARK_ROLE_LABEL instead.
COMPONENT_LABEL = "app.kubernetes.io/component"
SUBMITTER_COMPONENT = "submitter"
# Spark's own label on the pods it creates: "driver" or "executor".
SPARK_ROLE_LABEL = "spark-role"
# The containers of Spark's pods, as the chart names them in its pod templates and
# SparkApplication (Spark's own default names), and the vLLM sidecar beside the executor's.
DRIVER_CONTAINER = "spark-kubernetes-driver"
EXECUTOR_CONTAINER = "spark-kubernetes-executor"
SIDECAR_CONTAINER = "vllm"
# The sidecar's port when the values do not set sidecar.port (values.yaml's default).
SIDECAR_PORT = 8000
# The Spark Operator's SparkApplication, as the chart renders it.
APP_GROUP, APP_VERSION, APP_PLURAL = "sparkoperator.k8s.io", "v1beta2", "sparkapplications"
