"""The adaptive window: reading vLLM's /metrics and the control law over them."""

import asyncio

import pytest

from spark_vllm import RowError
from spark_vllm.request.kinds import row_sampling
from spark_vllm.task.adaptive import AdaptiveWindow, EngineLoad, WindowPolicy, parse_metrics

pytestmark = pytest.mark.unit

METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 120.0
vllm:num_requests_running{engine="1",model_name="m"} 8.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 99.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.42
vllm:num_preemptions_total{engine="0",model_name="m"} 0.0
"""


def test_metrics_are_summed_over_engines_and_other_names_ignored():
    assert parse_metrics(METRICS) == EngineLoad(running=128.0, waiting=3.0, kv_usage=0.42)


def test_metrics_without_vllm_counters_are_none():
    assert parse_metrics("process_cpu_seconds_total 12.0\n") is None
    assert parse_metrics("vllm:num_requests_running 1\n") is None


def test_unlabelled_samples_and_no_kv_gauge_are_read():
    load = parse_metrics("vllm:num_requests_running 4\nvllm:num_requests_waiting 0\n")
    assert load == EngineLoad(4.0, 0.0, None)


def test_an_empty_queue_grows_the_window_by_half():
    policy = WindowPolicy(minimum=1, maximum=1024)
    assert policy.next(64, 64, EngineLoad(running=64, waiting=0, kv_usage=0.1)) == 96


def test_requests_still_in_transit_hold_the_window():
    # The task has 64 in flight but the engine has admitted only 40: the rest are on
    # their way (the server is tokenizing them), so an empty queue proves nothing yet.
    policy = WindowPolicy(minimum=1, maximum=1024)
    assert policy.next(64, 64, EngineLoad(running=40, waiting=0)) == 64


def test_a_window_the_task_does_not_fill_does_not_grow():
    # The task's input is running out: it has fewer rows in flight than its window.
    policy = WindowPolicy(minimum=1, maximum=1024)
    assert policy.next(64, 10, EngineLoad(running=10, waiting=0)) == 64


def test_a_full_kv_cache_stops_growth():
    policy = WindowPolicy(minimum=1, maximum=1024)
    assert policy.next(64, 64, EngineLoad(running=64, waiting=0, kv_usage=0.97)) == 64


def test_a_long_queue_shrinks_each_task_by_its_share_of_the_excess():
    policy = WindowPolicy(minimum=1, maximum=1024)
    # 256 running, 144 waiting (short queue: 32). Two tasks with 200 in flight each:
    # together they want 256 + 16 = 272, so each keeps 200 * 272 / 400 = 136.
    load = EngineLoad(running=256, waiting=144)
    assert policy.next(256, 200, load) == 136
    # Asked again before anything finished, the answer is the same: no runaway shrinking.
    assert policy.next(136, 200, load) == 136


def test_a_short_queue_holds_the_window():
    policy = WindowPolicy(minimum=1, maximum=1024)
    assert policy.next(130, 130, EngineLoad(running=256, waiting=4)) == 130


def test_at_saturation_an_empty_queue_grows_the_window_a_little():
    policy = WindowPolicy(minimum=1, maximum=1024)
    policy.next(130, 130, EngineLoad(running=256, waiting=4))  # learns: 256 is a full batch
    # The task holds 130 of 256: it adds its share of half a short queue (256 / 8 / 2): 8.
    assert policy.next(130, 130, EngineLoad(running=256, waiting=0)) == 130 + 8


def test_bounds_hold():
    policy = WindowPolicy(minimum=2, maximum=100)
    assert policy.next(90, 90, EngineLoad(running=90, waiting=0)) == 100
    assert policy.next(3, 3, EngineLoad(running=256, waiting=500)) == 2


def simulate(batch: int, tasks: int, steps: int, start: int) -> list[tuple[int, float, float]]:
    """Tasks with endless input against an engine that batches `batch` requests."""
    policies = [WindowPolicy(minimum=1, maximum=4096) for _ in range(tasks)]
    windows = [start] * tasks
    trace = []
    for _ in range(steps):
        total = sum(windows)  # every task keeps its window full
        load = EngineLoad(running=min(total, batch), waiting=max(0, total - batch))
        windows = [p.next(w, w, load) for p, w in zip(policies, windows, strict=True)]
        trace.append((sum(windows), load.running, load.waiting))
    return trace


@pytest.mark.parametrize(("batch", "tasks", "start"), [(256, 2, 16), (48, 4, 64), (1024, 8, 1)])
def test_tasks_together_settle_with_the_batch_full_and_the_queue_short(batch, tasks, start):
    trace = simulate(batch, tasks, steps=60, start=start)
    final_total, running, waiting = trace[-1]
    assert running == batch, trace[-5:]
    assert 0 < waiting <= max(2, batch / 8), trace[-5:]
    # and it stays there
    assert all(r == batch and w <= max(2, batch / 8) for _, r, w in trace[-20:])
    assert final_total <= batch + max(2, batch / 8) + tasks


def test_the_poller_updates_the_window_and_remembers_it_for_the_next_task():
    policy = WindowPolicy(minimum=1, maximum=64)
    window = AdaptiveWindow(key="http://test-a/metrics", policy=policy, initial=8, interval_s=0)
    polls = iter(range(3))

    async def fetch() -> str:
        # The engine runs everything the task has in flight and queues nothing.
        try:
            next(polls)
        except StopIteration:
            raise asyncio.CancelledError from None
        return f"vllm:num_requests_running {window.limit}\nvllm:num_requests_waiting 0\n"

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(window.run(fetch, lambda: window.limit))
    assert window.limit == 27  # 8 -> 12 -> 18 -> 27
    assert (window.low, window.high, window.polls) == (8, 27, 3)
    again = AdaptiveWindow(key="http://test-a/metrics", policy=policy, initial=8)
    assert again.limit == 27


def test_a_server_without_vllm_counters_leaves_the_window_fixed():
    policy = WindowPolicy(minimum=1, maximum=64)
    window = AdaptiveWindow(key="http://test-b/metrics", policy=policy, initial=8, interval_s=0)

    async def fetch() -> str:
        return "up 1\n"

    asyncio.run(window.run(fetch, lambda: 8))
    assert window.limit == 8
    assert window.stopped is not None and "vllm:num_requests_running" in window.stopped


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, {}),
        ({"max_tokens": 12, "temperature": None}, {"max_tokens": 12}),
        ([("max_tokens", 7)], {"max_tokens": 7}),
        ('{"max_tokens": 9, "top_p": 0.5}', {"max_tokens": 9, "top_p": 0.5}),
    ],
)
def test_row_sampling_reads_structs_maps_and_json(value, expected):
    assert row_sampling(value, "s") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not json", "sampling column 's' is not a JSON object"),
        ("[1, 2]", "expected an object"),
        (42, "expected an object"),
        ({"messages": []}, "may not set ['messages']"),
    ],
)
def test_bad_row_sampling_is_a_row_error_naming_the_column(value, message):
    with pytest.raises(RowError, match=r".*") as info:
        row_sampling(value, "s")
    assert message in str(info.value)


def test_a_sampling_column_key_vllm_does_not_know_is_a_row_error_naming_the_nearest():
    with pytest.raises(RowError) as info:
        row_sampling('{"temprature": 0, "topp": 0.5, "max_tokens": 9}', "s", "chat")
    assert str(info.value) == (
        "sampling column 's': temprature is not a request field vLLM knows; did you mean "
        "temperature? topp is not a request field vLLM knows; did you mean top_p?"
    )
    with pytest.raises(RowError, match="suffix is a request field of task completion, not chat"):
        row_sampling({"suffix": "."}, "s", "chat")
    assert row_sampling({"suffix": ".", "min_p": 0.1}, "s", "completion") == {
        "suffix": ".",
        "min_p": 0.1,
    }
