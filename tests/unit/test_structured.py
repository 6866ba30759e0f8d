"""Structured output: JSON schema <-> Spark types, and judging the model's answers."""

import pyarrow as pa
import pytest
from pyspark.sql import types as T

from spark_vllm.spec import SpecError, spec_from_dict
from spark_vllm.structured import (
    AnswerError,
    AnswerParser,
    SchemaError,
    check_schema,
    json_schema,
    response_format,
    spark_type,
)

pytestmark = pytest.mark.unit

REVIEW = {
    "type": "object",
    "properties": {
        "sentiment": {"enum": ["positive", "negative"]},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "score": {"type": ["number", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "ok": {"type": "boolean"},
        "who": {"type": "object", "properties": {"name": {"type": "string"}}},
    },
    "required": ["sentiment", "stars"],
}


def test_json_schema_properties_become_typed_columns():
    assert check_schema(REVIEW) == T.StructType(
        [
            T.StructField("sentiment", T.StringType()),
            T.StructField("stars", T.LongType()),
            T.StructField("score", T.DoubleType()),
            T.StructField("tags", T.ArrayType(T.StringType())),
            T.StructField("ok", T.BooleanType()),
            T.StructField("who", T.StructType([T.StructField("name", T.StringType())])),
        ]
    )


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "string"}, "top level must be an object"),
        ({"type": "object", "properties": {"a": {}}}, "schema.a: needs a 'type'"),
        ({"type": "object", "properties": {"a": {"type": "array"}}}, "schema.a: an array needs"),
        ({"type": "object", "properties": {"a": {"type": ["string", "integer"]}}}, "more than one"),
        ({"type": "object", "properties": {"a": {"type": "date"}}}, "not a valid JSON schema"),
    ],
)
def test_schemas_that_cannot_become_columns_are_refused(schema, message):
    with pytest.raises(SchemaError) as info:
        check_schema(schema)
    assert message in str(info.value)


def test_a_ddl_struct_becomes_a_strict_json_schema_with_int_ranges():
    kind = T.StructType(
        [
            T.StructField("label", T.StringType()),
            T.StructField("n", T.IntegerType()),
            T.StructField("xs", T.ArrayType(T.DoubleType())),
        ]
    )
    schema = json_schema(kind)
    assert schema == {
        "type": "object",
        "properties": {
            "label": {"type": "string"},
            "n": {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
            "xs": {"type": "array", "items": {"type": "number"}},
        },
        "required": ["label", "n", "xs"],
        "additionalProperties": False,
    }
    assert spark_type(schema)["label"].dataType == T.StringType()
    with pytest.raises(SchemaError, match="ddl.when: type date has no JSON form"):
        json_schema(T.StructType([T.StructField("when", T.DateType())]))


def test_the_request_asks_vllm_for_the_schema():
    assert response_format(REVIEW, "review") == {
        "type": "json_schema",
        "json_schema": {"name": "review", "schema": REVIEW, "strict": True},
    }


def parser() -> AnswerParser:
    fields = [pa.field("label", pa.string()), pa.field("n", pa.int32())]
    schema = json_schema(
        T.StructType([T.StructField("label", T.StringType()), T.StructField("n", T.IntegerType())])
    )
    return AnswerParser(schema, pa.struct(fields))


def test_a_good_answer_parses():
    assert parser().parse('{"label": "cat", "n": 3}') == {"label": "cat", "n": 3}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"label": "cat", "n"', "answer is not JSON"),
        ('{"label": "cat"}', "answer does not match the schema at (top): 'n' is a required"),
        ('{"label": 1, "n": 3}', "answer does not match the schema at label"),
        ('{"label": "x", "n": 99999999999}', "at n: 99999999999 is greater than the maximum"),
        (None, "no answer text"),
    ],
)
def test_a_bad_answer_is_an_answer_error_saying_why(text, message):
    with pytest.raises(AnswerError) as info:
        parser().parse(text)
    assert message in str(info.value)


def test_answer_that_fits_the_schema_but_not_the_column_type_is_refused():
    p = AnswerParser(
        {"type": "object", "properties": {"n": {"type": "integer"}}},
        pa.struct([pa.field("n", pa.int8())]),
    )
    with pytest.raises(AnswerError, match="does not fit the columns"):
        p.parse('{"n": 1000}')


def spec(structured: dict) -> dict:
    return {
        "input": {"format": "jsonl", "path": "in.jsonl"},
        "output": {"path": "out"},
        "endpoint": {"model": "m"},
        "prompt": {"template": "{{ q }}"},
        "structured_output": structured,
    }


def test_spec_takes_exactly_one_shape_and_checks_the_schema():
    assert spec_from_dict(spec({"ddl": "label STRING"})).structured_output is not None
    with pytest.raises(SpecError, match="exactly one of structured_output.json_schema and .ddl"):
        spec_from_dict(spec({}))
    with pytest.raises(SpecError, match="top level must be an object"):
        spec_from_dict(spec({"json_schema": {"type": "string"}}))
