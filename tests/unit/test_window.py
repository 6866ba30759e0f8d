"""Sizing the per-task window from the per-executor budget."""

import pytest

from spark_vllm.driver.slots import per_task_window
from spark_vllm.driver.summary import Summary

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("per_executor", "slots", "window"),
    [(256, 1, 256), (256, 4, 64), (256, 3, 86), (1, 4, 1), (10, 16, 1)],
)
def test_executor_budget_is_shared_by_the_tasks_running_on_it(per_executor, slots, window):
    assert per_task_window(per_executor, slots) == window


def test_summary_reports_rates_and_the_most_common_errors():
    summary = Summary(
        rows=10,
        succeeded=8,
        failed=2,
        prompt_tokens=100,
        completion_tokens=400,
        wall_s=4.0,
        output="out (parquet)",
        errors=[("HTTP 400: too long", 2)],
    )
    text = summary.render()
    assert "rows/s        2.50" in text
    assert "out tokens/s  100.0" in text
    assert "2 x HTTP 400: too long" in text


def test_row_seed_is_a_stable_non_negative_int_per_id():
    from spark_vllm.request.kinds import row_seed

    assert row_seed("q0001") == row_seed("q0001")
    assert row_seed("q0001") != row_seed("q0002")
    assert row_seed(12345) == row_seed("12345")
    assert all(0 <= row_seed(i) < 2**31 for i in range(1000))
