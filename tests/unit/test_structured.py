"""Structured output: JSON schema <-> Spark types, and judging the model's answers."""

import datetime
import decimal
import enum
from typing import Any, Literal

import pyarrow as pa
import pytest
from pydantic import BaseModel, Field
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from spark_vllm.request.structured import (
    AnswerError,
    AnswerParser,
    SchemaError,
    check_schema,
    json_schema,
    response_format,
    spark_type,
)
from spark_vllm.spec import SpecError, spec_from_dict

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
        (
            {"type": "object", "properties": {"a": {"type": ["string", "integer"]}}},
            "schema.a: type ['string', 'integer'] can be string | bigint",
        ),
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


def test_an_answer_with_a_lone_surrogate_escape_is_an_answer_error():
    with pytest.raises(AnswerError, match="answer holds a lone UTF-16 surrogate"):
        parser().parse('{"label": "cat \\ud83d", "n": 3}')


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


# JSON Schema as tools write it: Pydantic v2's model_json_schema() and hand-written variants.


class Color(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Address(BaseModel):
    city: str
    zip: str | None = None


class Person(BaseModel):
    name: str = Field(description="full name")
    nick: str | None = None
    home: Address = Field(description="where they live")
    work: Address | None = None
    past: list[Address] = []
    color: Color = Color.RED
    level: Level
    kind: Literal["a", "b"]
    one: Literal["x"] = "x"
    born: datetime.datetime
    scores: dict[str, int] = {}
    ratio: int | float = 0


ADDRESS = T.StructType(
    [T.StructField("city", T.StringType()), T.StructField("zip", T.StringType())]
)
PERSON = T.StructType(
    [
        T.StructField("name", T.StringType()),
        T.StructField("nick", T.StringType()),
        T.StructField("home", ADDRESS),
        T.StructField("work", ADDRESS),
        T.StructField("past", T.ArrayType(ADDRESS)),
        T.StructField("color", T.StringType()),
        T.StructField("level", T.LongType()),
        T.StructField("kind", T.StringType()),
        T.StructField("one", T.StringType()),
        T.StructField("born", T.StringType()),
        T.StructField("scores", T.MapType(T.StringType(), T.LongType())),
        T.StructField("ratio", T.DoubleType()),
    ]
)


def test_a_pydantic_schema_becomes_typed_columns_with_refs_resolved():
    # optional -> nullable, nested model ($ref with a description beside it) -> struct,
    # list of models -> array of structs, str enum and Literal -> string, IntEnum ->
    # bigint, date-time -> string, dict[str, int] -> map, int | float -> double.
    assert check_schema(Person.model_json_schema()) == PERSON


def answers(schema: dict[str, Any], kind: T.StructType, texts: list[str]) -> list[dict[str, Any]]:
    """Parse answers as the runner does and read them back through the Arrow columns."""
    arrow = to_arrow_schema(kind)
    p = AnswerParser(schema, pa.struct(list(arrow)))
    return pa.RecordBatch.from_pylist([p.parse(t) for t in texts], schema=arrow).to_pylist()


def test_pydantic_answers_land_in_the_columns_and_optional_fields_left_out_are_null():
    schema = Person.model_json_schema()
    full = (
        '{"name": "Ada", "nick": "A", "home": {"city": "Paris", "zip": "75001"},'
        ' "work": {"city": "Lyon", "zip": null}, "past": [{"city": "Nice"}], "color": "blue",'
        ' "level": 2, "kind": "b", "one": "x", "born": "1815-12-10T00:00:00Z",'
        ' "scores": {"math": 10}, "ratio": 3}'
    )
    least = '{"name": "Bo", "home": {"city": "Rome"}, "level": 1, "kind": "a", "born": "x"}'
    nulls = (
        '{"name": "Cy", "nick": null, "home": {"city": "Oslo"}, "work": null,'
        ' "level": 1, "kind": "a", "born": "x", "ratio": 0.5}'
    )
    got = answers(schema, PERSON, [full, least, nulls])
    assert got[0] == {
        "name": "Ada",
        "nick": "A",
        "home": {"city": "Paris", "zip": "75001"},
        "work": {"city": "Lyon", "zip": None},
        "past": [{"city": "Nice", "zip": None}],
        "color": "blue",
        "level": 2,
        "kind": "b",
        "one": "x",
        "born": "1815-12-10T00:00:00Z",
        "scores": [("math", 10)],
        "ratio": 3.0,
    }
    assert got[1]["nick"] is None and got[1]["work"] is None and got[1]["past"] is None
    assert got[1]["home"] == {"city": "Rome", "zip": None}
    assert got[2]["nick"] is None and got[2]["work"] is None and got[2]["ratio"] == 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"name": "A", "home": {"city": "R"}, "level": 3, "kind": "a", "born": "x"}', "at level"),
        ('{"name": "A", "home": {}, "level": 1, "kind": "a", "born": "x"}', "at home"),
        ('{"name": "A", "home": {"city": "R"}, "level": 1, "kind": "c", "born": "x"}', "at kind"),
        (
            '{"name": "A", "home": {"city": "R"}, "level": 1, "kind": "a", "born": "x",'
            ' "past": [{"city": 1}]}',
            "at past/0/city",
        ),
    ],
)
def test_an_answer_breaking_a_referenced_definition_is_an_answer_error(text, message):
    p = AnswerParser(Person.model_json_schema(), pa.struct(list(to_arrow_schema(PERSON))))
    with pytest.raises(AnswerError, match=f"does not match the schema {message}"):
        p.parse(text)


def obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


def column(node: dict[str, Any], **top: Any) -> T.DataType:
    """The Spark type of property `a` of an object around `node`."""
    return check_schema({**obj(a=node), **top})["a"].dataType


STRING_OR_NULL = [{"type": "string"}, {"type": "null"}]


@pytest.mark.parametrize(
    ("node", "kind"),
    [
        ({"anyOf": STRING_OR_NULL}, T.StringType()),
        ({"oneOf": STRING_OR_NULL}, T.StringType()),
        ({"anyOf": [{"type": "null"}, {"type": "integer"}]}, T.LongType()),
        ({"type": ["string", "null"]}, T.StringType()),
        ({"type": ["null", "array"], "items": {"type": "boolean"}}, T.ArrayType(T.BooleanType())),
        ({"type": ["integer", "number"]}, T.DoubleType()),
        ({"anyOf": [{"type": "integer"}, {"type": "number"}, {"type": "null"}]}, T.DoubleType()),
        ({"const": "yes"}, T.StringType()),
        ({"const": 7}, T.LongType()),
        ({"const": True}, T.BooleanType()),
        ({"enum": [1, 2, 3]}, T.LongType()),
        ({"enum": [1, 2.5]}, T.DoubleType()),
        ({"enum": [True, False]}, T.BooleanType()),
        ({"enum": ["a", "b", None]}, T.StringType()),
        ({"type": "integer", "enum": [1, 2], "title": "Level"}, T.LongType()),
        ({"type": "string", "format": "date-time"}, T.StringType()),
        ({"type": "string", "format": "uuid", "default": "x", "examples": ["y"]}, T.StringType()),
        (
            {"type": "object", "additionalProperties": {"type": "number"}},
            T.MapType(T.StringType(), T.DoubleType()),
        ),
        (
            {"additionalProperties": obj(n={"type": "integer"})},
            T.MapType(T.StringType(), T.StructType([T.StructField("n", T.LongType())])),
        ),
        (
            {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "integer"}]},
            T.ArrayType(T.LongType()),
        ),
        ({"items": {"type": "string"}, "uniqueItems": True}, T.ArrayType(T.StringType())),
        (
            {"properties": {"b": {"type": "string"}}},
            T.StructType([T.StructField("b", T.StringType())]),
        ),
        (
            {
                "type": "object",
                "properties": {"b": {"type": "string"}},
                "additionalProperties": {"type": "integer"},
            },
            T.StructType([T.StructField("b", T.StringType())]),
        ),
    ],
)
def test_json_schema_keywords_map_to_one_spark_type(node, kind):
    assert column(node) == kind


def test_anyof_beside_properties_only_constrains_the_object():
    node = {
        "properties": {"b": {"type": "string"}, "c": {"type": "integer"}},
        "anyOf": [{"required": ["b"]}, {"required": ["c"]}],
    }
    assert column(node) == T.StructType(
        [T.StructField("b", T.StringType()), T.StructField("c", T.LongType())]
    )


