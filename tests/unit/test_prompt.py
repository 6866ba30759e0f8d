"""Prompt rendering: rows become request fields, or a RowError naming the cause."""

import pytest

from spark_vllm.prompt import PromptBuilder, PromptError, RowError, template_variables

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
