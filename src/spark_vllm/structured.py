"""Structured output: a JSON schema sent to vLLM as guided decoding, the answer as columns.

The spec gives the answer's shape as a JSON schema (an object with properties) or as a
Spark DDL struct; each is turned into the other, so vLLM gets a JSON schema
(`response_format: {type: json_schema, ...}`) and the output gets one typed column per
top-level property. An answer that is not JSON, does not match the schema, or does not
fit the column types makes its row an error row.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pyarrow as pa
from pyspark.sql import types as T

INT_RANGES: dict[type[T.DataType], tuple[int, int]] = {
    T.ByteType: (-(2**7), 2**7 - 1),
    T.ShortType: (-(2**15), 2**15 - 1),
    T.IntegerType: (-(2**31), 2**31 - 1),
    T.LongType: (-(2**63), 2**63 - 1),
}


class SchemaError(ValueError):
    """The schema cannot become columns; the message names the property path."""


class AnswerError(ValueError):
    """The model's answer does not fit the schema."""


def _json_type(node: dict[str, Any], where: str) -> str:
    kind = node.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        if len(kinds) != 1:
            raise SchemaError(f"{where}: type {kind} has more than one non-null type")
        kind = kinds[0]
    enum = node.get("enum")
    if kind is None and isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum):
        kind = "string"
    if not isinstance(kind, str):
        raise SchemaError(
            f"{where}: needs a 'type' (string, integer, number, boolean, array or object)"
        )
    return kind


def spark_type(node: dict[str, Any], where: str = "schema") -> T.DataType:
    """The Spark type of a JSON schema node (objects become structs)."""
    if not isinstance(node, dict):
        raise SchemaError(f"{where}: expected a JSON schema object, got {node!r}")
    kind = _json_type(node, where)
    simple = {
        "string": T.StringType(),
        "integer": T.LongType(),
        "number": T.DoubleType(),
        "boolean": T.BooleanType(),
    }
    if kind in simple:
        return simple[kind]
    if kind == "array":
        if "items" not in node:
            raise SchemaError(f"{where}: an array needs 'items'")
        return T.ArrayType(spark_type(node["items"], f"{where}.items"))
    if kind == "object":
        props = node.get("properties")
        if not isinstance(props, dict) or not props:
            raise SchemaError(f"{where}: an object needs 'properties'")
        return T.StructType(
            [T.StructField(k, spark_type(v, f"{where}.{k}")) for k, v in props.items()]
        )
    raise SchemaError(f"{where}: type {kind!r} is not one of string, integer, number, ...")


def json_schema(kind: T.DataType, where: str = "ddl") -> dict[str, Any]:
    """The JSON schema of a Spark type (structs become objects with every field required)."""
    if isinstance(kind, T.StructType):
        return {
            "type": "object",
            "properties": {f.name: json_schema(f.dataType, f"{where}.{f.name}") for f in kind},
            "required": kind.fieldNames(),
            "additionalProperties": False,
        }
    if isinstance(kind, T.ArrayType):
        return {"type": "array", "items": json_schema(kind.elementType, f"{where}[]")}
    if isinstance(kind, T.StringType):
        return {"type": "string"}
    if isinstance(kind, T.BooleanType):
        return {"type": "boolean"}
    if isinstance(kind, (T.FloatType, T.DoubleType)):
        return {"type": "number"}
    for int_type, (low, high) in INT_RANGES.items():
        if isinstance(kind, int_type):
            return {"type": "integer", "minimum": low, "maximum": high}
    raise SchemaError(
        f"{where}: type {kind.simpleString()} has no JSON form here; use string, boolean, "
        "tinyint/smallint/int/bigint, float/double, array or struct"
    )


def check_schema(schema: dict[str, Any]) -> T.StructType:
    """Refuse a schema that is not valid JSON Schema or not an object of typed properties."""
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise SchemaError(f"not a valid JSON schema: {exc.message}") from None
    kind = spark_type(schema)
    if not isinstance(kind, T.StructType):
        raise SchemaError("the top level must be an object with properties (they become columns)")
    return kind


def response_format(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """The request field that makes vLLM decode within the schema."""
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": schema, "strict": True},
    }


class AnswerParser:
    """Parses one answer: JSON, valid against the schema, and fitting the Arrow columns."""

    def __init__(self, schema: dict[str, Any], arrow_type: pa.StructType) -> None:
        self.validator = jsonschema.validators.validator_for(schema)(schema)
        self.arrow_type = arrow_type

    def parse(self, text: str | None) -> dict[str, Any]:
        if text is None:
            raise AnswerError("no answer text")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AnswerError(
                f"answer is not JSON ({exc.msg} at {exc.pos}): {text[:200]!r}"
            ) from None
        error = jsonschema.exceptions.best_match(self.validator.iter_errors(value))
        if error is not None:
            path = "/".join(str(p) for p in error.absolute_path) or "(top)"
            raise AnswerError(f"answer does not match the schema at {path}: {error.message}")
        try:
            pa.array([value], type=self.arrow_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise AnswerError(f"answer does not fit the columns: {exc}") from None
        assert isinstance(value, dict)
        return value