def test_a_draft_7_tuple_of_one_type_is_an_array():
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#"}
    node = {"type": "array", "items": [{"type": "string"}], "additionalItems": {"type": "string"}}
    assert column(node, **draft7) == T.ArrayType(T.StringType())


DEFS = {"Pt": obj(x={"type": "number"}, y={"type": "number"}), "Tag": {"enum": ["p", "q"]}}
POINT = T.StructType([T.StructField("x", T.DoubleType()), T.StructField("y", T.DoubleType())])


@pytest.mark.parametrize(
    ("node", "top", "kind"),
    [
        ({"$ref": "#/$defs/Pt"}, {"$defs": DEFS}, POINT),
        (
            {"$ref": "#/$defs/Tag", "description": "d", "default": "p"},
            {"$defs": DEFS},
            T.StringType(),
        ),
        # Pydantic before 2.? wrapped a $ref that had a description in a one-item allOf.
        ({"allOf": [{"$ref": "#/$defs/Pt"}], "description": "where"}, {"$defs": DEFS}, POINT),
        ({"anyOf": [{"$ref": "#/$defs/Pt"}, {"type": "null"}]}, {"$defs": DEFS}, POINT),
        ({"type": "array", "items": {"$ref": "#/$defs/Pt"}}, {"$defs": DEFS}, T.ArrayType(POINT)),
        (
            {"$ref": "#/definitions/Pt"},
            {"definitions": DEFS, "$schema": "http://json-schema.org/draft-07/schema#"},
            POINT,
        ),
        ({"$ref": "#/definitions/Pt"}, {"definitions": DEFS}, POINT),  # no $schema: 2020-12
        ({"$ref": "#/$defs/Alias"}, {"$defs": {**DEFS, "Alias": {"$ref": "#/$defs/Pt"}}}, POINT),
        # A $ref by $id, relative to the schema's own $id.
        (
            {"$ref": "tag.json"},
            {
                "$id": "https://example.com/s.json",
                "$defs": {"t": {"$id": "tag.json", "type": "string"}},
            },
            T.StringType(),
        ),
        ({"$ref": "#/properties/b"}, {"properties": {"b": {"type": "boolean"}}}, T.BooleanType()),
    ],
)
def test_refs_into_the_schema_are_resolved(node, top, kind):
    schema = {**top, "type": "object", "properties": {"a": node, **top.get("properties", {})}}
    assert check_schema(schema)["a"].dataType == kind


def test_a_schema_whose_top_level_is_a_ref_becomes_columns():
    schema = {"$defs": DEFS, "$ref": "#/$defs/Pt"}
    assert check_schema(schema) == POINT
    assert answers(schema, POINT, ['{"x": 1, "y": 2.5}']) == [{"x": 1.0, "y": 2.5}]


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Node(BaseModel):
    value: int
    children: list["Node"] = []


class Loose(BaseModel):
    anything: Any


class Blob(BaseModel):
    blob: dict[str, Any]


class Pair(BaseModel):
    pair: tuple[int, str]


class Money(BaseModel):
    money: decimal.Decimal


class Either(BaseModel):
    either: int | str


class Pet(BaseModel):
    pet: Cat | Dog = Field(discriminator="kind")


