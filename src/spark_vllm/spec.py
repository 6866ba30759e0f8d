"""The job spec: one YAML document that drives a batch inference job.

The same file runs locally and on Kubernetes (the chart mounts it from a ConfigMap).
Everything is validated here, before Spark starts; every error names the key path,
the bad value and what was expected.
"""

from __future__ import annotations

import difflib
import re
import shlex
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticUndefined

from spark_vllm.errors import PromptError, SchemaError, SpecError
from spark_vllm.request.fields import (
    RESULT_COLUMNS,
    UNSTORED_FIELDS,
    unknown_field,
    unstored_field,
)
from spark_vllm.request.prompt import template_variables

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"

Task = Literal["chat", "completion", "embedding"]


def default(model: type[BaseModel], name: str) -> Any:
    """The default of `model`'s field `name`: the one statement of a task's defaults, which
    the task's records (task.runner, task.retry) and the column functions take from here.
    KeyError for a field the model lacks; ValueError for one without a plain default."""
    value = model.model_fields[name].default
    if value is PydanticUndefined:
        raise ValueError(f"{model.__name__}.{name} has no plain default")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class JdbcConnection(_Strict):
    url: str = Field(description="the JDBC URL, e.g. `jdbc:postgresql://db:5432/shop`")
    user_env: str | None = Field(
        default=None,
        description=(
            "the name of the environment variable holding the user name (never the name itself)"
        ),
    )
    password_env: str | None = Field(
        default=None,
        description=(
            "the name of the environment variable holding the password (never the password)"
        ),
    )
    driver: str | None = Field(
        default=None,
        description=(
            "the driver class; by default from the URL: `org.postgresql.Driver` for "
            "`jdbc:postgresql:`, `com.microsoft.sqlserver.jdbc.SQLServerDriver` for "
            "`jdbc:sqlserver:`"
        ),
    )
    properties: dict[str, str] = Field(
        default_factory=dict, description="more connection properties (e.g. `sslmode`)"
    )

    @field_validator("url")
    @classmethod
    def _jdbc_url(cls, value: str) -> str:
        if not value.startswith("jdbc:"):
            raise ValueError("expected a JDBC URL such as jdbc:postgresql://db:5432/shop")
        return value

    @field_validator("properties")
    @classmethod
    def _no_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        if {"user", "password"} & set(value):
            raise ValueError(
                "user and password come from environment variables: use user_env and "
                "password_env (on Kubernetes, filled from a Secret)"
            )
        return value


class JdbcInput(JdbcConnection):
    table: str | None = Field(
        default=None, description="the table (or view) to read; or set `query`"
    )
    query: str | None = Field(default=None, description="instead of `table`: a `SELECT` to read")
    partition_column: str | None = Field(
        default=None,
        description=(
            "a parallel read, split on this numeric, date or timestamp column: set it"
            " with `lower_bound`, `upper_bound` and `num_partitions` (all four or "
            "none; rows outside the bounds are still read, by the first and last "
            "reads)"
        ),
    )
    lower_bound: int | str | None = Field(default=None, description="`partition_column`'s low end")
    upper_bound: int | str | None = Field(default=None, description="`partition_column`'s high end")
    num_partitions: int | None = Field(
        default=None, ge=1, description="how many reads run in parallel"
    )
    fetch_size: int | None = Field(
        default=None, ge=1, description="rows per round trip (unset: the driver's default)"
    )

    @model_validator(mode="after")
    def _source(self) -> JdbcInput:
        if (self.table is None) == (self.query is None):
            raise ValueError("set exactly one of input.jdbc.table and input.jdbc.query")
        parts = {
            "partition_column": self.partition_column,
            "lower_bound": self.lower_bound,
            "upper_bound": self.upper_bound,
            "num_partitions": self.num_partitions,
        }
        given = [k for k, v in parts.items() if v is not None]
        if given and len(given) != len(parts):
            missing = [k for k in parts if k not in given]
            raise ValueError(
                f"a partitioned read needs partition_column, lower_bound, upper_bound and "
                f"num_partitions together; {missing} missing"
            )
        return self


class JdbcOutput(JdbcConnection):
    table: str = Field(
        description=(
            "the table to write; created (shaped like the output rows, plus `run`) when missing"
        )
    )
    write_mode: Literal["upsert", "append", "overwrite"] = Field(
        default="upsert",
        description=(
            "`upsert`: merge by id, a rerun replaces an id's row; `append`: add rows;"
            " `overwrite`: replace the table's rows with this run's (nothing is "
            "skipped), only in a table a job made (one with the `run` column): any "
            "other table is refused before the run starts"
        ),
    )
    batch_size: int = Field(default=1000, ge=1, description="rows per insert batch")


class DeltaOutput(_Strict):
    write_mode: Literal["append", "upsert"] = Field(
        default="append",
        description=(
            "`append`: each run's commit adds its rows, so the table holds every attempt "
            "(the `run` column tells them apart; resume takes the latest per id); "
            "`upsert`: each run's commit is a `MERGE` on the id, so the table holds one "
            "row per id, the latest run's (a rerun replaces a failed row)"
        ),
    )


