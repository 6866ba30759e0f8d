"""Structured output against the real vLLM: guided decoding, typed columns, bad answers."""

from __future__ import annotations

import enum
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel, Field

from spark_vllm import SpecError, run_job, spec_from_dict
from tests.conftest import sample_rows
from tests.integration.jobs import assert_one_row_per_input, read_rows, spec_doc

pytestmark = pytest.mark.integration

SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "urgent": {"type": "boolean"},
    },
    "required": ["sentiment", "urgent"],
    "additionalProperties": False,
}


def column_types(out: Path) -> dict[str, str]:
    """The Arrow type of each column of the job's first output file."""
    (part, *_) = out.glob("run=*/part-*")
    return {f.name: str(f.type) for f in pq.read_schema(part)}


def test_answers_are_decoded_to_the_schema_and_land_as_typed_columns(spark, vllm_server, tmp_path):
    rows = sample_rows(16)
    doc = spec_doc(
        tmp_path,
        vllm_server,
        rows,
        sampling={"max_tokens": 48, "temperature": 0.0},
        structured_output={"json_schema": SCHEMA},
    )
    run_job(spark, spec_from_dict(doc))
    out = read_rows(tmp_path / "out")
    assert_one_row_per_input(out, rows)
    types = column_types(tmp_path / "out")
    assert types["sentiment"] == "string" and types["urgent"] == "bool"
    good = [r for r in out if r["error"] is None]
    # Even a random-weight model answers within the grammar; the rows that ran out of
    # tokens mid-answer are error rows, and none is anything else.
    assert good, [r["error"] for r in out]
    for r in good:
        assert json.loads(r["response"]) == {"sentiment": r["sentiment"], "urgent": r["urgent"]}
        assert r["sentiment"] in ("positive", "negative", "neutral")
    for r in out:
        if r["error"] is not None:
            assert r["error"].startswith("bad answer: answer is not JSON"), r["error"]
            assert r["finish_reason"] == "length"
            assert r["sentiment"] is None and r["urgent"] is None


def test_an_answer_cut_short_is_an_error_row_and_a_ddl_gives_the_columns(
    spark, vllm_server, tmp_path
):
    rows = sample_rows(4)
    doc = spec_doc(
        tmp_path,
        vllm_server,
        rows,
        sampling={"max_tokens": 2, "temperature": 0.0},
        structured_output={"ddl": "label STRING, n INT"},
    )
    summary = run_job(spark, spec_from_dict(doc))
    assert summary.failed == 4
    out = read_rows(tmp_path / "out")
    assert_one_row_per_input(out, rows)
    assert all(r["error"].startswith("bad answer: answer is not JSON") for r in out)
    assert all(r["label"] is None and r["n"] is None for r in out)
    types = column_types(tmp_path / "out")
    assert types["label"] == "string" and types["n"] == "int32"


class Mood(enum.StrEnum):
    CALM = "calm"
    ANGRY = "angry"


class Place(BaseModel):
    city: str = Field(max_length=12)


class Ticket(BaseModel):
    mood: Mood
    note: str | None = Field(default=None, max_length=12)
    place: Place = Field(description="where it happened")
    seen: list[Place] = Field(max_length=2)


def test_a_pydantic_schema_runs_and_lands_as_typed_nested_columns(spark, vllm_server, tmp_path):
    # optional field, nested model ($ref beside a description), list of models, enum ($ref)
    rows = sample_rows(8)
    doc = spec_doc(
        tmp_path,
        vllm_server,
        rows,
        sampling={"max_tokens": 160, "temperature": 0.0},
        structured_output={"json_schema": Ticket.model_json_schema()},
    )
    run_job(spark, spec_from_dict(doc))
    out = read_rows(tmp_path / "out")
    assert_one_row_per_input(out, rows)
    types = column_types(tmp_path / "out")
    assert types["mood"] == "string" and types["note"] == "string"
    assert types["place"] == "struct<city: string>"
    assert types["seen"] == "list<element: struct<city: string>>"
    good = [r for r in out if r["error"] is None]
    assert good, [r["error"] for r in out]
    for r in good:
        # The columns hold what Pydantic reads from the raw answer: an optional field the
        # model left out is null, nested models are structs, the enum its value.
        answer = Ticket.model_validate_json(r["response"]).model_dump(mode="json")
        assert {k: r[k] for k in answer} == answer
    for r in out:
        if r["error"] is not None:
            assert r["error"].startswith("bad answer: answer is not JSON"), r["error"]
            assert r["finish_reason"] == "length"


def test_an_answer_field_named_like_an_output_column_in_another_case_is_refused(
    spark, vllm_server, tmp_path
):
    # Spark matches column names regardless of case: `Error` would shadow `error`.
    schema = {"type": "object", "properties": {"Error": {"type": "string"}}}
    doc = spec_doc(tmp_path, vllm_server, sample_rows(2), structured_output={"json_schema": schema})
    with pytest.raises(
        SpecError, match="field\\(s\\) .Error. would clash with the output.s own columns"
    ):
        run_job(spark, spec_from_dict(doc))
