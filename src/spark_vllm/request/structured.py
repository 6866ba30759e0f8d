"""Structured output: a JSON schema sent to vLLM as guided decoding, the answer as columns.

The spec gives the answer's shape as a JSON schema (an object with properties) or as a
Spark DDL struct; each is turned into the other, so vLLM gets a JSON schema
(`response_format: {type: json_schema, ...}`) and the output gets one typed column per
top-level property. An answer that is not JSON, does not match the schema, or does not
fit the column types makes its row an error row.

JSON schemas are taken as tools write them (Pydantic's `model_json_schema()` and the
like): `$ref` is resolved with `referencing` (jsonschema's own resolver), a null branch
only makes a value nullable (every column is), and `title`, `description`, `default`,
`format` and other annotations do not change the type. What has no Spark type is refused
with its path and the reason: a value of several types (a union), a value of any type, a
recursive `$ref`, an object without `properties` or a typed `additionalProperties`.
A union is refused rather than kept as a string of JSON: such a column would hold JSON
text in some rows and plain strings in others, and the whole answer is in `response`
anyway.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pyspark.sql import types as T

from spark_vllm.errors import LONE_SURROGATE, AnswerError, SchemaError

# jsonschema and referencing are imported where a schema is used: every Spark task
# imports this module, and most jobs have no structured output (they cost a task's
# Python worker about 0.15 s before its first request).
if TYPE_CHECKING:
    from referencing import Specification
    from referencing._core import Resolver

INT_RANGES: dict[type[T.DataType], tuple[int, int]] = {
    T.ByteType: (-(2**7), 2**7 - 1),
    T.ShortType: (-(2**15), 2**15 - 1),
    T.IntegerType: (-(2**31), 2**31 - 1),
    T.LongType: (-(2**63), 2**63 - 1),
}

SCALARS: dict[str, T.DataType] = {
    "string": T.StringType(),
    "integer": T.LongType(),
    "number": T.DoubleType(),
    "boolean": T.BooleanType(),
}

ANY_VALUE = (
    "needs a 'type' (string, integer, number, boolean, array or object); "
    "a schema without one accepts any JSON value, which has no Spark type"
)
ONE_TYPE = "give it one type (null aside: every column is nullable), such as a string"


def spark_type(node: Any, where: str = "schema") -> T.DataType:
    """The Spark type of a JSON schema (objects become structs), `$ref`s resolved within it."""
    if not isinstance(node, dict):
        raise SchemaError(f"{where}: expected a JSON schema object, got {node!r}")
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    spec = DRAFT202012.detect(node)
    resolver = Registry().resolver_with_root(spec.create_resource(node))
    return _Walk(spec).type_of(node, where, resolver, ())


def _is_null(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    kind = node.get("type")
    return (
        kind == "null"
        or kind == ["null"]
        or ("const" in node and node["const"] is None)
        or node.get("enum") == [None]
    )


def _value_type(value: Any, where: str) -> T.DataType:
    if isinstance(value, bool):  # before int: a bool is an int in Python
        return T.BooleanType()
    if isinstance(value, int):
        return T.LongType()
    if isinstance(value, float):
        return T.DoubleType()
    if isinstance(value, str):
        return T.StringType()
    raise SchemaError(
        f"{where}: enum/const value {value!r} is not a string, number or boolean; "
        "an object or array there has no column type"
    )


def _single(kinds: list[T.DataType], where: str, what: str) -> T.DataType:
    """The one Spark type of a value that may be any of `kinds` (integer widens to double)."""
    distinct: list[T.DataType] = []
    for kind in kinds:
        if kind not in distinct:
            distinct.append(kind)
    if len(distinct) == 1:
        return distinct[0]
    if all(isinstance(k, (T.LongType, T.DoubleType)) for k in distinct):
        return T.DoubleType()  # JSON Schema's integers are numbers
    names = " | ".join(k.simpleString() for k in distinct)
    raise SchemaError(f"{where}: {what} can be {names}; a column has one Spark type, so {ONE_TYPE}")


class _Walk:
    """One schema's nodes to Spark types.

    `expanding` holds the ids of the schema nodes on the way to the current one, so a
    `$ref` back to one of them (a recursive type) is caught instead of followed forever.
    """

    def __init__(self, spec: Specification[Any]) -> None:
        self.spec = spec

    def type_of(
        self, node: Any, where: str, resolver: Resolver[Any], expanding: tuple[int, ...]
    ) -> T.DataType:
        if node is True:
            raise SchemaError(f"{where}: {ANY_VALUE}")
        if node is False:
            raise SchemaError(f"{where}: is false (accepts no value); it has no column type")
        if not isinstance(node, dict):
            raise SchemaError(f"{where}: expected a JSON schema object, got {node!r}")
        resolver = resolver.in_subresource(self.spec.create_resource(node))
        expanding = (*expanding, id(node))
        if "$ref" in node:  # its siblings (title, description, default) are annotations
            return self._ref(node["$ref"], where, resolver, expanding)
        for key in ("$dynamicRef", "$recursiveRef"):
            if key in node:
                raise SchemaError(
                    f"{where}: {key} is not followed; it makes a recursive type, "
                    "which has no finite Spark type"
                )
        kind = node.get("type")
        if isinstance(kind, list):
            names = [k for k in kind if k != "null"]
            if not names:
                raise SchemaError(f"{where}: type {kind} is always null; it has no column type")
            found = [self._named(k, node, where, resolver, expanding) for k in names]
            return _single(found, where, f"type {kind}")
        if isinstance(kind, str):
            return self._named(kind, node, where, resolver, expanding)
        if "const" in node:
            if node["const"] is None:
                raise SchemaError(f"{where}: const null is always null; it has no column type")
            return _value_type(node["const"], where)
        if isinstance(node.get("enum"), list):
            values = [v for v in node["enum"] if v is not None]
            if not values:
                raise SchemaError(f"{where}: enum {node['enum']} is always null")
            return _single([_value_type(v, where) for v in values], where, "enum")
        # A node's own properties or items make its shape; anyOf/allOf beside them only
        # constrain it (which properties are required, say).
        if node.get("properties") or isinstance(node.get("additionalProperties"), dict):
            return self._named("object", node, where, resolver, expanding)
        if "items" in node or "prefixItems" in node:
            return self._named("array", node, where, resolver, expanding)
        for key in ("anyOf", "oneOf"):
            if isinstance(node.get(key), list):
                return self._union(key, node[key], where, resolver, expanding)
        if isinstance(node.get("allOf"), list) and node["allOf"]:
            return self._all_of(node["allOf"], where, resolver, expanding)
        raise SchemaError(f"{where}: {ANY_VALUE}")

    def _ref(
        self, ref: Any, where: str, resolver: Resolver[Any], expanding: tuple[int, ...]
    ) -> T.DataType:
        from referencing.exceptions import Unresolvable

        try:
            resolved = resolver.lookup(str(ref))
        except Unresolvable:
            raise SchemaError(
                f"{where}: $ref {ref!r} does not resolve within the schema; only references "
                "into the schema itself ($defs, definitions) are followed"
            ) from None
        if id(resolved.contents) in expanding:
            raise SchemaError(
                f"{where}: $ref {ref!r} refers back to a schema that contains it; "
                "a recursive type has no finite Spark type"
            )
        return self.type_of(resolved.contents, where, resolved.resolver, expanding)

    def _union(
        self,
        key: str,
        branches: list[Any],
        where: str,
        resolver: Resolver[Any],
        expanding: tuple[int, ...],
    ) -> T.DataType:
        kept = [(i, b) for i, b in enumerate(branches) if not _is_null(b)]
        if not kept:
            raise SchemaError(f"{where}: every branch of {key} is null; it has no column type")
        if len(kept) == 1:  # Optional[X]: X, nullable
            return self.type_of(kept[0][1], where, resolver, expanding)
        found = [self.type_of(b, f"{where}.{key}[{i}]", resolver, expanding) for i, b in kept]
        return _single(found, where, key)

    def _all_of(
        self, parts: list[Any], where: str, resolver: Resolver[Any], expanding: tuple[int, ...]
    ) -> T.DataType:
        if len(parts) == 1:  # Pydantic's wrapping of a $ref that has a description
            return self.type_of(parts[0], where, resolver, expanding)
        found = [
            self.type_of(p, f"{where}.allOf[{i}]", resolver, expanding) for i, p in enumerate(parts)
        ]
        if any(k != found[0] for k in found):
            names = " & ".join(k.simpleString() for k in found)
            raise SchemaError(
                f"{where}: allOf joins schemas of different types ({names}); "
                "merge them into one schema"
            )
        return found[0]

    def _named(
        self,
        kind: str,
        node: dict[str, Any],
        where: str,
        resolver: Resolver[Any],
        expanding: tuple[int, ...],
    ) -> T.DataType:
        if kind in SCALARS:  # `format` (date-time, uuid, ...) leaves a string a string
            return SCALARS[kind]
        if kind == "array":
            return self._array(node, where, resolver, expanding)
        if kind == "object":
            return self._object(node, where, resolver, expanding)
        if kind == "null":
            raise SchemaError(f"{where}: type 'null' is always null; it has no column type")
        raise SchemaError(
            f"{where}: type {kind!r} is not one of string, integer, number, boolean, "
            "array or object"
        )

    def _array(
        self, node: dict[str, Any], where: str, resolver: Resolver[Any], expanding: tuple[int, ...]
    ) -> T.DataType:
        items = node.get("items")
        prefix = node.get("prefixItems")
        if isinstance(items, list):  # draft 7's tuple form
            prefix, items = items, node.get("additionalItems")
        if isinstance(prefix, list) and prefix:
            found = [
                self.type_of(p, f"{where}.prefixItems[{i}]", resolver, expanding)
                for i, p in enumerate(prefix)
            ]
            if items is not None and items is not False:
                found.append(self.type_of(items, f"{where}.items", resolver, expanding))
            return T.ArrayType(_single(found, where, "a tuple's items"))
        if items is None:
            raise SchemaError(f"{where}: an array needs 'items' (the type of its elements)")
        return T.ArrayType(self.type_of(items, f"{where}.items", resolver, expanding))

    def _object(
        self, node: dict[str, Any], where: str, resolver: Resolver[Any], expanding: tuple[int, ...]
    ) -> T.DataType:
        props = node.get("properties")
        if isinstance(props, dict) and props:
            fields = [
                T.StructField(k, self.type_of(v, f"{where}.{k}", resolver, expanding))
                for k, v in props.items()
            ]
            lower: dict[str, str] = {}
            for name in props:
                if name.lower() in lower:
                    raise SchemaError(
                        f"{where}: properties {lower[name.lower()]!r} and {name!r} differ only "
                        "in case; Spark column names are case-insensitive, rename one"
                    )
                lower[name.lower()] = name
            return T.StructType(fields)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:  # dict[str, X]: a map
            return T.MapType(
                T.StringType(),
                self.type_of(extra, f"{where}.additionalProperties", resolver, expanding),
            )
        raise SchemaError(
            f"{where}: an object needs 'properties' (struct fields) or an 'additionalProperties' "
            "schema (a map of string to that type); without either its keys and values have "
            "no Spark type"
        )


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
    import jsonschema

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
        import jsonschema
        from referencing import Registry
        from referencing.exceptions import Unresolvable

        # An empty registry: a $ref outside the schema is never fetched from an executor.
        self.validator = jsonschema.validators.validator_for(schema)(schema, registry=Registry())
        self.best_match = jsonschema.exceptions.best_match
        self.unresolvable = Unresolvable
        self.arrow_type = arrow_type

    def parse(self, text: str | None) -> dict[str, Any]:
        if text is None:
            raise AnswerError("no answer text")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            # Not quoted: a model may echo its prompt, a row's values (`response` holds it).
            raise AnswerError(
                f"answer is not JSON ({exc.msg} at {exc.pos}); the response column holds it"
            ) from None
        try:
            error = self.best_match(self.validator.iter_errors(value))
        except self.unresolvable as exc:
            raise AnswerError(f"the schema has a $ref that does not resolve: {exc}") from None
        if error is not None:
            path = "/".join(str(p) for p in error.absolute_path) or "(top)"
            raise AnswerError(f"answer does not match the schema at {path}: {error.message}")
        try:
            pa.array([value], type=self.arrow_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise AnswerError(f"answer does not fit the columns: {exc}") from None
        except UnicodeEncodeError:  # JSON's "\ud83d" escape, alone
            raise AnswerError(
                f"answer holds {LONE_SURROGATE}; the response column holds it"
            ) from None
        assert isinstance(value, dict)
        return value