class InputSpec(_Strict):
    format: Literal[
        "parquet", "jsonl", "csv", "table", "openai-batch", "jdbc", "binaryFile", "delta"
    ] = Field(
        description=(
            "`parquet`, `jsonl`, `csv`, `table` (a catalog table), `jdbc` (a SQL "
            "database, see [SQL databases](#sql-databases-over-jdbc)), `delta` (the "
            'Delta Lake table at `input.path`; `input.options: {versionAsOf: "3"}` '
            "reads an older version, see [Delta Lake tables](#delta-lake-tables)), "
            "`binaryFile` "
            "(Spark's whole-file source: a row per file, columns `path`, "
            "`modificationTime`, `length`, `content`; `input.options` such as "
            '`pathGlobFilter: "*.jpg"` and `recursiveFileLookup: "true"` go to it; '
            "use `id_column: path`) or `openai-batch` (request lines, see [OpenAI "
            "batch files](#openai-batch-files)). `csv` is read as RFC 4180 writes it:"
            ' a header row, quoted fields that may hold line breaks, `""` for a quote'
            " inside one, and every value as the text it is (`007` stays `007`; "
            '`input.options: {inferSchema: "true"}` infers types); Spark then reads '
            "each CSV file in one task. `jsonl` keeps a conversation column "
            "(`prompt.column` of a chat job) as its JSON text, so each row's messages"
            " keep their own shape; a line that Spark's parser cannot read as a JSON "
            "object (cut off, not JSON, an array) is refused before any request, "
            "named as `file:line` with its text (up to 20, then a count), since it "
            "has no id — `input.options: {mode: DROPMALFORMED}` leaves such lines out"
            " instead, on purpose"
        )
    )
    path: str | None = Field(
        default=None,
        description=(
            "file, directory or glob to read (all formats but `table` and `jdbc`); "
            "any Spark/Hadoop URL (`s3a://…`, `hdfs://…`). A path that does not "
            "exist, or a glob that matches nothing, is refused (exit 2); an empty "
            "input — a 0-byte CSV or JSON Lines file, a folder without data files, a CSV of only a "
            "header, a table without rows — is a job of no rows (exit 0). Partition "
            "folders (`store=0042/`) are text columns (`'0042'`), see [Data as the lake "
            "holds it](#data-as-the-lake-holds-it)"
        ),
    )
    table: str | None = Field(default=None, description="table name, for `format: table`")
    id_column: str | None = Field(
        default=None,
        description=(
            "column holding a unique, non-null id per row. Duplicate or null ids are "
            "refused before any request, with examples. When unset, the id is derived"
            " (see [Derived ids](#derived-ids)). The name of a result column or `run` "
            "(in any case) is refused: the output has its own"
        ),
    )
    options: dict[str, str] = Field(
        default_factory=dict,
        description=(
            'passed to Spark\'s reader, each value a string (`"true"`, not `true`); for '
            "`csv` they override the defaults above (`header`, `multiLine`, `quote`, "
            "`escape`, `inferSchema`)"
        ),
    )
    jdbc: JdbcInput | None = Field(
        default=None,
        description=(
            "format `jdbc`: what to read, and how to connect (see [SQL "
            "databases](#sql-databases-over-jdbc))"
        ),
    )

    @field_validator("id_column")
    @classmethod
    def _id_not_a_result_name(cls, value: str | None) -> str | None:
        if value is not None:
            refuse_result_names([value], "unset input.id_column to derive ids")
        return value

    def where(self) -> str:
        """The input, for messages and Spark's UI."""
        if self.jdbc is not None:
            table = self.jdbc.table
            return f"table {table} (jdbc)" if table else "a query (jdbc)"
        if self.format == "table":
            return f"table {self.table}"
        return f"{self.path} ({self.format})"

    @model_validator(mode="after")
    def _source(self) -> InputSpec:
        if self.format == "jdbc" and self.jdbc is None:
            raise ValueError("format 'jdbc' needs input.jdbc (url, and table or query)")
        if self.format != "jdbc" and self.jdbc is not None:
            raise ValueError(f"input.jdbc goes with format 'jdbc', not {self.format!r}")
        if self.format == "jdbc":
            if self.path or self.table:
                raise ValueError("format 'jdbc' reads input.jdbc; remove input.path/input.table")
        elif self.format == "table":
            if not self.table:
                raise ValueError("format 'table' needs input.table (a catalog table name)")
            if self.path:
                raise ValueError("format 'table' reads input.table; remove input.path")
        else:
            if not self.path:
                raise ValueError(f"format '{self.format}' needs input.path")
            if self.table:
                raise ValueError(f"format '{self.format}' reads input.path; remove input.table")
        if self.format == "openai-batch" and self.id_column not in (None, "custom_id"):
            raise ValueError(
                f"format 'openai-batch' identifies lines by custom_id; "
                f"remove input.id_column ({self.id_column!r})"
            )
        return self


def refuse_result_names(names: list[str], fix: str) -> None:
    """ValueError naming those of `names` an output column of the job's own would shadow.

    Spark matches column names regardless of case, and every output has the run's id as
    a column `run` (its folder's name, or a column of the table)."""
    taken = {name.lower() for name in RESULT_COLUMNS | {"run"}}
    clash = [name for name in names if name.lower() in taken]
    if clash:
        raise ValueError(
            f"{', '.join(map(repr, clash))} would clash with the result column(s) the job "
            "writes itself (names match regardless of case; `run` is the run's id); "
            f"rename the input column or {fix}"
        )


class OutputSpec(_Strict):
    format: Literal["parquet", "jsonl", "openai-batch", "jdbc", "delta"] = Field(
        default="parquet",
        description=(
            '`parquet` or `jsonl` (JSON Lines, every key on every row, `"error": '
            "null` included); `delta` (a Delta Lake table at `output.path`, one commit "
            "per run, see [Delta Lake tables](#delta-lake-tables)); `jdbc` (a SQL "
            "table); `openai-batch`, the default and the only choice for that input"
        ),
    )
    path: str | None = Field(
        default=None,
        description=("where the result goes (every format but `jdbc`); required for them"),
    )
    jdbc: JdbcOutput | None = Field(
        default=None,
        description=(
            "format `jdbc`: where to write, and how to connect (the connection keys "
            "as for `input.jdbc`)"
        ),
    )
    delta: DeltaOutput | None = Field(
        default=None,
        description="format `delta`: how each run's commit writes the table",
    )
    keep_columns: list[str] = Field(
        default_factory=list, description="input columns copied into the output"
    )
    mode: Literal["resume", "overwrite", "error"] = Field(
        default="resume",
        description=(
            "`resume`: ids whose latest row succeeded are skipped, the rest (failed "
            "or never reached) are run; `overwrite`: delete the path when the run "
            "starts sending (a run stopped before that, while it plans or its vLLM "
            "starts, leaves the output as it was), and only a path that is absent, "
            "empty or holds the `_SPARK_VLLM_OUTPUT` marker every run leaves: any "
            "other path is refused before anything starts; `error`: refuse to run "
            "when the path exists. Format `delta`: `overwrite` replaces the table's "
            "rows in the run's own commit (earlier versions stay readable), so until "
            "then the table is as it was. Format `jdbc`: `resume` or `error` (the "
            "table); rows are replaced with `output.jdbc.write_mode: overwrite`"
        ),
    )
    on_change: Literal["refuse", "resume"] = Field(
        default="refuse",
        description=(
            "what resume does when earlier answers at the output were made with other"
            " settings (task, model, prompt, sampling, structured output, embedding "
            "options; see [What resume reuses](#what-resume-reuses)): `refuse` to "
            "start, naming each changed key with its old and new value; or `resume`: "
            "count them as done anyway (this run then adopts them, and later runs "
            "with its settings count them too)"
        ),
    )

    @field_validator("keep_columns")
    @classmethod
    def _no_result_names(cls, value: list[str]) -> list[str]:
        refuse_result_names(value, "drop it from keep_columns")
        return value

    @model_validator(mode="after")
    def _target(self) -> OutputSpec:
        if self.format == "jdbc":
            if self.jdbc is None:
                raise ValueError("format 'jdbc' needs output.jdbc (url, table)")
            if self.path is not None:
                raise ValueError("format 'jdbc' writes output.jdbc.table; remove output.path")
            if self.mode == "overwrite":
                raise ValueError(
                    "format 'jdbc' replaces rows with output.jdbc.write_mode: overwrite; "
                    "remove output.mode"
                )
        else:
            if self.jdbc is not None:
                raise ValueError(f"output.jdbc goes with format 'jdbc', not {self.format!r}")
            if self.delta is not None and self.format != "delta":
                raise ValueError(f"output.delta goes with format 'delta', not {self.format!r}")
            if self.path is None:
                raise ValueError(f"format {self.format!r} needs output.path")
        return self

    def where(self) -> str:
        """The output, for messages and the summary."""
        if self.jdbc is not None:
            return f"table {self.jdbc.table} (jdbc)"
        return f"{self.path} ({self.format})"

    @model_validator(mode="after")
    def _batch_lines(self) -> OutputSpec:
        if self.format == "openai-batch" and self.keep_columns:
            raise ValueError(
                "format 'openai-batch' writes the batch API's own line shape; "
                "remove output.keep_columns"
            )
        return self


