"""Prompt rendering: turn one input row into the body fields of one request.

Templates are jinja2 over the row's columns (sandboxed, undefined names are errors).
A row that cannot be rendered is not a crash: it raises RowError, and the runner
records it as an error row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.meta
from jinja2.sandbox import SandboxedEnvironment


class PromptError(ValueError):
    """A template does not parse."""


class RowError(ValueError):
    """One row cannot become a request; the message names the cause."""


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


def _messages_from_value(value: Any, column: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(f"column {column!r} is not a JSON messages list: {exc.msg}") from None
    if not isinstance(value, list) or not value:
        raise RowError(f"column {column!r}: expected a non-empty list of messages")
    messages = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping) or "role" not in item or "content" not in item:
            raise RowError(f"column {column!r}: message {i} needs 'role' and 'content'")
        messages.append({k: v for k, v in item.items() if v is not None})
    return messages


def _non_empty(text: str, what: str) -> str:
    if not text.strip():
        raise RowError(f"{what} is empty")
    return text


class PromptBuilder:
    """Builds the prompt part of a request body for one task (chat, completion, embedding)."""

    def __init__(
        self,
        task: str,
        template: str | None = None,
        system: str | None = None,
        column: str | None = None,
    ) -> None:
        if (template is None) == (column is None):
            raise ValueError("exactly one of template and column")
        self.task = task
        self.template = template
        self.system = system
        self.column = column

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
            # A list, or a string holding a JSON list, is a complete conversation.
            if not isinstance(value, str) or value.lstrip().startswith("["):
                return {"messages": _messages_from_value(value, self.column)}
        messages = []
        if self.system is not None:
            messages.append({"role": "system", "content": render(self.system, row)})
        messages.append({"role": "user", "content": self._user_text(row)})
        return {"messages": messages}
