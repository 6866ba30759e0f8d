"""Kinds of request, one class each: chat, completion, embedding, a line of a batch file.

A kind is chosen once on the driver (`kind_for`) and shipped to the tasks inside their
TaskConfig. It owns everything that differs from one kind of request to another:

- `url`: where a request goes, under the server's root;
- `request(row)`: what one row becomes (RowError when it cannot), and `body(payloads)`:
  the body of one request carrying `batch_size` of them; the tasks call it through
  `row_request`, which makes anything else a row's values raise a RowError too;
- `check(answer)`: what keeps a 200 answer from being a success (retried when transient),
  and `parse(answer, n)`: the answer taken apart, one mapping of values per payload;
- `finish(row, result)`: what the row's result needs once its answer is in (structured
  output is parsed into columns here; a bad answer makes the row an error row);
- `result_fields()`: the columns it adds to each row, typed, in order — the one
  definition from which the spec's reserved names, the output schema, the runner's
  columns and the column functions' struct are all derived;
- `stored_schema()` and `summary_columns()`: how the summary reads errors and tokens from
  the rows as they were stored.

The client, the partition runner and the output stores know no kind by name.
Adding a kind is one class here plus a branch in `kind_for` (see docs/architecture.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import numpy as np
import orjson
import pyarrow as pa
from pyspark.sql import Column
from pyspark.sql import types as T

from spark_vllm.errors import LONE_SURROGATE, AnswerError, RowError
from spark_vllm.request import openai_batch
from spark_vllm.request.fields import unknown_field, unstored_field
from spark_vllm.request.prompt import PromptBuilder
from spark_vllm.request.result import Result
from spark_vllm.request.structured import AnswerParser, response_format

# vLLM's max_tokens for /v1/completions when a request sets none (OpenAI's default).
COMPLETION_DEFAULT_MAX_TOKENS = 16
# What keeps a 200 answer from being a success: (what is wrong, whether another try may
# cure it).
Problem = tuple[str, bool]

# How the request went, at the end of every kind's row but a batch line's.
TIMING = (
    T.StructField("latency_ms", T.DoubleType()),
    T.StructField("attempts", T.IntegerType()),
)
ERROR = T.StructField("error", T.StringType())
# on_overlong: truncate — whether vLLM cut the row's prompt to fit (it reached its limit).
TRUNCATED = T.StructField("truncated", T.BooleanType())
_TOKEN = [T.StructField("token", T.StringType()), T.StructField("logprob", T.DoubleType())]
LOGPROBS = T.StructField(
    "logprobs",
    T.ArrayType(
        T.StructType([*_TOKEN, T.StructField("top_logprobs", T.ArrayType(T.StructType(_TOKEN)))])
    ),
)

# finish_reason values with which vLLM ends an answer it did not finish: the request was
# aborted (preempted past recovery, the engine shutting down) or failed in the engine.
# Another try may well succeed, so they are retried like a 503.
UNFINISHED = frozenset({"abort", "error"})

# Request fields a row's sampling column may not set: the job builds these itself, and
# log-probabilities decide the output's columns for the whole job.
RESERVED_FIELDS = frozenset({"model", "messages", "prompt", "input"})
COLUMN_FIELDS = frozenset({"logprobs", "top_logprobs"})


class Answer(NamedTuple):
    """structured_output, resolved: the answer's columns, the JSON schema vLLM decodes
    to, and the schema's name in the request."""

    columns: T.StructType
    schema: dict[str, Any]
    name: str = "answer"


def unfinished(data: Any) -> Problem | None:
    """A problem when any choice of a chat or completion answer ended unfinished."""
    choices = data.get("choices") if isinstance(data, dict) else None
    for choice in choices if isinstance(choices, list) else []:
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        if reason in UNFINISHED:
            return f"the server ended the answer with finish_reason {reason!r}", True
    return None