class EndpointSpec(_Strict):
    base_url: str = Field(
        default=DEFAULT_BASE_URL, description="the OpenAI-compatible server (the sidecar)"
    )
    model: str = Field(description=("the name vLLM serves the model under (`--served-model-name`)"))
    api_key_env: str | None = Field(
        default=None,
        description=("name of an environment variable holding the API key (never the key itself)"),
    )

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL such as " + DEFAULT_BASE_URL)
        return value.rstrip("/")


# OpenAI's limit for one image in a request; a row's larger image is an error row.
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
# Names vLLM serves models and LoRA adapters under, as the job spec may give them.
_SERVED_NAME = r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$"


class ContentPart(_Strict):
    """One part of the user message, in order: a text (a jinja2 template) or the image(s)
    of a column."""

    text: str | None = Field(default=None, description="jinja2 template over the row's columns")
    image: str | None = Field(
        default=None,
        min_length=1,
        description="column holding an image, or a list of them: bytes (binary; Spark's "
        "binaryFile `content`), a path the executor reads (local, file://, s3://, s3a://, "
        "gs://, hdfs://; only under prompt.image_prefixes), an http(s) URL vLLM fetches, "
        "or a data: URL",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ContentPart:
        if (self.text is None) == (self.image is None):
            raise ValueError("a content part is {text: TEMPLATE} or {image: COLUMN} (one key)")
        if self.text is not None:
            try:
                template_variables(self.text)
            except PromptError as exc:
                raise ValueError(f"text does not parse: {exc}") from None
        return self


class PromptSpec(_Strict):
    template: str | None = Field(
        default=None,
        description=(
            "jinja2 template over the row's columns, giving the user message (chat), "
            "the prompt (completion) or the text to embed (embedding)"
        ),
    )
    system: str | None = Field(
        default=None, description="system message (chat only), also a template"
    )
    column: str | None = Field(
        default=None,
        description=(
            "instead of a template: a column holding a prompt string (the user "
            "message; the text, for completion and embedding) or, for chat, a "
            "conversation: a list of messages (array of structs, or maps) or a JSON "
            "string of one (it starts with `[{`). Every message shape of the "
            "chat-completions API is sent as it is: roles `system`, `developer`, "
            "`user`, `assistant`, `tool` (and `function`); `content` a string, a list"
            " of parts (`text`, `image_url`, …), or absent on an assistant turn with "
            "`tool_calls`; `tool_call_id`, `name` and the rest untouched; null fields"
            " are left out. Any other string is plain text, a user message"
        ),
    )
    content: list[ContentPart] | None = Field(
        default=None,
        min_length=1,
        description=(
            "chat: the user message as parts, in this order: `{text: TEMPLATE}` or "
            "`{image: COLUMN}`. An image column holds, per row, one image or a list "
            "of them: bytes (a binary column; `binaryFile`'s `content`), a path the "
            "task reads (local, `file://`, `s3://`/`s3a://` with the AWS credential "
            "chain, `gs://`, `hdfs://` where libhdfs is installed), an `http(s)://` "
            "URL that vLLM fetches, or a `data:image/…` URL. See [Images in the "
            "prompt](command.md#images-in-the-prompt)"
        ),
    )
    max_image_bytes: int = Field(
        default=DEFAULT_MAX_IMAGE_BYTES,
        ge=1,
        description=(
            "a row's image above this size (20 MiB by default) is an error row naming"
            " both sizes (bytes and paths; vLLM applies its own limits to URLs it "
            "fetches)"
        ),
    )
    image_prefixes: list[str] = Field(
        default_factory=list,
        description=(
            "folders a row's image path may be read under (`s3a://bucket/images/`, "
            "`/data/images/`); none by default: a path in a row is an error row, and "
            "images come as bytes, `http(s)` or `data:` URLs"
        ),
    )

    @model_validator(mode="after")
    def _one_source(self) -> PromptSpec:
        given = [k for k in ("template", "column", "content") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of prompt.template, prompt.column and prompt.content"
                + (f" (got {', '.join(given)})" if given else "")
            )
        for name in ("template", "system"):
            source = getattr(self, name)
            if source is not None:
                try:
                    template_variables(source)
                except PromptError as exc:
                    raise ValueError(f"prompt.{name} does not parse: {exc}") from None
        return self

    def image_columns(self) -> list[str]:
        """Columns whose images the user message carries, in order."""
        return [p.image for p in self.content or () if p.image is not None]

    def columns(self) -> set[str]:
        """Input columns the prompt reads."""
        names: set[str] = set()
        texts = [self.template, self.system, *(p.text for p in self.content or ())]
        for source in texts:
            if source is not None:
                names |= template_variables(source)
        if self.column is not None:
            names.add(self.column)
        names.update(self.image_columns())
        return names


class LoraSpec(_Strict):
    adapter: str | None = Field(
        default=None, pattern=_SERVED_NAME, description="the adapter that answers every row"
    )
    column: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "a column naming each row's adapter (its served name; null: the base "
            "model, `endpoint.model`)"
        ),
    )
    modules: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "adapters the job loads on first use when its sidecar does not serve "
            "them: `name: path` (a path the vLLM server reads); needs the server's "
            "runtime loading (`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, the chart's "
            "`sidecar.vllm.lora.runtimeLoading`)"
        ),
    )

    @model_validator(mode="after")
    def _one_source(self) -> LoraSpec:
        if self.adapter is not None and self.column is not None:
            raise ValueError(
                f"lora.adapter ({self.adapter!r}) and lora.column ({self.column!r}) are both "
                "set: give one (adapter: every row; column: per row)"
            )
        if self.adapter is None and self.column is None:
            raise ValueError("give lora.adapter (every row) or lora.column (per row), one of them")
        for name, path in self.modules.items():
            if not re.match(_SERVED_NAME, name):
                raise ValueError(f"lora.modules: {name!r} is not an adapter name ({_SERVED_NAME})")
            if not path.strip():
                raise ValueError(f"lora.modules.{name}: the path is empty")
        return self


