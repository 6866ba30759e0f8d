"""The DataFrame API's ordering: results come back in each input batch's own order."""

import pyarrow as pa
import pytest

from spark_vllm.driver.functions import _INDEX, _PROMPT, _InOrder
from spark_vllm.request.kinds import Chat

# The columns of chat()'s struct: the chat kind's own.
RESULT_COLUMNS = tuple(f.name for f in Chat.fields)

pytestmark = pytest.mark.unit


SCHEMA = pa.schema(
    [
        (_INDEX, pa.int64()),
        ("response", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("latency_ms", pa.float64()),
        ("attempts", pa.int32()),
        ("error", pa.string()),
    ]
)


def results(indexes: list[int]) -> pa.RecordBatch:
    """Result rows for these indexes, as the runner yields them; response = index."""
    columns: dict[str, list] = {name: [None] * len(indexes) for name in RESULT_COLUMNS}
    columns[_INDEX] = indexes
    columns["response"] = [str(i) for i in indexes]
    return pa.RecordBatch.from_pydict(columns, schema=SCHEMA)


def test_batches_are_numbered_and_handed_back_in_order_once_complete():
    order = _InOrder(SCHEMA)
    fed = list(order.feed(iter([pa.array(["a", "b", "c"]), pa.array(["d", "e"])])))
    assert [b.column(_INDEX).to_pylist() for b in fed] == [[0, 1, 2], [3, 4]]
    assert fed[1].column(_PROMPT).to_pylist() == ["d", "e"]

    # Rows finish out of order, across batches: nothing is handed back until batch 0 is whole.
    assert list(order.take(results([4, 1]))) == []
    assert list(order.take(results([3, 0]))) == []
    out = list(order.take(results([2])))
    assert [a.field("response").to_pylist() for a in out] == [["0", "1", "2"], ["3", "4"]]
    assert out[0].type.names == list(RESULT_COLUMNS)
    assert sum(b.num_rows for b in order.done) == 0


def test_a_later_batch_waits_for_an_earlier_one():
    order = _InOrder(SCHEMA)
    list(order.feed(iter([pa.array(["a"]), pa.array(["b"])])))
    assert list(order.take(results([1]))) == []
    (first, second) = list(order.take(results([0])))
    assert first.field("response").to_pylist() == ["0"]
    assert second.field("response").to_pylist() == ["1"]
    assert order.emitted == 2


def test_an_empty_input_batch_is_handed_back_empty():
    order = _InOrder(SCHEMA)
    list(order.feed(iter([pa.array(["a"]), pa.array([], type=pa.string())])))
    (first, empty) = list(order.take(results([0])))
    assert first.field("response").to_pylist() == ["0"]
    assert len(empty) == 0


def test_chat_refuses_a_sampling_key_vllm_does_not_know_before_any_row():
    from spark_vllm.driver.functions import chat

    with pytest.raises(ValueError) as info:
        chat("q", model="m", sampling={"temprature": 0, "max_tokens": 8, "suffix": "."})
    assert str(info.value) == (
        "sampling['temprature'] is not a request field vLLM knows; did you mean temperature?\n"
        "sampling['suffix'] is a request field of task completion, not chat"
    )
