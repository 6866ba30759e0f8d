"""Names the job spec checks requests and columns against, without the request kinds'
code (which needs Spark): the request fields a job refuses to send, and the result
columns a kind may write (kept input columns may not take those names)."""

from __future__ import annotations

import difflib
from typing import Any

from spark_vllm.request.vllm_fields import REQUEST_FIELDS

# Request fields that would change the answer's shape beyond what the job stores (one
# text per row, and with logprobs its tokens' log-probabilities), and why. They are
# refused in `sampling` and in a row's sampling column; a batch file keeps whole bodies.
_TOOLS = "the answer would be tool calls, which the job does not store"
UNSTORED_FIELDS = {
    "stream": "the job reads whole answers, not server-sent events",
    "stream_options": "it goes with stream, which the job does not use",
    "n": "the job stores one answer per row",
    "prompt_logprobs": "the job does not store the prompt's log-probabilities",
    "return_token_ids": "the job does not store token ids",
    "tools": _TOOLS,
    "tool_choice": _TOOLS,
    "parallel_tool_calls": _TOOLS,
    "functions": _TOOLS,
    "function_call": _TOOLS,
}
# The values of those fields that change nothing.
_HARMLESS = {"stream": (False, None), "n": (1, None)}
# Every name a request kind may give a result column (see kinds): kept input columns may
# not take one. tests/unit/test_layers.py holds it equal to the kinds' own fields.
RESULT_COLUMNS = frozenset(
    {
        "attempts",
        "completion_tokens",
        "embedding",
        "error",
        "finish_reason",
        "latency_ms",
        "line",
        "logprobs",
        "prompt_tokens",
        "response",
        "truncated",
    }
)


def unstored_field(key: str, value: Any) -> str | None:
    """Why a request field cannot be sent with a job's rows, or None when it can."""
    reason = UNSTORED_FIELDS.get(key)
    if reason is None or value in _HARMLESS.get(key, (None,)):
        return None
    return (
        f"{reason}; remove it, or run the requests as an OpenAI batch file "
        "(input.format: openai-batch), whose output keeps each answer's whole body"
    )


def unknown_field(key: str, task: str) -> str | None:
    """Why `key` is no field of vLLM's request for generating task `task` (vLLM would
    ignore it: a misspelled `temprature` samples at its default), as `<key> is not …`
    words that follow the key, or None when it is a field."""
    if key in REQUEST_FIELDS[task]:
        return None
    for other, names in REQUEST_FIELDS.items():
        if key in names:
            return f"is a request field of task {other}, not {task}"
    close = difflib.get_close_matches(key, sorted(REQUEST_FIELDS[task]), n=1)
    return "is not a request field vLLM knows" + (f"; did you mean {close[0]}?" if close else "")