class SamplingSpec(BaseModel):
    """Sampling parameters; other fields of vLLM's request go to it untouched (e.g.
    ignore_eos); JobSpec refuses a key vLLM's request for the task does not have."""

    model_config = ConfigDict(extra="allow")

    max_tokens: int | None = Field(
        default=256,
        ge=1,
        description=(
            "the most tokens an answer may have; null: none is sent, and vLLM's default "
            "applies (chat: what the context leaves; completion: 16)"
        ),
    )
    temperature: float | None = Field(
        default=None, ge=0, description="sent with every request; vLLM's default when unset"
    )
    top_p: float | None = Field(
        default=None, gt=0, le=1, description="sent with every request; vLLM's default when unset"
    )
    stop: str | list[str] | None = Field(
        default=None,
        description=(
            "a string, or a list of them, that ends a generation; sent with every request"
        ),
    )
    seed: int | Literal["auto"] | None = Field(
        default=None,
        description=(
            "an integer for every row, or `auto`: a per-row seed derived from the id "
            "(first 4 bytes of SHA-256 of the id), so a rerun samples the same "
            "answers"
        ),
    )

    def request_fields(self) -> dict[str, Any]:
        """Fields sent with every request; a `seed: auto` is set per row by the runner."""
        fields = self.model_dump(exclude_none=True)
        if fields.get("seed") == "auto":
            del fields["seed"]
        return fields

    def wants_logprobs(self) -> bool:
        """Whether the answers carry log-probabilities (chat: logprobs true; completion:
        logprobs a number of alternatives, 0 for the chosen tokens only)."""
        value = self.model_dump().get("logprobs")
        return value is not None and value is not False


class StructuredSpec(_Strict):
    json_schema: dict[str, Any] | None = Field(
        default=None,
        description=(
            "a JSON schema for the answer, as written by hand or by Pydantic's "
            "`model_json_schema()`: an object whose top-level properties become "
            "typed, nullable output columns — string (also a string `enum`/`const`, "
            "any `format`), integer → bigint, number (or integer-or-number) → double,"
            " boolean, array → array, object → struct, an object with only an "
            "`additionalProperties` schema → `map<string, …>`; `$ref` into "
            "`$defs`/`definitions` is resolved, a `null` branch (`Optional`) just "
            "makes the value nullable, and `title`, `description`, `default` are "
            "ignored. What has no Spark type is refused, naming the property path and"
            " why: a union of types that are not all numbers (not kept as JSON text: "
            "`response` holds the whole answer), a value with no type (`Any`), an "
            "object with neither `properties` nor a typed `additionalProperties`, a "
            "recursive `$ref`. vLLM decodes within it (`response_format: {type: "
            "json_schema}`); an answer that is not JSON or does not match makes the "
            "row an error row (`bad answer: …`)"
        ),
    )
    ddl: str | None = Field(
        default=None,
        description=(
            "instead of `json_schema`: a Spark DDL struct such as `label STRING, "
            "stars INT, tags ARRAY<STRING>`; every field is required in the answer, "
            "and integer ranges follow the column types"
        ),
    )
    name: str = Field(default="answer", description="the schema's name in the request")

    @model_validator(mode="after")
    def _one_shape(self) -> StructuredSpec:
        if (self.json_schema is None) == (self.ddl is None):
            raise ValueError("set exactly one of structured_output.json_schema and .ddl")
        if self.json_schema is not None:
            # Loaded here, not with the module: the spec's other checks need no Spark
            # (`spark-vllm validate`, the trigger), and structured's Spark types cost ~1 s.
            from spark_vllm.request.structured import check_schema

            try:
                check_schema(self.json_schema)
            except SchemaError as exc:
                raise ValueError(f"structured_output.json_schema: {exc}") from None
        return self


class EmbeddingSpec(_Strict):
    batch_size: int = Field(
        default=32,
        ge=1,
        le=2048,
        description=(
            "task `embedding`: rows per `/v1/embeddings` request. Requests in flight "
            "(`concurrency`) count rows. When vLLM refuses a request whole (one input"
            " too long), its rows are sent one by one, so only the bad row fails"
        ),
    )
    dimensions: int | None = Field(
        default=None,
        ge=1,
        description=("sent with every embedding request: a shorter vector (Matryoshka models)"),
    )
    truncate_prompt_tokens: int | None = Field(
        default=None,
        ge=1,
        description=(
            "sent with every embedding request: cut inputs to this many tokens "
            "instead of failing over-long rows"
        ),
    )

    def request_fields(self) -> dict[str, Any]:
        """Fields sent with every /v1/embeddings request besides model and input."""
        # base64 float32 vectors: several times cheaper to read than JSON numbers.
        fields: dict[str, Any] = {"encoding_format": "base64"}
        fields.update(self.model_dump(exclude_none=True, exclude={"batch_size"}))
        return fields


