"""`spark-vllm plan`'s arithmetic: what a row's request is counted against, the bound on
its output, and the report (the counts themselves are checked against a real server in
tests/integration/test_before_spending.py)."""

from __future__ import annotations

import pytest

from spark_vllm.driver.preflight import (
    Counting,
    Fit,
    PlanReport,
    counting,
    fit_row,
)
from spark_vllm.errors import RowError
from spark_vllm.request.kinds import (
    COMPLETION_DEFAULT_MAX_TOKENS,
    BatchLine,
    Chat,
    Completion,
    Embedding,
)
from spark_vllm.request.prompt import PromptBuilder

pytestmark = pytest.mark.unit


def test_a_chat_row_is_counted_as_its_messages_under_the_chat_template():
    kind = Chat("m", PromptBuilder("chat", "{{ q }}", "Be brief.", None), {"max_tokens": 32})
    found = counting(kind, kind.request({"id": "a", "q": "Why?"}))
    (request,) = found.requests
    assert request["model"] == "m"
    assert request["messages"][-1] == {"role": "user", "content": "Why?"}
    assert found.max_tokens == 32 and found.generating


def test_a_completion_row_without_max_tokens_is_bounded_by_vllms_default():
    kind = Completion("m", PromptBuilder("completion", "{{ q }}", None, None), {})
    found = counting(kind, kind.request({"id": "a", "q": "Say"}))
    assert found.requests == [{"model": "m", "prompt": "Say"}]
    assert found.max_tokens is None
    fit = fit_row(found, [10], 512, truncate=False)
    assert fit == Fit(10, COMPLETION_DEFAULT_MAX_TOKENS, False, False)


def test_embedding_rows_and_batch_lines_count_their_inputs():
    kind = Embedding("m", PromptBuilder("embedding", None, None, "text"), batch_size=8)
    found = counting(kind, kind.request({"id": "a", "text": "hello"}))
    assert (found.requests, found.generating) == ([{"model": "m", "prompt": "hello"}], False)
    line = BatchLine("m")
    body = {"input": [[1, 2, 3], "two words"]}
    found = counting(line, ("/v1/embeddings", body))
    assert found.requests == [{"model": "m", "prompt": "two words"}]
    assert found.given == [3]  # token ids count as they are
    found = counting(line, ("/v1/chat/completions", {"messages": [], "max_tokens": 7}))
    assert "messages" in found.requests[0] and found.max_tokens == 7
    with pytest.raises(RowError, match="neither text nor token ids"):
        counting(line, ("/v1/completions", {"prompt": {"x": 1}}))


@pytest.mark.parametrize(
    ("found", "counts", "fit"),
    [
        # vLLM 0.32 answers a prompt that leaves less room than max_tokens with what is
        # left, and refuses one that fills the context (an answer needs a token)
        (Counting([], max_tokens=16), [496], Fit(496, 16, False, False)),
        (Counting([], max_tokens=16), [500], Fit(500, 12, False, True)),
        (Counting([], max_tokens=16), [511], Fit(511, 1, False, True)),
        (Counting([], max_tokens=16), [512], Fit(512, 0, True, False)),
        (Counting([]), [500], Fit(500, 12, False, False)),  # no max_tokens: what is left
        # embeddings: each input on its own against the context
        (Counting([], generating=False), [512], Fit(512, 0, False, False)),
        (Counting([], generating=False), [513], Fit(513, 0, True, False)),
        (Counting([], generating=False), [300, 300], Fit(600, 0, False, False)),
        # a request's own truncate_prompt_tokens (-1: the context) keeps it in
        (Counting([], generating=False, truncate_to=-1), [900], Fit(512, 0, False, False)),
        (Counting([], max_tokens=8, truncate_to=100), [900], Fit(100, 8, False, False)),
    ],
)
def test_a_row_against_the_context_as_vllm_treats_it(found, counts, fit):
    assert fit_row(found, counts, 512, truncate=False) == fit


def test_truncation_keeps_room_for_the_whole_answer():
    fit = fit_row(Counting([], max_tokens=16), [2000], 512, truncate=True)
    assert fit == Fit(496, 16, False, False)
    short = fit_row(Counting([], max_tokens=16), [100], 512, truncate=True)
    assert short == Fit(100, 16, False, False)  # a prompt that fits is left as it is


def test_the_report_estimates_time_and_gpu_hours_from_the_specs_throughput():
    report = PlanReport(
        spec="chat.yaml", tokenizer="t", context=2048, rows=10, done=2, to_send=8,
        output_bound=36_000, output_tokens_per_s=1000, replicas=2, gpus_per_replica=4,
        over_context=1, over_context_ids=["q7"],
    )  # fmt: skip
    assert report.wall_s_at_most == 18.0
    assert report.gpu_hours_at_most == pytest.approx(18 * 8 / 3600)
    text = report.render()
    assert "  over context  1 rows (they would fail)\n    ids q7" in text
    assert "REFUSED" not in text
    report.max_tokens = 4096
    assert "REFUSED       max_tokens 4,096 is more than the context" in report.render()
    assert "time          at most 0h01m at 1,000 output tokens/s per replica x 2" in text
    data = report.to_dict()
    assert (data["wall_s_at_most"], data["over_context_ids"]) == (18.0, ["q7"])
    bare = PlanReport(spec="s", tokenizer="t", context=1, rows=0, done=0, to_send=0)
    assert bare.to_dict()["gpu_hours_at_most"] is None
    assert "give estimate.output_tokens_per_s" in bare.render()


def test_a_plan_after_every_id_was_answered_counts_a_fresh_run_and_says_so():
    """`make plan` after `make run` said only "nothing to send"; the manual shows a table."""
    report = PlanReport(
        spec="chat.yaml", tokenizer="t", context=2048, rows=300, done=300, to_send=300,
        prompt_tokens=25_320, fresh=True,
    )  # fmt: skip
    text = report.render()
    assert "  done          300 (succeeded in earlier runs)\n  to send       0 on resume" in text
    assert "counts below are of a fresh run (--set output.mode=overwrite), which sends 300" in text
    assert "prompt tokens 25,320 in all" in text
    assert report.to_dict()["fresh"] is True
