"""Write the job spec's JSON schema into the chart's values.schema.json, under properties.job.

The schema comes from the pydantic models (spark_vllm.spec.JobSpec), so `helm install` and
`helm template` refuse a job spec with an unknown key, a wrong type or a bad enum value
before anything starts, and the chart cannot drift from the code: a bundle test runs
`--check`. Rules across keys (a prompt or a batch input, one of table and query) stay with
the job's own validation (`spark-vllm validate`, `helm test`).

The chart's `job:` value differs from a local spec in two ways, made here:
- the chart fills in endpoint.base_url and endpoint.model from the sidecar's values, so
  neither is required;
- `job: {}` is the chart's default, so the spec's required keys apply only once job is not
  empty.
pydantic writes draft 2020-12 with refs to "#/$defs/..."; the chart's schema is draft-07, so
the definitions sit under properties.job.definitions and the refs point there.

    python scripts/job_schema.py           # rewrite charts/spark-vllm/values.schema.json
    python scripts/job_schema.py --check   # exit 1, with a diff, when it is out of date
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any

from spark_vllm.spec import JobSpec

ROOT = Path(__file__).resolve().parents[1]
VALUES_SCHEMA = ROOT / "charts" / "spark-vllm" / "values.schema.json"
DEFINITIONS = "#/properties/job/definitions/{model}"

# What the chart fills in from the sidecar's values when the user leaves it out (the
# template spark-vllm.jobSpec).
FILLED_BY_CHART = {"base_url", "model"}

# Every keyword a draft-07 validator acts on or shows, plus `deprecated` (an annotation).
# Anything else (a 2020-12 keyword such as prefixItems for a tuple) would be ignored by
# helm without a word: the generator refuses it instead.
DRAFT7_KEYWORDS = {
    "$ref", "additionalItems", "additionalProperties", "allOf", "anyOf", "const", "contains",
    "default", "definitions", "dependencies", "deprecated", "description", "else", "enum",
    "examples", "exclusiveMaximum", "exclusiveMinimum", "format", "if", "items", "maxItems",
    "maxLength", "maxProperties", "maximum", "minItems", "minLength", "minProperties",
    "minimum", "multipleOf", "not", "oneOf", "pattern", "patternProperties", "properties",
    "propertyNames", "required", "then", "type", "uniqueItems",
}  # fmt: skip
# Keywords whose value maps names (property, definition) to schemas.
NAMED_SCHEMAS = {"properties", "patternProperties", "definitions", "dependencies"}
# A link of the manual in a description ([text](target)): the schema keeps the text.
MARKDOWN_LINK = re.compile(r"\[([^\]]+)\]\([^)\s]+\)")
# Keywords whose value is data, not a schema (a default may well hold a key named title).
INSTANCE_VALUES = {"default", "const", "enum", "examples"}


def tidy(node: Any, where: str) -> Any:
    """The schema without pydantic's titles (the property names again), refusing keywords
    a draft-07 validator would ignore."""
    if isinstance(node, list):
        return [tidy(item, where) for item in node]
    if not isinstance(node, dict):
        return node
    unknown = set(node) - DRAFT7_KEYWORDS - {"title"}
    if unknown:
        raise SystemExit(f"job_schema.py: {where}: {sorted(unknown)} are not draft-07 keywords")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title":
            continue
        if key in NAMED_SCHEMAS and isinstance(value, dict):
            out[key] = {name: tidy(sub, f"{where}/{key}/{name}") for name, sub in value.items()}
        elif key in INSTANCE_VALUES:
            out[key] = value
        elif key == "description" and isinstance(value, str):
            out[key] = MARKDOWN_LINK.sub(r"\1", value)  # the manual's links, as their text
        else:
            out[key] = tidy(value, f"{where}/{key}")
    return out


def job_schema() -> dict[str, Any]:
    """The chart's schema for `job:`, from JobSpec."""
    spec = JobSpec.model_json_schema(ref_template=DEFINITIONS)
    definitions = spec.pop("$defs")
    endpoint = definitions["EndpointSpec"]
    endpoint_required = [k for k in endpoint.pop("required", []) if k not in FILLED_BY_CHART]
    if endpoint_required:
        endpoint["required"] = endpoint_required
    required = [k for k in spec.pop("required") if k != "endpoint"]

    # The old name is read (with a warning) by a "before" validator, which pydantic cannot
    # show in a schema.
    concurrency = definitions["ConcurrencySpec"]["properties"]
    if "max_per_executor" not in concurrency:
        limit = {k: v for k, v in concurrency["max_per_task"].items() if k != "default"}
        concurrency["max_per_executor"] = {
            **limit,
            "deprecated": True,
            "description": "deprecated: the old name of max_per_task (read with a warning)",
        }

    job = {
        "description": "the job spec, checked against the schema generated from its pydantic "
        "models (spark_vllm.spec.JobSpec) by scripts/job_schema.py (make schema); do not "
        "edit it here",
        **spec,
        # job: {} is the chart's default; a job that says anything must say what to read
        # and where to write.
        "if": {"minProperties": 1},
        "then": {"required": required},
        "definitions": definitions,
    }
    tidied: dict[str, Any] = tidy(job, "job")
    return tidied


def render() -> str:
    values = json.loads(VALUES_SCHEMA.read_text(encoding="utf-8"))
    values["properties"]["job"] = job_schema()
    return json.dumps(values, indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when the file is out of date"
    )
    args = parser.parse_args()
    fresh = render()
    committed = VALUES_SCHEMA.read_text(encoding="utf-8")
    relative = VALUES_SCHEMA.relative_to(ROOT)
    if not args.check:
        if fresh != committed:
            VALUES_SCHEMA.write_text(fresh, encoding="utf-8")
            print(f"wrote the job spec's schema into {relative}")
        return 0
    if fresh == committed:
        return 0
    diff = difflib.unified_diff(
        committed.splitlines(), fresh.splitlines(), "committed", "from the models", lineterm=""
    )
    print(
        f"{relative} differs from the job spec's models (spark_vllm.spec); run `make schema`:",
        *list(diff)[:60],
        sep="\n",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