class ConcurrencySpec(_Strict):
    mode: Literal["adaptive", "fixed"] = Field(
        default="adaptive",
        description=(
            "`adaptive`: each task reads the sidecar's `/metrics` and steers its "
            "requests in flight so vLLM's batch stays full and its queue short (see "
            "[How a task works](how-a-task-works.md#how-a-task-works)); `fixed`: "
            "`per_executor` requests in flight, split across the tasks"
        ),
    )
    per_executor: int = Field(
        default=256,
        ge=1,
        description=(
            "requests in flight per executor; each task gets `ceil(per_executor / "
            "tasks running at once on the executor)`. Adaptive: where each task "
            "starts"
        ),
    )
    max_per_task: int = Field(
        default=1024,
        ge=1,
        description=(
            "adaptive: the most requests one task may keep in flight (its old name "
            "`max_per_executor` still works, with a warning)"
        ),
    )
    metrics_interval_s: float = Field(
        default=0.5,
        gt=0,
        description=("adaptive: how often a task reads the sidecar's `/metrics`, seconds"),
    )
    order: Literal["longest_first", "input"] = Field(
        default="longest_first",
        description=(
            "`longest_first`: with a per-row `max_tokens` (from `sampling_column`), "
            "each partition sends its longest generations first and its shortest "
            "last; `input`: rows as read"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, data: Any) -> Any:
        """`max_per_executor`, this key's first name, is read with a warning: the limit
        always applied to each task, not to an executor."""
        if isinstance(data, dict) and "max_per_executor" in data:
            if "max_per_task" in data:
                raise ValueError(
                    "set concurrency.max_per_task only; max_per_executor is its old name"
                )
            warnings.warn(
                "concurrency.max_per_executor is deprecated: it is the most requests one "
                "task keeps in flight; call it concurrency.max_per_task",
                FutureWarning,
                stacklevel=2,
            )
            data = {**data, "max_per_task": data["max_per_executor"]}
            del data["max_per_executor"]
        return data

    @model_validator(mode="after")
    def _bounds(self) -> ConcurrencySpec:
        if self.max_per_task < self.per_executor:
            raise ValueError(
                f"max_per_task ({self.max_per_task}) is below per_executor "
                f"({self.per_executor}); raise it or lower per_executor"
            )
        return self


class RetrySpec(_Strict):
    attempts: int = Field(default=5, ge=1, description="tries per row, the first included")
    backoff_initial_s: float = Field(
        default=0.5,
        gt=0,
        description=(
            "exponential backoff between tries, with jitter: the wait after try *n* "
            "is uniform in [c/2, c], c = min(`backoff_max_s`, `backoff_initial_s` * "
            "`backoff_multiplier`^(n-1)); seconds"
        ),
    )
    backoff_max_s: float = Field(
        default=30.0, gt=0, description="the longest wait between tries, seconds"
    )
    backoff_multiplier: float = Field(
        default=2.0, ge=1, description="how much the wait grows from one try to the next"
    )


class TimeoutSpec(_Strict):
    ready_s: float = Field(
        default=900.0,
        gt=0,
        description=(
            "how long a task waits for the sidecar to be ready (in local mode the driver "
            "waits, once, before any task starts), seconds"
        ),
    )
    outage_s: float = Field(
        default=600.0,
        gt=0,
        description=(
            "once the sidecar was ready, how long it may be down (crashed, "
            "restarting) before the task fails and Spark retries it, seconds"
        ),
    )
    request_s: float = Field(default=600.0, gt=0, description="one request, end to end, seconds")
    connect_s: float = Field(default=10.0, gt=0, description="connecting to the sidecar, seconds")


class ProgressSpec(_Strict):
    enabled: bool = Field(
        default=True,
        description=(
            "show the run's progress on the driver while it sends (see "
            "[Progress](command.md#progress-while-a-job-runs))"
        ),
    )
    interval_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "seconds between the driver's progress lines and between a task's reports"
            " to the driver; what is shown is at most two intervals old"
        ),
    )
    port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description=(
            "port of the driver's progress endpoint the tasks report to, which also "
            "serves `/metrics` with `metrics.enabled`; `0` takes any free port (the "
            "chart's NetworkPolicy admits the job's executors to every port of its "
            "driver; the chart sets `metrics.driverPort` here with its metrics on)"
        ),
    )


class MetricsSpec(_Strict):
    enabled: bool = Field(
        default=False,
        description=(
            "serve the job's Prometheus metrics at `GET /metrics` on the progress "
            "endpoint while the run sends (see "
            "[Metrics](command.md#prometheus-metrics))"
        ),
    )
    token_env: str = Field(
        default="SPARK_VLLM_METRICS_TOKEN",
        min_length=1,
        description=(
            "environment variable of the driver holding the bearer token scrapers "
            "must send; the job refuses to start with `metrics.enabled` and the "
            "variable unset or empty"
        ),
    )


class PrefixSpec(_Strict):
    columns: list[str] | None = Field(
        default=None,
        min_length=1,
        description=("rows with equal values in these columns share a long prompt prefix"),
    )
    chars: int | None = Field(
        default=None,
        ge=1,
        description=(
            "automatic: rows whose rendered request starts with the same this many "
            "characters share a prefix"
        ),
    )

    @model_validator(mode="after")
    def _one_way(self) -> PrefixSpec:
        if (self.columns is None) == (self.chars is None):
            raise ValueError("give prefix.columns or prefix.chars (one of them)")
        return self


class EstimateSpec(_Strict):
    output_tokens_per_s: float | None = Field(
        default=None,
        gt=0,
        description="output tokens per second one sidecar generates",
    )
    replicas: int = Field(default=1, ge=1, description="sidecars generating at once")
    gpus_per_replica: int = Field(default=1, ge=1, description="GPUs each sidecar holds")


class SampleSpec(_Strict):
    fraction: float | None = Field(
        default=None, gt=0, le=1, description="keep this share of the input's ids"
    )
    rows: int | None = Field(default=None, ge=1, description="keep this many of the input's ids")
    seed: int = Field(
        default=0,
        description="which ids: a hash of the id and the seed picks them",
    )

    @model_validator(mode="after")
    def _one_size(self) -> SampleSpec:
        if (self.fraction is None) == (self.rows is None):
            raise ValueError("give sample.fraction or sample.rows (one of them)")
        return self


class BudgetSpec(_Strict):
    max_rows: int | None = Field(default=None, ge=1, description="rows sent")
    max_prompt_tokens: int | None = Field(
        default=None, ge=1, description="prompt tokens of the answered rows"
    )
    max_output_tokens: int | None = Field(
        default=None,
        ge=1,
        description=(
            "output tokens of the answered rows (each row sent holds its `max_tokens`"
            " of it until answered)"
        ),
    )

    @model_validator(mode="after")
    def _some_limit(self) -> BudgetSpec:
        if (
            self.max_rows is None
            and self.max_prompt_tokens is None
            and (self.max_output_tokens is None)
        ):
            raise ValueError("a budget needs max_rows, max_prompt_tokens or max_output_tokens")
        return self


def conf_key_allowed(key: str, allowed: list[str] | tuple[str, ...] | frozenset[str]) -> bool:
    """Whether a Spark conf key is one of `allowed`: an exact key (`spark.sql.shuffle.partitions`)
    or a prefix ending in a dot (`spark.sql.` allows every key under it)."""
    return any(key == entry or (entry.endswith(".") and key.startswith(entry)) for entry in allowed)


class SparkSpec(_Strict):
    master: str | None = Field(
        default=None, description="Spark master; unset: spark-submit's, else `local[*]`"
    )
    app_name: str = Field(default="spark-vllm", description="the application's name")
    conf: dict[str, str] = Field(
        default_factory=dict,
        description=(
            'extra Spark settings, each value a string (`"2"`, not `2`). A local master '
            "also gets the driver on loopback, "
            "no console progress bar and `spark.sql.shuffle.partitions` of two per "
            "core; `spark.conf` overrides them"
        ),
    )


