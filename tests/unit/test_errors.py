"""The package's errors, and a task's error found again on the driver."""

import pytest

from spark_vllm import RowFailed, SidecarDown, SidecarNotReady, SparkVllmError, SpecError, TaskError
from spark_vllm.errors import task_error

pytestmark = pytest.mark.unit


def test_every_error_is_a_spark_vllm_error_and_keeps_its_builtin_base():
    assert issubclass(SpecError, SparkVllmError) and issubclass(SpecError, ValueError)
    assert issubclass(SidecarDown, TaskError) and issubclass(SidecarDown, RuntimeError)


def test_a_task_error_is_found_by_type_in_the_text_pyspark_hands_the_driver():
    # What PySpark raises on the driver when a task fails: the worker's traceback as text,
    # wrapped in Spark's own messages.
    text = (
        "An error occurred while calling o123.save.\n"
        "Job aborted due to stage failure: Task 0 in stage 4.0 failed 4 times ...\n"
        "pyspark.errors.exceptions.base.PySparkRuntimeError: ...\n"
        "Traceback (most recent call last):\n"
        '  File "/x/runner.py", line 9, in _collect\n'
        "spark_vllm.errors.RowFailed: row id='q7' failed: HTTP 400: too long "
        "(the job spec says on_error: fail)\n"
        "\tat org.apache.spark.api.python.BasePythonRunner...\n"
    )
    found = task_error(RuntimeError(text))
    assert isinstance(found, RowFailed)
    assert str(found) == "row id='q7' failed: HTTP 400: too long (the job spec says on_error: fail)"


def test_a_task_error_raised_on_the_driver_is_itself_and_others_are_none():
    error = SidecarNotReady("not ready")
    assert task_error(error) is error
    wrapped = RuntimeError("job failed")
    wrapped.__cause__ = error
    assert task_error(wrapped) is error
    assert task_error(RuntimeError("SidecarDown: looks like one, but unqualified")) is None