class Bare(BaseModel):
    things: list  # type: ignore[type-arg]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (Either, "schema.either: anyOf can be bigint | string; a column has one Spark type"),
        (
            Pet,
            "schema.pet: oneOf can be struct<kind:string,lives:bigint> | "
            "struct<kind:string,good:boolean>",
        ),
        (Money, "schema.money: anyOf can be double | string"),
        (
            Node,
            "schema.children.items: $ref '#/$defs/Node' refers back to a schema that contains it; "
            "a recursive type has no finite Spark type",
        ),
        (Loose, "schema.anything: needs a 'type'"),
        (Blob, "schema.blob: an object needs 'properties' (struct fields) or an 'additionalProp"),
        (Pair, "schema.pair: a tuple's items can be bigint | string"),
        (Bare, "schema.things.items: needs a 'type'"),
    ],
)
def test_pydantic_fields_with_no_spark_type_are_refused_naming_the_path_and_why(model, message):
    with pytest.raises(SchemaError) as info:
        check_schema(model.model_json_schema())
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (obj(a={"$ref": "https://example.com/other.json"}), "schema.a: $ref 'https://example.com/"),
        (obj(a={"$ref": "#/$defs/Missing"}), "schema.a: $ref '#/$defs/Missing' does not resolve"),
        ({**obj(a={"$ref": "#"})}, "schema.a: $ref '#' refers back to a schema that contains it"),
        (
            {
                "$defs": {"A": obj(b={"$ref": "#/$defs/B"}), "B": obj(a={"$ref": "#/$defs/A"})},
                **obj(x={"$ref": "#/$defs/A"}),
            },
            "schema.x.b.a: $ref '#/$defs/A' refers back",
        ),
        (obj(a={"type": "null"}), "schema.a: type 'null' is always null"),
        (obj(a={"type": ["null"]}), "schema.a: type ['null'] is always null"),
        (obj(a={"const": None}), "schema.a: const null is always null"),
        (obj(a={"enum": [None]}), "schema.a: enum [None] is always null"),
        (obj(a={"anyOf": [{"type": "null"}]}), "schema.a: every branch of anyOf is null"),
        (obj(a={"enum": ["a", 1]}), "schema.a: enum can be string | bigint"),
        (obj(a={"enum": [{"k": 1}]}), "schema.a: enum/const value {'k': 1} is not a string"),
        (
            obj(a={"allOf": [obj(b={"type": "string"}), obj(c={"type": "string"})]}),
            "schema.a: allOf joins schemas of different types",
        ),
        (obj(a={"type": "object"}), "schema.a: an object needs 'properties'"),
        (obj(a={"type": "object", "properties": {}}), "schema.a: an object needs 'properties'"),
        (obj(a={"type": "object", "additionalProperties": True}), "an object needs 'properties'"),
        (obj(a={"anyOf": [{"type": "string"}, {}]}), "schema.a.anyOf[1]: needs a 'type'"),
        (obj(a=True), "schema.a: needs a 'type'"),
        (obj(a=False), "schema.a: is false (accepts no value)"),
        (obj(a={"$dynamicRef": "#node"}), "schema.a: $dynamicRef is not followed"),
        (obj(a={"description": "no type"}), "schema.a: needs a 'type'"),
        (
            obj(Name={"type": "string"}, name={"type": "string"}),
            "schema: properties 'Name' and 'name' differ only in case",
        ),
        (
            obj(a={"type": "object", "additionalProperties": {"type": "object"}}),
            "schema.a.additionalProperties: an object needs",
        ),
        ({"$defs": DEFS, "$ref": "#/$defs/Tag"}, "top level must be an object"),
    ],
)
def test_what_has_no_spark_type_is_refused_naming_the_path_and_why(schema, message):
    with pytest.raises(SchemaError) as info:
        check_schema(schema)
    assert message in str(info.value)


def test_an_optional_nested_model_is_a_nullable_struct_column_and_null_when_absent():
    class Inner(BaseModel):
        n: int

    class Outer(BaseModel):
        inner: Inner | None = None
        items: list[Inner] | None = None

    schema = Outer.model_json_schema()
    inner = T.StructType([T.StructField("n", T.LongType())])
    kind = check_schema(schema)
    assert kind == T.StructType(
        [T.StructField("inner", inner), T.StructField("items", T.ArrayType(inner))]
    )
    assert all(f.nullable for f in kind)
    assert answers(schema, kind, ["{}", '{"inner": null, "items": [{"n": 1}]}']) == [
        {"inner": None, "items": None},
        {"inner": None, "items": [{"n": 1}]},
    ]


def test_the_spec_accepts_a_pydantic_schema_and_names_the_path_it_refuses():
    doc = spec_from_dict(spec({"json_schema": Person.model_json_schema()}))
    assert doc.structured_output is not None
    with pytest.raises(SpecError, match=r"structured_output.json_schema: schema.children.items"):
        spec_from_dict(spec({"json_schema": Node.model_json_schema()}))