class JobSpec(_Strict):
    input: InputSpec
    output: OutputSpec
    endpoint: EndpointSpec
    task: Task = Field(
        default="chat",
        description=(
            "`chat` (`/v1/chat/completions`), `completion` (`/v1/completions`) or "
            "`embedding` (`/v1/embeddings`, many rows per request, an `embedding` "
            "column; the server must run an embedding model with `--runner pooling`)"
        ),
    )
    prompt: PromptSpec | None = Field(
        default=None,
        description=(
            "what to send for each row: one of `prompt.template`, `prompt.column` and"
            " `prompt.content`; required but for `openai-batch` input, which has none"
        ),
    )
    embedding: EmbeddingSpec = Field(
        default_factory=EmbeddingSpec,
        description="task `embedding`: batching and the vectors' shape",
    )
    sampling: SamplingSpec = Field(
        default_factory=SamplingSpec,
        description=(
            "request fields sent with every row, for the generating tasks (as are "
            "`sampling_column` and `structured_output`): the keys below, and any "
            "other field of vLLM's request for the task (`ignore_eos`, `min_p`, "
            "`repetition_penalty`, …) untouched. Refused (exit 2, naming each key "
            "and why): a key vLLM's request for the task does not have (`temprature`: "
            "the nearest it has is named), and those that would change the answer's "
            "shape beyond what the job stores: `stream: "
            "true`, `stream_options`, `n` above 1, `prompt_logprobs`, "
            "`return_token_ids`, `tools`, `tool_choice`, `parallel_tool_calls`, "
            "`functions`, `function_call`, and `response_format` beside "
            "`structured_output` (an OpenAI batch file keeps each answer's whole "
            "body, for those). `logprobs` fills a `logprobs` column (see [Output "
            "rows](#output-rows)): chat takes `logprobs: true` and `top_logprobs: N` "
            "alternatives per token, completion `logprobs: N` (0: the chosen tokens "
            "only)"
        ),
    )
    sampling_column: str | None = Field(
        default=None,
        description=(
            "a column of per-row sampling overrides: a struct, a map or a JSON object"
            ' string such as `{"max_tokens": 64}`. Its non-null fields override '
            "`sampling` for that row (null overrides nothing); one that is not an "
            "object, sets `model`, `messages`, `prompt`, `input`, `logprobs` or "
            "`top_logprobs`, a field refused in `sampling`, or a key vLLM's request "
            "for the task does not have, makes that row an error row. Its `max_tokens` "
            "also orders the work (`concurrency.order`)"
        ),
    )
    structured_output: StructuredSpec | None = Field(
        default=None,
        description=(
            "guided decoding to a JSON schema: the answer's fields become typed "
            "columns (one of `json_schema` and `ddl`)"
        ),
    )
    concurrency: ConcurrencySpec = Field(default_factory=ConcurrencySpec)
    retries: RetrySpec = Field(default_factory=RetrySpec)
    timeouts: TimeoutSpec = Field(default_factory=TimeoutSpec)
    on_error: Literal["record", "fail"] = Field(
        default="record",
        description=(
            "`record`: a failed row is an output row with `error` set; `fail`: the "
            "first failed row fails the job (exit code 1, the row's id and cause in "
            "the message)"
        ),
    )
    max_error_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description=(
            "a share in [0, 1]: a task whose failed rows exceed it (judged once it "
            "has `error_rate_min_rows` rows) fails, and so does the job, with the "
            "summary of what was committed"
        ),
    )
    error_rate_min_rows: int = Field(
        default=50, ge=1, description="rows a task completes before `max_error_rate` is judged"
    )
    partitions: int | None = Field(
        default=None,
        ge=1,
        description=(
            "how many tasks the input is split into. Unset: one per task slot in "
            "local mode; on a cluster, two per task slot of the most executors the "
            "job may get (`spark.dynamicAllocation.maxExecutors`, else "
            "`spark.executor.instances`), so executors that join late or finish early"
            " find work waiting"
        ),
    )
    progress: ProgressSpec = Field(default_factory=ProgressSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    estimate: EstimateSpec = Field(
        default_factory=EstimateSpec,
        description="throughput for `spark-vllm plan`'s time and GPU-hours",
    )
    prefix: PrefixSpec | None = Field(
        default=None,
        description=(
            "send rows that share a long prompt prefix to one task, back to back (one"
            " of `columns` and `chars`; see [Rows that share a long "
            "prefix](command.md#rows-that-share-a-long-prefix))"
        ),
    )
    limit: int | None = Field(
        default=None,
        ge=1,
        description=(
            "send at most the first N rows left to send (after resume), in input "
            "order; a later run resumes past them (see [Know before you "
            "spend](command.md#know-before-you-spend-plan-samples-budgets))"
        ),
    )
    sample: SampleSpec | None = Field(
        default=None,
        description=(
            "run on a sample of the input's ids: a hash of (id, `seed`) picks them, "
            "the same on every run (one of `fraction` and `rows`)"
        ),
    )
    budget: BudgetSpec | None = Field(
        default=None,
        description=(
            "stop sending at a limit, all tasks together; the run commits what "
            "finished and exits 3. Token budgets are for generating tasks"
        ),
    )
    on_overlong: Literal["error", "truncate"] = Field(
        default="error",
        description=(
            "a prompt too long for the context with its `max_tokens`: `error` (an "
            "error row, vLLM's HTTP 400) or `truncate` (vLLM keeps its last tokens so"
            " it fits; the output's `truncated` says so). Generating tasks"
        ),
    )
    lora: LoraSpec | None = Field(
        default=None,
        description=(
            "answer with a LoRA adapter of the served model (one of `adapter` and "
            "`column`; chat and completion; see [A LoRA adapter per "
            "row](command.md#a-lora-adapter-per-row))"
        ),
    )
    spark: SparkSpec = Field(default_factory=SparkSpec)
    # The spec file's name when read from one (load_spec): Spark's UI names the job by it.
    _source: str = PrivateAttr(default="")

    @property
    def source(self) -> str:
        """The name of the file the spec was read from ("": not from a file)."""
        return self._source

    @model_validator(mode="after")
    def _task_prompt(self) -> JobSpec:
        self._generating_only()
        if self.input.format == "openai-batch":
            return self._batch_file()
        if self.output.format == "openai-batch":
            raise ValueError(
                "output.format 'openai-batch' answers request lines: it needs "
                "input.format 'openai-batch' (lines with custom_id, url and body)"
            )
        if self.prompt is None:
            raise ValueError(
                "prompt is missing: set one of prompt.template, prompt.column and prompt.content"
            )
        if self.task != "chat" and self.prompt.content is not None:
            raise ValueError(
                f"prompt.content (text and image parts) is for task 'chat'; task "
                f"'{self.task}' takes prompt.template or prompt.column"
            )
        if self.task != "chat" and self.prompt.system is not None:
            raise ValueError(
                f"prompt.system is for task 'chat'; task '{self.task}' takes one text per row"
            )
        generating = ("sampling", "sampling_column", "structured_output")
        if self.task != "embedding":
            self._check_sampling()
        if self.task == "embedding":
            wrong = [k for k in generating if k in self.model_fields_set]
            if wrong:
                raise ValueError(
                    f"{wrong} are for generating tasks (chat, completion); task 'embedding' "
                    "takes embedding.batch_size, .dimensions and .truncate_prompt_tokens"
                )
        elif "embedding" in self.model_fields_set:
            raise ValueError(f"embedding settings are for task 'embedding', not '{self.task}'")
        return self

    def _generating_only(self) -> None:
        """on_overlong: truncate and token budgets need a chat or completion job's own
        requests (a batch file's lines and embeddings carry their own settings)."""
        batch = self.input.format == "openai-batch"
        if self.on_overlong == "truncate" and (batch or self.task == "embedding"):
            raise ValueError(
                "on_overlong: truncate is for chat and completion jobs; an embedding job "
                "truncates with embedding.truncate_prompt_tokens, a batch file's lines "
                "with their own truncate_prompt_tokens"
            )
        if self.prefix is not None and self.task == "embedding" and not batch:
            raise ValueError(
                "prefix is for generating tasks: vLLM's prefix cache is off for pooling "
                "(embedding) models, so grouping rows by prefix gains nothing"
            )
        if self.lora is not None and batch:
            raise ValueError(
                "lora: a batch file's lines name their adapter in each body's model; remove lora"
            )
        if self.lora is not None and self.task == "embedding":
            raise ValueError(
                "lora is for generating tasks (chat, completion), not task 'embedding'"
            )
        budget = self.budget
        if (
            budget is not None
            and self.task == "embedding"
            and not batch
            and (budget.max_prompt_tokens is not None or budget.max_output_tokens is not None)
        ):
            raise ValueError(
                "budget.max_prompt_tokens and .max_output_tokens count the tokens of "
                "answers, which embeddings do not report per row; use budget.max_rows"
            )

    def _check_sampling(self) -> None:
        fields = self.sampling.model_dump(exclude_none=True)
        problems = [
            f"sampling.{key} {reason}"
            for key in self.sampling.model_extra or {}
            # top_logprobs and the unstored fields have their own messages, below
            if key != "top_logprobs"
            and key not in UNSTORED_FIELDS
            and (reason := unknown_field(key, self.task)) is not None
        ]
        for key, value in fields.items():
            reason = unstored_field(key, value)
            if reason is not None:
                problems.append(f"sampling.{key} ({value!r}): {reason}")
        if problems:
            raise ValueError("\n  ".join(problems))
        if "response_format" in fields and self.structured_output is not None:
            raise ValueError(
                "sampling.response_format: structured_output sets the response format; "
                "remove one of them"
            )
        logprobs = fields.get("logprobs")
        if self.task == "chat" and logprobs is not None and not isinstance(logprobs, bool):
            raise ValueError(
                f"sampling.logprobs ({logprobs!r}): task chat takes true or false, and "
                "sampling.top_logprobs for the number of alternatives per token"
            )
        if (
            self.task == "completion"
            and logprobs is not None
            and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0)
        ):
            raise ValueError(
                f"sampling.logprobs ({logprobs!r}): task completion takes the number of "
                "alternatives per token (0: the chosen tokens' own log-probabilities)"
            )
        if self.task == "completion" and "top_logprobs" in fields:
            raise ValueError(
                "sampling.top_logprobs is for task chat; task completion takes the number "
                "of alternatives per token as sampling.logprobs"
            )
        if "top_logprobs" in fields and not self.sampling.wants_logprobs():
            raise ValueError("sampling.top_logprobs needs sampling.logprobs: true")

    def wants_logprobs(self) -> bool:
        """Whether the output has a logprobs column."""
        return (
            self.task != "embedding"
            and self.prompt is not None
            and (self.sampling.wants_logprobs())
        )

    def _batch_file(self) -> JobSpec:
        per_line = (
            "task",
            "prompt",
            "sampling",
            "sampling_column",
            "structured_output",
            "embedding",
        )
        wrong = [k for k in per_line if k in self.model_fields_set and getattr(self, k) is not None]
        if wrong:
            raise ValueError(
                f"input.format 'openai-batch': each line's url and body say what to send; "
                f"remove {wrong}"
            )
        if "format" not in self.output.model_fields_set:
            self.output.format = "openai-batch"
        elif self.output.format != "openai-batch":
            raise ValueError(
                f"input.format 'openai-batch' is answered in output.format 'openai-batch', "
                f"not {self.output.format!r}; remove output.format or set it to openai-batch"
            )
        return self

    def id_column(self) -> str:
        """Name of the id column in the output: the input's, or 'id' when derived."""
        if self.input.format == "openai-batch":
            return "custom_id"
        return self.input.id_column or "id"

    def prompt_columns(self) -> list[str]:
        """Input columns the prompt reads (none for openai-batch: the body is whole)."""
        return sorted(self.prompt.columns()) if self.prompt is not None else []

    def check_columns(self, columns: list[str]) -> None:
        """Refuse a spec that reads columns the input does not have."""
        have = set(columns)
        images = self.prompt.image_columns() if self.prompt is not None else []
        wanted = [
            ("prompt.content (image)", images),
            ("prompt", [c for c in self.prompt_columns() if c not in images]),
            ("output.keep_columns", self.output.keep_columns),
        ]
        if self.sampling_column:
            wanted.append(("sampling_column", [self.sampling_column]))
        if self.prefix is not None and self.prefix.columns:
            wanted.append(("prefix.columns", self.prefix.columns))
        if self.lora is not None and self.lora.column:
            wanted.append(("lora.column", [self.lora.column]))
        if self.input.id_column:
            wanted.append(("input.id_column", [self.input.id_column]))
        for where, names in wanted:
            missing = [n for n in names if n not in have]
            if missing:
                raise SpecError(
                    f"{where}: column(s) {missing} not in the input; expected one of {sorted(have)}"
                )
        if not self.input.id_column and "id" in have:
            raise SpecError(
                "input.id_column: the input has a column 'id' but input.id_column is unset; "
                "set input.id_column: id to use it, or rename that column"
            )


