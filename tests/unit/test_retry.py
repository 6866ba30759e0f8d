"""The retry policy: what is retried, how many times, and how long to wait."""

import random

import pytest

from spark_vllm.task.client import _error_text
from spark_vllm.task.retry import RetryPolicy, is_transient_status

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_overload_and_server_errors_are_transient(status):
    assert is_transient_status(status)


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422])
def test_client_errors_are_not_retried(status):
    assert not is_transient_status(status)


def test_attempts_count_the_first_try():
    policy = RetryPolicy(attempts=3)
    assert [policy.should_retry(a) for a in (1, 2, 3)] == [True, True, False]


def test_backoff_grows_exponentially_up_to_the_cap():
    policy = RetryPolicy(attempts=10, initial_s=0.5, max_s=4.0, multiplier=2.0)
    assert [policy.ceiling(a) for a in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_jitter_stays_between_half_and_full_ceiling_and_varies():
    policy = RetryPolicy(attempts=5, initial_s=1.0, max_s=8.0)
    rng = random.Random(7)
    delays = [policy.delay(3, rng) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert len({round(d, 6) for d in delays}) > 100


def test_nonsense_policy_is_refused():
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        RetryPolicy(attempts=0)


def test_vllm_error_message_is_extracted_from_its_json_body():
    body = '{"error": {"message": "maximum context length is 512 tokens", "code": 400}}'
    assert _error_text(body) == "maximum context length is 512 tokens"
    assert _error_text("plain text failure") == "plain text failure"