def row_seed(row_id: Any) -> int:
    """A sampling seed derived from the row id (`seed: auto`): same id, same seed."""
    digest = hashlib.sha256(str(row_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def row_sampling(value: Any, column: str, task: str | None = None) -> dict[str, Any]:
    """A row's sampling overrides from its sampling column: struct, map or JSON object.

    Null (or a null field) overrides nothing; anything else that is not a mapping with
    string keys, or that sets a field the job sets itself or cannot store, or (given the
    task) one vLLM's request for the task does not have, is a RowError naming the column.
    """
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(f"sampling column {column!r} is not a JSON object: {exc.msg}") from None
        except RecursionError:
            raise RowError(f"sampling column {column!r} is nested too deeply to read") from None
    elif isinstance(value, list) and all(isinstance(kv, tuple) and len(kv) == 2 for kv in value):
        value = dict(value)  # an Arrow map arrives as a list of (key, value) pairs
    if not isinstance(value, Mapping):
        raise RowError(
            f'sampling column {column!r}: expected an object such as {{"max_tokens": 64}}, '
            f"got {type(value).__name__}"
        )
    fields = {str(k): v for k, v in value.items() if v is not None}
    reserved = sorted((RESERVED_FIELDS | COLUMN_FIELDS).intersection(fields))
    if reserved:
        raise RowError(
            f"sampling column {column!r} may not set {reserved}: the job sets the prompt "
            "and the model itself, and log-probabilities are set for the whole job "
            "(sampling.logprobs)"
        )
    for key, val in fields.items():
        reason = unstored_field(key, val)
        if reason is not None:
            raise RowError(f"sampling column {column!r} sets {key}: {reason}")
    unknown = [
        f"{key} {why}" + ("" if why.endswith("?") else ".")
        for key in fields
        if task is not None and (why := unknown_field(key, task)) is not None
    ]
    if unknown:
        raise RowError(f"sampling column {column!r}: " + " ".join(unknown))
    return fields


class RequestKind:
    """What one kind of request does; see the module's text. Subclasses set the class
    variables and implement `request`, `body` and `parse`."""

    name: ClassVar[str]
    url: ClassVar[str] = ""
    # The kind's own result columns, in order.
    fields: ClassVar[tuple[T.StructField, ...]]
    # Whether the rows carry token counts for the summary.
    tokens: ClassVar[bool] = True

    def __init__(self, model: str, batch_size: int = 1) -> None:
        self.model = model
        self.batch_size = batch_size

    def result_fields(self) -> list[T.StructField]:
        """The columns this kind adds to each row, typed, in order."""
        return list(self.fields)

    def result_columns(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.result_fields())

    def request(self, row: dict[str, Any]) -> Any:
        """What one row becomes (the kind's payload); RowError when it cannot."""
        raise NotImplementedError

    def request_url(self, payloads: list[Any]) -> str:
        """Where a request of these payloads goes, under the server's root."""
        return self.url

    def body(self, payloads: list[Any]) -> dict[str, Any]:
        """The JSON body of one request carrying `payloads`."""
        raise NotImplementedError

    def check(self, data: Any) -> Problem | None:
        """What keeps a 200 answer from being a success, or None."""
        return None

    def parse(self, data: Any, count: int) -> list[dict[str, Any]]:
        """The values of each of `count` payloads from an answer `check` passed.
        ValueError, KeyError or TypeError for an answer of an unexpected shape."""
        raise NotImplementedError

    def finish(self, row: dict[str, Any], result: Result) -> None:
        """Complete a row's result once its answer (or failure) is in."""

    def values(self, row: dict[str, Any], result: Result) -> dict[str, Any]:
        """The row's value for each result column."""
        common = {
            "latency_ms": result.latency_ms,
            "attempts": result.attempts,
            "error": result.error,
        }
        return {
            name: common[name] if name in common else result.values.get(name)
            for name in self.result_columns()
        }

    def tokens_of(self, values: dict[str, Any]) -> tuple[int, int]:
        """(prompt tokens, completion tokens) of a row's answer, for the summary."""
        if not self.tokens:
            return 0, 0
        return values.get("prompt_tokens") or 0, values.get("completion_tokens") or 0

    def stored_schema(self, schema: T.StructType) -> T.StructType:
        """The rows as written and read back, from the rows the tasks hand over."""
        return schema

    def summary_columns(self) -> tuple[Column, Column, Column]:
        """(error text, prompt tokens, completion tokens) of a stored row."""
        from pyspark.sql import functions as F

        if not self.tokens:
            return F.col("error"), F.lit(0), F.lit(0)
        return F.col("error"), F.col("prompt_tokens"), F.col("completion_tokens")

    def __getstate__(self) -> dict[str, Any]:
        # What a kind builds for itself on an executor (a parser) is not shipped.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class Generating(RequestKind):
    """Chat and completion: one row per request, an answer text, token counts; with
    sampling, a per-row sampling column, `seed: auto`, log-probabilities and a
    structured answer."""

    fields = (
        T.StructField("response", T.StringType()),
        T.StructField("finish_reason", T.StringType()),
        T.StructField("prompt_tokens", T.IntegerType()),
        T.StructField("completion_tokens", T.IntegerType()),
        *TIMING,
        ERROR,
    )
    # Where the answer's text is in a choice.
    text_key: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        model: str,
        builder: PromptBuilder,
        sampling: dict[str, Any] | None = None,
        *,
        id_column: str = "id",
        sampling_column: str | None = None,
        seed_auto: bool = False,
        logprobs: bool = False,
        answer: Answer | None = None,
        truncate: bool = False,
        adapter: str | None = None,
        adapter_column: str | None = None,
    ) -> None:
        super().__init__(model)
        # lora: the adapter every row is sent to, or the column naming each row's (null:
        # the base model); the request's model is the adapter's served name.
        self.adapter = adapter
        self.adapter_column = adapter_column
        # on_overlong: truncate — vLLM keeps a prompt's last tokens so the row fits the
        # served model's context, which the task sets here before its first request.
        self.truncate = truncate
        self.context: int | None = None
        self.builder = builder
        self.sampling = dict(sampling or {})
        self.id_column = id_column
        self.sampling_column = sampling_column
        self.seed_auto = seed_auto
        self.logprobs = logprobs
        self.answer = answer
        if answer is not None:
            self.sampling["response_format"] = response_format(answer.schema, answer.name)

    def result_fields(self) -> list[T.StructField]:
        fields = list(self.fields)
        if self.logprobs:
            fields.append(LOGPROBS)
        if self.truncate:
            fields.append(TRUNCATED)
        if self.answer is not None:
            fields += self.answer.columns.fields
        return fields

    def prompt_limit(self, max_tokens: Any) -> int | None:
        """With truncation, the most prompt tokens a row asking `max_tokens` keeps (what
        the context leaves after its answer); None without."""
        if not self.truncate or self.context is None:
            return None
        asked = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 1
        return max(self.context - asked, 1)

    def row_model(self, row: dict[str, Any]) -> str:
        """The served name a row is sent to: its LoRA adapter's, or the base model's."""
        if self.adapter_column is None:
            return self.adapter or self.model
        name = row.get(self.adapter_column)
        if name is None:
            return self.model
        if not isinstance(name, str) or not name.strip():
            raise RowError(
                f"lora.column {self.adapter_column!r}: expected an adapter name or null, "
                f"got {'an empty string' if isinstance(name, str) else type(name).__name__}"
            )
        return name.strip()

    def request(self, row: dict[str, Any]) -> dict[str, Any]:
        fields = self.builder.build(row)
        model = self.row_model(row)
        if model != self.model:
            # First, so a prefix.chars key of the rendered request tells adapters apart.
            fields = {"model": model, **fields}
        if self.sampling_column is not None:
            own = row_sampling(row.get(self.sampling_column), self.sampling_column, self.name)
            fields.update(own)
        if self.seed_auto and "seed" not in fields:
            fields["seed"] = row_seed(row[self.id_column])
        return fields

    def body(self, payloads: list[Any]) -> dict[str, Any]:
        (fields,) = payloads
        body = {"model": self.model, **self.sampling, **fields}
        limit = self.prompt_limit(body.get("max_tokens"))
        if limit is not None:
            body["truncate_prompt_tokens"] = limit
        return body

    def _text(self, choice: dict[str, Any]) -> Any:
        found: Any = choice
        for key in self.text_key:
            found = found.get(key) if isinstance(found, dict) else None
        return found

    def check(self, data: Any) -> Problem | None:
        """A success has a first choice whose finish_reason is not abort or error and
        whose text is a string (chat: `message.content`; completion: `text`)."""
        if not isinstance(data, dict):
            return f"the answer is not a JSON object: {str(data)[:200]}", False
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return f"the answer has no choices: {json.dumps(data)[:300]}", False
        problem = unfinished(data)
        if problem is not None:
            return problem
        choice = choices[0]
        if not isinstance(self._text(choice), str):
            return (
                f"the answer has no {'.'.join(self.text_key)} (finish_reason "
                f"{choice.get('finish_reason')!r}): {json.dumps(choice)[:300]}",
                False,
            )
        return None

    def parse(self, data: Any, count: int) -> list[dict[str, Any]]:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        values = {
            "response": self._text(choice),
            "finish_reason": choice.get("finish_reason"),
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
        }
        if self.logprobs:
            values["logprobs"] = self.token_logprobs(choice)
        return [values]

    def token_logprobs(self, choice: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The answer's tokens with their log-probabilities, one shape for both kinds:
        [{token, logprob, top_logprobs: [{token, logprob}]}]."""
        raise NotImplementedError

    def _parser(self) -> AnswerParser:
        parser: AnswerParser | None = self.__dict__.get("_answer_parser")
        if parser is None:
            from pyspark.sql.pandas.types import to_arrow_type

            assert self.answer is not None
            arrow = to_arrow_type(self.answer.columns)
            assert isinstance(arrow, pa.StructType)
            parser = AnswerParser(self.answer.schema, arrow)
            self.__dict__["_answer_parser"] = parser
        return parser

    def finish(self, row: dict[str, Any], result: Result) -> None:
        """A structured answer becomes its columns; one that does not fit fails the row.
        With truncation, `truncated` says whether the prompt reached its limit."""
        if result.error is not None:
            return
        if self.answer is not None:
            try:
                result.values.update(self._parser().parse(result.values.get("response")))
            except AnswerError as exc:
                result.error = f"bad answer: {exc}"
                return
            except RecursionError:
                result.error = "bad answer: its JSON is nested too deeply to read"
                return
        if self.truncate:
            asked = self.sampling.get("max_tokens")
            if self.sampling_column is not None:
                own = row_sampling(row.get(self.sampling_column), self.sampling_column)
                asked = own.get("max_tokens", asked)
            limit = self.prompt_limit(asked)
            used = result.values.get("prompt_tokens")
            result.values["truncated"] = (
                limit is not None and isinstance(used, int) and used >= limit
            )


class Chat(Generating):
    name = "chat"
    url = "/v1/chat/completions"
    text_key = ("message", "content")

    def token_logprobs(self, choice: dict[str, Any]) -> list[dict[str, Any]] | None:
        found = choice.get("logprobs")
        if not isinstance(found, dict):
            return None
        return [
            {
                "token": item.get("token"),
                "logprob": item.get("logprob"),
                "top_logprobs": [
                    {"token": top.get("token"), "logprob": top.get("logprob")}
                    for top in item.get("top_logprobs") or []
                ],
            }
            for item in found.get("content") or []
        ]


class Completion(Generating):
    name = "completion"
    url = "/v1/completions"
    text_key = ("text",)

    def token_logprobs(self, choice: dict[str, Any]) -> list[dict[str, Any]] | None:
        found = choice.get("logprobs")
        if not isinstance(found, dict):
            return None
        tokens = found.get("tokens") or []
        values = found.get("token_logprobs") or [None] * len(tokens)
        tops = found.get("top_logprobs") or [None] * len(tokens)
        return [
            {
                "token": token,
                "logprob": value,
                "top_logprobs": [{"token": k, "logprob": v} for k, v in (top or {}).items()],
            }
            for token, value, top in zip(tokens, values, tops, strict=False)
        ]


def _vector(value: Any) -> Any:
    """A vector as the server sent it: base64 of little-endian float32 (what the job asks
    for), or a list of numbers."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4")
    if not isinstance(value, list):
        raise TypeError(f"an embedding is a list or base64 text, got {type(value).__name__}")
    return value


class Embedding(RequestKind):
    """`batch_size` rows per /v1/embeddings request; a vector per row. vLLM counts the
    tokens of a request of many inputs as one total: a row has no count of its own."""

    name = "embedding"
    url = "/v1/embeddings"
    fields = (T.StructField("embedding", T.ArrayType(T.FloatType())), *TIMING, ERROR)
    tokens = False

    def __init__(
        self,
        model: str,
        builder: PromptBuilder,
        options: dict[str, Any] | None = None,
        batch_size: int = 32,
    ) -> None:
        super().__init__(model, batch_size)
        self.builder = builder
        self.options = dict(options or {})

    def request(self, row: dict[str, Any]) -> str:
        text: str = self.builder.build(row)["input"]
        return text

    def body(self, payloads: list[Any]) -> dict[str, Any]:
        return {"model": self.model, **self.options, "input": payloads}

    def parse(self, data: Any, count: int) -> list[dict[str, Any]]:
        items = sorted(data["data"], key=lambda item: item["index"])
        if len(items) != count:
            raise ValueError(f"{len(items)} vectors for {count} inputs")
        return [{"embedding": _vector(item["embedding"])} for item in items]


class BatchLine(RequestKind):
    """A line of an OpenAI batch file: its body, as it is, to the url it names; the
    output is the batch format's answer line (see openai_batch)."""

    name = "openai-batch"
    fields = (
        T.StructField("line", T.StringType()),
        ERROR,
    )

    def request(self, row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return openai_batch.request(row)

    def request_url(self, payloads: list[Any]) -> str:
        url: str = payloads[0][0]
        return url

    def body(self, payloads: list[Any]) -> dict[str, Any]:
        ((_, body),) = payloads
        return {"model": self.model, **body}

    def check(self, data: Any) -> Problem | None:
        return unfinished(data)

    def parse(self, data: Any, count: int) -> list[dict[str, Any]]:
        return [{"answer": data}]  # the line keeps the whole body: see values

    def values(self, row: dict[str, Any], result: Result) -> dict[str, Any]:
        answer = result.values.get("answer")
        line = openai_batch.output_line(row[openai_batch.ID_COLUMN], result, answer)
        return {"line": line, "error": result.error}

    def tokens_of(self, values: dict[str, Any]) -> tuple[int, int]:
        answer = values.get("answer")
        usage = answer.get("usage") if isinstance(answer, dict) else None
        if not isinstance(usage, dict):
            return 0, 0
        return usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0

    def stored_schema(self, schema: T.StructType) -> T.StructType:
        return openai_batch.STORED_SCHEMA

    def summary_columns(self) -> tuple[Column, Column, Column]:
        from pyspark.sql import functions as F

        body = F.col("response.body")
        return (
            F.col("error.message"),
            F.get_json_object(body, "$.usage.prompt_tokens").cast("long"),
            F.get_json_object(body, "$.usage.completion_tokens").cast("long"),
        )


# Every kind, by the name the job spec uses.
KINDS: dict[str, type[RequestKind]] = {k.name: k for k in (Chat, Completion, Embedding, BatchLine)}


def row_request(kind: RequestKind, row: dict[str, Any]) -> Any:
    """What one row becomes, as `kind.request` says, once it is known to serialise; a
    RowError for anything a row's values make go wrong (a RecursionError of deep nesting,
    a lone surrogate, a MemoryError of a huge value): one row never fails its task. The
    text names the kind of failure, never the value."""
    try:
        payload = kind.request(row)
        orjson.dumps(payload)  # what the client will send; a lone surrogate fails here
    except RowError:
        raise
    except Exception as exc:
        if "surrogate" in str(exc):  # orjson's and UTF-8's words for one
            raise RowError(
                f"the row cannot become a request: a text in it holds {LONE_SURROGATE}"
            ) from None
        raise RowError(f"the row cannot become a request ({type(exc).__name__})") from None
    return payload