# What a value of a type error's kind should have been, in the words of the job spec.
_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "text",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _is_union_member(part: str | int) -> bool:
    """Whether a pydantic error location part names a member of a union (`int`,
    `literal['auto']`, `list[str]`, `EndpointSpec`) rather than a key of the spec."""
    if not isinstance(part, str):
        return False
    if "[" in part or part in {"int", "float", "str", "bool", "none"}:
        return True
    named = globals().get(part)
    return isinstance(named, type) and issubclass(named, BaseModel)


def _model_at(keys: list[str]) -> type[BaseModel] | None:
    """The spec model a key path leads to (endpoint -> EndpointSpec), or None."""
    model: type[BaseModel] = JobSpec
    for key in keys:
        field = model.model_fields.get(key)
        if field is None:
            return None
        found = [
            t
            for t in (field.annotation, *getattr(field.annotation, "__args__", ()))
            if isinstance(t, type) and issubclass(t, BaseModel)
        ]
        if not found:
            return None
        model = found[0]
    return model


def _nearest_key(keys: list[str]) -> str:
    """For an unknown key: the known key at its level its spelling is nearest to
    (` (did you mean input.id_column?)`), else the keys one level down that have its
    name (`output.write_mode` → output.delta.write_mode, output.jdbc.write_mode); or ""."""
    parent = _model_at(keys[:-1])
    if parent is None or not keys:
        return ""
    name = keys[-1]
    close = difflib.get_close_matches(name, list(parent.model_fields), n=1, cutoff=0.75)
    if close:
        return f" (did you mean {'.'.join([*keys[:-1], close[0]])}?)"
    below = [
        ".".join([*keys[:-1], field, name])
        for field in parent.model_fields
        if (child := _model_at([*keys[:-1], field])) is not None and name in child.model_fields
    ]
    return f" (it is a key of {' and of '.join(below)})" if below else ""


