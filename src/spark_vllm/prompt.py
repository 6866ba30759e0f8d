"""Prompt rendering: turn one input row into the body fields of one request.

Templates are jinja2 over the row's columns (sandboxed, undefined names are errors).
A row that cannot be rendered is not a crash: it raises RowError, and the runner
records it as an error row.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.meta
from jinja2.sandbox import SandboxedEnvironment

from spark_vllm.errors import PromptError, RowError
from spark_vllm.images import image_parts


class _NullValue(Exception):
    pass


def _refuse_null(value: Any) -> Any:
    # jinja2 would print a null column as "None"; a prompt built on that is wrong.
    if value is None:
        raise _NullValue
    return value


_ENV = SandboxedEnvironment(
    undefined=jinja2.StrictUndefined, autoescape=False, finalize=_refuse_null
)


def template_variables(source: str) -> set[str]:
    """The top-level names a template reads (the input columns it needs)."""
    try:
        ast = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise PromptError(f"line {exc.lineno}: {exc.message}") from None
    return set(jinja2.meta.find_undeclared_variables(ast))


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def render(source: str, row: Mapping[str, Any]) -> str:
    try:
        return _compile(source).render(**row)
    except _NullValue:
        nulls = sorted(n for n in template_variables(source) if row.get(n) is None)
        raise RowError(f"template prints a null value; null column(s): {nulls}") from None
    except jinja2.UndefinedError as exc:
        raise RowError(f"template: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise RowError(f"template failed: {exc}") from None


# The roles of the chat-completions API's messages (function: its older form of tool).
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
# A string that starts like this is meant as a JSON conversation.
_JSON_LIST_OF_OBJECTS = re.compile(r"\[\s*\{")


def _without_nulls(value: Any) -> Any:
    """A JSON-like value with null fields left out, recursively, and Arrow maps (lists of
    key-value pairs) as objects: in the API a null field means an absent one, and a
    Spark struct carries every field of every message and part."""
    if isinstance(value, Mapping):
        return {str(k): _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        if value and all(isinstance(kv, tuple) and len(kv) == 2 for kv in value):
            return {str(k): _without_nulls(v) for k, v in value if v is not None}
        return [_without_nulls(v) for v in value]
    return value


def _check_message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise RowError(f"{where}: expected an object with 'role', got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise RowError(f"{where} needs 'role' (one of {', '.join(ROLES)}), got {role!r}")
    content = message.get("content")
    if content is None:
        if role != "assistant":
            raise RowError(f"{where} ({role}) needs 'content'")
        return  # an assistant turn may be only tool calls
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise RowError(
                    f"{where}: content part {j} needs 'type' (text, image_url, …), got {part!r}"
                )
    elif not isinstance(content, str):
        raise RowError(
            f"{where}: content must be a string or a list of parts, got {type(content).__name__}"
        )


def conversation(value: Any, column: str) -> list[dict[str, Any]] | None:
    """The messages when `value` is a conversation, None when it is plain text.

    A conversation is a list of messages, or a string holding one as JSON (it starts
    with `[{`); every shape of message the chat-completions API takes is sent as it is
    (content a string, a list of parts, or absent on an assistant turn with tool calls;
    tool_calls, tool_call_id, name…). Any other string is plain text.
    """
    if isinstance(value, str):
        if not _JSON_LIST_OF_OBJECTS.match(value.lstrip()):
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(
                f"column {column!r} starts like a conversation but is not a JSON messages "
                f"list: {exc.msg} at column {exc.colno}"
            ) from None
    if not isinstance(value, list) or not value:
        raise RowError(
            f"column {column!r}: expected text or a non-empty list of messages, "
            f"got {type(value).__name__}"
        )
    messages = _without_nulls(value)
    for i, message in enumerate(messages):
        _check_message(message, f"column {column!r}: message {i}")
    return list(messages)


def _non_empty(text: str, what: str) -> str:
    if not text.strip():
        raise RowError(f"{what} is empty")
    return text


# One part of a user message: ("text", template) or ("image", column).
Part = tuple[str, str]


class PromptBuilder:
    """Builds the prompt part of a request body for one task (chat, completion, embedding).

    The user message comes from a template, from a column, or (chat) from `content`: text
    and image parts in order, images read as `images.image_parts` says."""

    def __init__(
        self,
        task: str,
        template: str | None = None,
        system: str | None = None,
        column: str | None = None,
        *,
        content: list[Part] | None = None,
        max_image_bytes: int = 20 * 1024 * 1024,
    ) -> None:
        if sum(x is not None for x in (template, column, content)) != 1:
            raise ValueError("exactly one of template, column and content")
        self.task = task
        self.template = template
        self.system = system
        self.column = column
        self.content = content
        self.max_image_bytes = max_image_bytes

    def _content(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        assert self.content is not None
        parts: list[dict[str, Any]] = []
        for kind, source in self.content:
            if kind == "image":
                parts += image_parts(row.get(source), source, self.max_image_bytes)
            else:
                parts.append({"type": "text", "text": render(source, row)})
        return parts

    def _user_text(self, row: Mapping[str, Any]) -> str:
        if self.template is not None:
            return _non_empty(render(self.template, row), "rendered prompt")
        assert self.column is not None
        value = row.get(self.column)
        if value is None:
            raise RowError(f"column {self.column!r} is null")
        if not isinstance(value, str):
            raise RowError(f"column {self.column!r}: expected a string, got {type(value).__name__}")
        return _non_empty(value, f"column {self.column!r}")

    def build(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The request fields for this row: {'messages': [...]}, {'prompt': '...'} or
        {'input': '...'} (embedding: one input of a request that carries many)."""
        if self.task == "completion":
            return {"prompt": self._user_text(row)}
        if self.task == "embedding":
            return {"input": self._user_text(row)}
        if self.column is not None:
            value = row.get(self.column)
            if value is None:
                raise RowError(f"column {self.column!r} is null")
            found = conversation(value, self.column)
            if found is not None:
                return {"messages": found}
        messages: list[dict[str, Any]] = []
        if self.system is not None:
            messages.append({"role": "system", "content": render(self.system, row)})
        user = self._content(row) if self.content is not None else self._user_text(row)
        messages.append({"role": "user", "content": user})
        return {"messages": messages}
