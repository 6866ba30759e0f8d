"""Prompt rendering: rows become request fields, or a RowError naming the cause."""

import json

import pytest

from spark_vllm import RowError
from spark_vllm.errors import PromptError
from spark_vllm.request.prompt import PromptBuilder, template_variables

pytestmark = pytest.mark.unit


def test_template_variables_are_the_columns_it_reads():
    assert template_variables("{{ a }} and {{ b | upper }}{% for x in c %}{{ x }}{% endfor %}") == {
        "a",
        "b",
        "c",
    }


def test_template_may_test_a_null_column_without_printing_it():
    builder = PromptBuilder("completion", template="{% if hint %}{{ hint }}: {% endif %}{{ q }}")
    assert builder.build({"q": "Why?", "hint": None}) == {"prompt": "Why?"}


def test_unparseable_template_raises_prompt_error():
    with pytest.raises(PromptError, match="line 1"):
        template_variables("{% if %}")


def test_chat_row_becomes_system_and_user_messages():
    builder = PromptBuilder("chat", template="Q: {{ question }}", system="Topic {{ topic }}.")
    fields = builder.build({"question": "Why?", "topic": "science"})
    assert fields == {
        "messages": [
            {"role": "system", "content": "Topic science."},
            {"role": "user", "content": "Q: Why?"},
        ]
    }


def test_completion_row_becomes_a_prompt():
    fields = PromptBuilder("completion", template="Q: {{ q }}\nA:").build({"q": "2+2?"})
    assert fields == {"prompt": "Q: 2+2?\nA:"}


def test_messages_column_holding_a_list_is_sent_as_is():
    messages = [{"role": "user", "content": "hi", "name": None}]
    fields = PromptBuilder("chat", column="m").build({"m": messages})
    assert fields == {"messages": [{"role": "user", "content": "hi"}]}


def test_messages_column_holding_json_is_parsed():
    fields = PromptBuilder("chat", column="m").build({"m": '[{"role": "user", "content": "hi"}]'})
    assert fields["messages"][0]["content"] == "hi"


def test_plain_string_column_becomes_the_user_message():
    fields = PromptBuilder("chat", column="q", system="Be brief.").build({"q": "Why?"})
    assert fields["messages"][-1] == {"role": "user", "content": "Why?"}


@pytest.mark.parametrize(
    ("builder", "row", "cause"),
    [
        (PromptBuilder("chat", template="{{ q }}"), {"q": "   "}, "rendered prompt is empty"),
        (PromptBuilder("chat", template="{{ missing }}"), {"q": "x"}, "'missing' is undefined"),
        (PromptBuilder("chat", column="m"), {"m": None}, "column 'm' is null"),
        (PromptBuilder("chat", template="Q: {{ q }}"), {"q": None}, r"null column\(s\): \['q'\]"),
        (PromptBuilder("chat", column="m"), {"m": "[{bad json"}, "not a JSON messages list"),
        (PromptBuilder("chat", column="m"), {"m": [{"content": "x"}]}, "needs 'role'"),
        (PromptBuilder("completion", column="p"), {"p": 42}, "expected a string, got int"),
        (PromptBuilder("completion", column="p"), {"p": ""}, "column 'p' is empty"),
    ],
)
def test_bad_rows_raise_row_error_naming_the_cause(builder, row, cause):
    with pytest.raises(RowError, match=cause):
        builder.build(row)


def chat_column(value):
    return PromptBuilder("chat", column="m").build({"m": value})


def test_content_as_a_list_of_parts_is_sent_as_is():
    parts = [{"type": "text", "text": "Describe this."}]
    messages = [{"role": "user", "content": parts}]
    assert chat_column(messages) == {"messages": messages}
    assert chat_column(json.dumps(messages)) == {"messages": messages}


def test_an_assistant_turn_of_tool_calls_without_content_and_the_tool_answer_are_accepted():
    call = {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
    messages = [
        {"role": "developer", "content": "Use the tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    assert chat_column(json.dumps(messages)) == {"messages": messages}
    # As a Spark struct gives it: every field on every message, null where absent.
    structs = [
        {"role": m["role"], "content": m.get("content"), "tool_calls": m.get("tool_calls"),
         "tool_call_id": m.get("tool_call_id")}
        for m in messages
    ]  # fmt: skip
    assert chat_column(structs) == {"messages": messages}


def test_a_map_typed_message_becomes_an_object():
    # An Arrow map arrives as a list of (key, value) pairs.
    assert chat_column([[("role", "user"), ("content", "hi")]]) == {
        "messages": [{"role": "user", "content": "hi"}]
    }


@pytest.mark.parametrize(
    "text", ["[1] Why is the sky blue?", "[citation needed] explain", "{not a list}", "plain"]
)
def test_text_that_is_not_a_conversation_is_the_user_message(text):
    assert chat_column(text) == {"messages": [{"role": "user", "content": text}]}


@pytest.mark.parametrize(
    ("value", "cause"),
    [
        ('[{"role": "user", "content": "x"', "starts like a conversation but is not a JSON"),
        ([{"role": "robot", "content": "x"}], "message 0 needs 'role' .*its role is none of these"),
        ([{"role": "user"}], r"message 0 \(user\) needs 'content'"),
        ([{"role": "user", "content": 5}], "content must be a string or a list of parts"),
        ([{"role": "user", "content": [{"text": "x"}]}], "content part 0 needs 'type'"),
        ([], "expected text or a non-empty list of messages"),
        ({"role": "user"}, "expected text or a non-empty list of messages, got dict"),
    ],
)
def test_a_broken_conversation_is_a_row_error_naming_the_message(value, cause):
    with pytest.raises(RowError, match=cause):
        chat_column(value)


@pytest.mark.parametrize(
    ("source", "hint"),
    [
        ("{{ customer name }}", "{{ row['customer name'] }}, not {{ customer name }}"),
        ("{{- ticket id -}}!", "{{ row['ticket id'] }}, not {{- ticket id -}}"),
        ("{{ a and }}", None),
    ],
)
def test_a_bare_column_name_with_a_space_gets_the_row_form_as_hint(source, hint):
    with pytest.raises(PromptError) as info:
        template_variables(source)
    said = "a column name with a space is read as "
    assert (said + hint in str(info.value)) if hint else said not in str(info.value)