# What a value outside a bound should have been (pydantic's constraint errors).
_BOUNDS = {
    "greater_than_equal": "at least {ge}",
    "greater_than": "more than {gt}",
    "less_than_equal": "at most {le}",
    "less_than": "less than {lt}",
    "string_too_short": "text of at least {min_length} characters",
    "too_short": "at least {min_length} items",
}


def _expected(err: Any) -> str:
    if err["type"] == "literal_error":
        choices: str = err["ctx"]["expected"]
        return "one of " + choices if " or " in choices else choices
    if err["type"] in ("string_too_short", "too_short") and err["ctx"]["min_length"] == 1:
        return "non-empty text" if err["type"] == "string_too_short" else "at least one item"
    if err["type"] in _BOUNDS:
        bounds = {k: f"{v:g}" if isinstance(v, float) else v for k, v in err["ctx"].items()}
        return _BOUNDS[err["type"]].format(**bounds)
    return _EXPECTED[err["type"]]


def _format_errors(exc: ValidationError) -> str:
    lines: list[str] = []
    # A value that fits no member of a union gets one line naming every member.
    wrong_type: dict[str, tuple[Any, list[str]]] = {}
    for err in exc.errors():
        keys = [str(p) for p in err["loc"] if not _is_union_member(p)]
        path = ".".join(keys) or "job spec"
        if err["type"] == "extra_forbidden":
            lines.append(
                f"{path}: unknown key{_nearest_key(keys)}; check its spelling against the "
                "job-spec reference"
            )
            continue
        if err["type"] == "missing":
            model = _model_at(keys[:-1])
            field = model.model_fields.get(keys[-1]) if model is not None and keys else None
            what = f": {field.description}" if field is not None and field.description else ""
            lines.append(f"{path}: required key is missing{what}")
            continue
        if err["type"] in _EXPECTED or err["type"] in _BOUNDS or err["type"] == "literal_error":
            _, expected = wrong_type.setdefault(path, (err["input"], []))
            if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
                model = _model_at(keys)
                required = [
                    n for n, f in (model.model_fields.items() if model else ()) if f.is_required()
                ]
                if required:
                    expected.append(f"a mapping with {', '.join(required)}")
                    continue
            expected.append(_expected(err))
            continue
        message = err["msg"].removeprefix("Value error, ")
        if message.startswith((f"{path}.", f"{path}:")):
            # A rule of a nested model that names its own key in full (`prompt.template
            # does not parse`) says the path once.
            lines.append(message)
            continue
        if isinstance(err["input"], dict):
            # A rule across several keys: the message names them; the mapping is noise.
            lines.append(f"{path}: {message}" if keys else message)
        else:
            lines.append(f"{path}: got {err['input']!r}; {message}")
    for path, (value, expected) in wrong_type.items():
        got = "nothing (the key has no value)" if value is None else repr(value)
        lines.append(f"{path}: expected {' or '.join(dict.fromkeys(expected))}, got {got}")
    return "invalid job spec:\n  " + "\n  ".join(lines)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that gives one key twice (YAML's loaders would keep the last silently)."""

    @property
    def problem(self) -> str:
        return str(self)


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (two `sampling:`
    blocks, `max_tokens` twice), which would otherwise replace the earlier value unseen."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = lines.get(key)
            except TypeError:
                continue  # an unhashable key: the loader's own message follows
            if first is not None:
                where = f"on line {line}" if first == line else f"on lines {first} and {line}"
                raise DuplicateKeyError(
                    f"the key {key!r} is given twice, {where}; YAML would keep only the "
                    "last: remove one, or merge them"
                )
            lines[key] = line
        return super().construct_mapping(node, deep)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one `a.b.c=value` override; the value is read as a YAML scalar or list."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError(f"override {text!r}: expected KEY.PATH=VALUE, e.g. sampling.max_tokens=64")
    try:
        value = yaml.load(raw, Loader=UniqueKeyLoader) if raw != "" else ""  # noqa: S506
    except yaml.YAMLError as exc:
        hint = ""
        if raw.lstrip().startswith(("{", "[")) or "{{" in raw:
            quoted = '"' + raw.replace("\\", "\\\\").replace('"', '\\"') + '"'
            shell = shlex.quote(f"{key}={quoted}")  # a template may hold ' itself
            hint = (
                "; values are read as YAML, where {…} is a mapping and […] a list: to give "
                f"text (a template, say), quote it as YAML text: --set {shell}"
            )
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise SpecError(
            f"override {text!r}: the value is not valid YAML ({problem}){hint}"
        ) from None
    return key.split("."), value


def apply_overrides(doc: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = doc
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise SpecError(f"override {text!r}: {where} holds {child!r}, not a mapping")
            node = child
        node[path[-1]] = value
    return doc


def spec_from_dict(doc: Any) -> JobSpec:
    if not isinstance(doc, dict):
        raise SpecError(f"invalid job spec: expected a mapping at the top level, got {doc!r}")
    try:
        return JobSpec.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(_format_errors(exc)) from None


def read_document(path: str | Path) -> Any:
    """A job spec file's YAML document, not yet validated (an empty file: {})."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"job spec {str(path)!r}: cannot read it: {exc.strerror}") from None
    try:
        doc = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506
    except DuplicateKeyError as exc:
        raise SpecError(f"job spec {str(path)!r}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"job spec {str(path)!r} is not valid YAML: {exc}") from None
    return {} if doc is None else doc


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, override and validate a job spec file."""
    doc = read_document(path)
    if isinstance(doc, dict):
        doc = apply_overrides(doc, overrides or [])
    spec = spec_from_dict(doc)
    spec._source = Path(path).name
    return spec
