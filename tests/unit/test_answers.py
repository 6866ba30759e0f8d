"""What counts as a successful answer, and the log-probabilities taken from one."""

import pytest

from spark_vllm.request.kinds import Chat, Completion, unfinished
from spark_vllm.request.prompt import PromptBuilder

KINDS = {
    "chat": Chat("m", PromptBuilder("chat", template="{{ q }}")),
    "completion": Completion("m", PromptBuilder("completion", template="{{ q }}")),
}


def answer_problem(kind, data):
    return KINDS[kind].check(data)


def token_logprobs(kind, choice):
    return KINDS[kind].token_logprobs(choice)


pytestmark = pytest.mark.unit


def chat(content="Paris.", finish="stop", **message):
    return {"choices": [{"message": {"content": content, **message}, "finish_reason": finish}]}


def test_a_finished_answer_with_text_is_a_success():
    assert answer_problem("chat", chat()) is None
    assert answer_problem("chat", chat(content="", finish="length")) is None
    assert (
        answer_problem("completion", {"choices": [{"text": "x", "finish_reason": "stop"}]}) is None
    )


@pytest.mark.parametrize("reason", ["abort", "error"])
def test_an_answer_the_server_ended_unfinished_is_a_transient_failure(reason):
    problem = answer_problem("chat", chat(content="", finish=reason))
    assert problem == (f"the server ended the answer with finish_reason {reason!r}", True)
    assert unfinished(chat(content="", finish=reason)) == problem


@pytest.mark.parametrize(
    ("kind", "data", "cause"),
    [
        ("chat", chat(content=None), "the answer has no message.content"),
        ("chat", {"choices": []}, "the answer has no choices"),
        ("chat", {"object": "error"}, "the answer has no choices"),
        ("chat", ["x"], "not a JSON object"),
        ("completion", {"choices": [{"finish_reason": "stop"}]}, "the answer has no text"),
    ],
)
def test_an_answer_without_what_its_kind_promises_is_a_lasting_failure(kind, data, cause):
    problem = answer_problem(kind, data)
    assert problem is not None and cause in problem[0] and problem[1] is False


def test_chat_and_completion_logprobs_come_out_in_one_shape():
    chat_choice = {
        "logprobs": {
            "content": [
                {
                    "token": "Par",
                    "logprob": -0.1,
                    "bytes": [80],
                    "top_logprobs": [
                        {"token": "Par", "logprob": -0.1},
                        {"token": "Lon", "logprob": -2.5},
                    ],
                }
            ]
        }
    }
    completion_choice = {
        "logprobs": {
            "tokens": ["Par"],
            "token_logprobs": [-0.1],
            "top_logprobs": [{"Par": -0.1, "Lon": -2.5}],
            "text_offset": [0],
        }
    }
    expected = [
        {
            "token": "Par",
            "logprob": -0.1,
            "top_logprobs": [{"token": "Par", "logprob": -0.1}, {"token": "Lon", "logprob": -2.5}],
        }
    ]
    assert token_logprobs("chat", chat_choice) == expected
    assert token_logprobs("completion", completion_choice) == expected
    assert token_logprobs("chat", {"logprobs": None}) is None
