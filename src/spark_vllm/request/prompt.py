"""Prompt rendering: turn one input row into the body fields of one request.

Templates are jinja2 over the row's columns (sandboxed, undefined names are errors).
A row that cannot be rendered is not a crash: it raises RowError, and the runner
records it as an error row.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Mapping
from functools import lru_cache
from types import FrameType
from typing import Any

import jinja2
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from spark_vllm.errors import PromptError, RowError
from spark_vllm.request.images import image_parts


class _NullValue(Exception):
    pass


class _Exceeded(Exception):
    """A template went past one of the bounds below."""


def _refuse_null(value: Any) -> Any:
    # jinja2 would print a null column as "None"; a prompt built on that is wrong.
    if value is None:
        raise _NullValue
    return value


# Bounds on what one row's template may do: a template is the spec author's, but the values
# it runs over are the rows', and one row must not stall or exhaust its task.
MAX_OUTPUT_CHARS = 1_000_000  # far more than any model's context holds
MAX_RANGE = 10_000  # items of one range()
MAX_STEPS = 1_000_000  # template lines run for one row (loops inside loops)
MAX_NUMBER_BITS = 256  # no ** that builds a number past this
# A printf or str.format field width (or precision) of a million or more, or one taken
# from an argument.
_WIDE = re.compile(r"%[-+ #0]*(\*|\d{6,}|\d*\.(\*|\d{6,}))|\{[^{}]*:[^{}]*(\d{6,}|\{)")
# Methods and filters whose number arguments are sizes of what they build.
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_SIZED_FILTERS = frozenset({"center", "indent", "wordwrap", "batch", "slice", "format"})


def _size(value: Any) -> int:
    """About how many characters `value` prints as (a list: its items')."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list | tuple):
        return len(value) + sum(_size(v) for v in value[:MAX_RANGE]) * max(
            len(value) // MAX_RANGE, 1
        )
    return 16


def _check_built(size: int) -> None:
    if size > MAX_OUTPUT_CHARS:
        raise _Exceeded("a value built past the template's output bound")


def _check_sizes(args: tuple[Any, ...], formats: bool = False) -> None:
    """Refuse a number argument past the output bound; with `formats`, a format string
    with a field wider than it."""
    for arg in args:
        if isinstance(arg, int) and abs(arg) > MAX_OUTPUT_CHARS:
            raise _Exceeded("a size argument past the template's output bound")
        if formats and isinstance(arg, str) and _WIDE.search(arg):
            raise _Exceeded("a format width past the template's output bound")


def _check_join(items: Any, sep: Any) -> None:
    if isinstance(items, list | tuple | str) and isinstance(sep, str):
        _check_built(_size(list(items)) + len(sep) * max(len(items) - 1, 0))


def _check_replace(text: Any, old: Any, new: Any) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        count = text.count(old) if old else len(text) + 1
        _check_built(len(text) + count * max(len(new) - len(old), 0))


class _Bounded(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox (no Python internals, no changing the row's values) with
    bounds on powers, repeats, concatenations, padding, joins, replacements and format
    widths: checked before the value is built."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if (
            operator == "**"
            and isinstance(right, int)
            and isinstance(left, int | float)
            and abs(right) * max(int(abs(left)), 2).bit_length() > MAX_NUMBER_BITS
        ):
            raise _Exceeded("a power past the template's bounds")
        if operator == "*":
            for a, b in ((left, right), (right, left)):
                if isinstance(a, str | list | tuple) and isinstance(b, int):
                    _check_built(_size(a) * b)
        if operator == "+" and isinstance(left, str | list | tuple):
            _check_built(_size(left) + _size(right))
        if operator == "%" and isinstance(left, str):
            _check_sizes((left,), formats=True)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Any:
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str):
            _check_sizes((owner,), formats=True)
        return super().wrap_str_format(value)

    def call(self, context: Any, obj: Any, *args: Any, **kwargs: Any) -> Any:
        for arg in (*args, *kwargs.values()):  # a macro calling itself with growing text
            _check_built(_size(arg) if isinstance(arg, str) else 0)
        owner = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", "")
        if isinstance(owner, str):
            if name in _PADDING_METHODS:
                _check_sizes((*args, *kwargs.values()))
            elif name == "join" and args:
                items = list(args[0])
                _check_join(items, owner)
                args = (items, *args[1:])
            elif name == "replace" and len(args) >= 2:
                _check_replace(owner, args[0], args[1])
        return super().call(context, obj, *args, **kwargs)


class _Namespace(Namespace):
    """jinja2's namespace(), whose values may not grow past the output bound (a loop
    doubling a text in one would, long before any output)."""

    def __setitem__(self, name: str, value: Any) -> None:
        _check_built(_size(value))
        super().__setitem__(name, value)


def _bounded_range(*args: int) -> range:
    found = range(*args)
    if len(found) > MAX_RANGE:
        raise _Exceeded(f"range() of more than {MAX_RANGE:,} items")
    return found


def _bounded_filter(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_sizes((*args, *kwargs.values()), formats=name == "format")
        return fn(*args, **kwargs)

    return bounded


def _bounded_join(fn: Any) -> Any:
    @functools.wraps(fn)
    def bounded(eval_ctx: Any, value: Any, d: Any = "", attribute: Any = None) -> Any:
        if attribute is None:
            _check_join(value if isinstance(value, list | tuple | str) else list(value), d)
            value = value if isinstance(value, list | tuple | str) else list(value)
        return fn(eval_ctx, value, d, attribute)

    return bounded


def _bounded_replace(fn: Any) -> Any:
    @functools.wraps(fn)
    def bounded(eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> Any:
        if count is None:
            _check_replace(s, old, new)
        return fn(eval_ctx, s, old, new, count)

    return bounded


_ENV = _Bounded(undefined=jinja2.StrictUndefined, autoescape=False, finalize=_refuse_null)
_ENV.globals["range"] = _bounded_range
_ENV.globals["namespace"] = _Namespace
del _ENV.globals["lipsum"]  # paragraphs of filler by the million: no use in a prompt
_ENV.filters.update({n: _bounded_filter(n, _ENV.filters[n]) for n in _SIZED_FILTERS})
_ENV.filters["join"] = _bounded_join(_ENV.filters["join"])
_ENV.filters["replace"] = _bounded_replace(_ENV.filters["replace"])


# The row's columns by name, for a name a template cannot spell as a variable
# (`row['customer name']`, `row['ticket.id']`): BI exports write such names.
ROW = "row"


def template_variables(source: str) -> set[str]:
    """The input columns a template reads: its top-level names, and the quoted names
    it reads from `row`. PromptError for a template that does not parse, or that reads
    `row` other than by a quoted column name (the job reads only the columns named)."""
    try:
        ast = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise PromptError(f"line {exc.lineno}: {exc.message}{_spaced_name_hint(source)}") from None
    names = set(jinja2.meta.find_undeclared_variables(ast))
    if ROW not in names:
        return names
    names.discard(ROW)
    uses = [n for n in ast.find_all(jinja2.nodes.Name) if n.name == ROW and n.ctx == "load"]
    quoted = [
        n.arg.value
        for n in ast.find_all(jinja2.nodes.Getitem)
        if isinstance(n.node, jinja2.nodes.Name)
        and n.node.name == ROW
        and isinstance(n.arg, jinja2.nodes.Const)
        and isinstance(n.arg.value, str)
    ]
    if len(quoted) != len(uses):
        raise PromptError(
            f"`{ROW}` is the row's columns by name: read one as {ROW}['customer name'], "
            "the name in quotes (a column named row is row['row'])"
        )
    return names | set(quoted)


# `{{ customer name }}`: words apart, as a BI export's column name, where jinja wants one
# expression. Jinja's own words (`a and b`) do not count.
_SPACED = re.compile(r"\{\{-?\s*([A-Za-z_][\w.]*(?:[ \t]+[\w.]+)+)\s*-?\}\}")
_JINJA_WORDS = {"and", "or", "not", "in", "is", "if", "else", "true", "false", "none"}


def _spaced_name_hint(source: str) -> str:
    """How to read a column whose name has a space, if the template writes one bare."""
    for found in _SPACED.finditer(source):
        name = found.group(1)
        if not _JINJA_WORDS & {w.lower() for w in name.split()}:
            return (
                f"; a column name with a space is read as {{{{ {ROW}['{name}'] }}}}, "
                f"not {found.group(0)}"
            )
    return ""


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


class _Steps:
    """Counts the lines a template runs, in this thread only, and stops it past MAX_STEPS:
    a loop over a loop needs no output to run for hours."""

    def __init__(self) -> None:
        self.left = MAX_STEPS

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename != "<template>":
            return None
        return self._line

    def _line(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.left -= 1
            if self.left < 0:
                raise _Exceeded(f"more than {MAX_STEPS:,} template steps")
        return self._line


def _run(template: jinja2.Template, row: Mapping[str, Any]) -> str:
    """The template's output for the row, within the bounds above."""
    previous = sys.gettrace()
    sys.settrace(_Steps())
    try:
        chunks: list[str] = []
        size = 0
        for chunk in template.generate({**row, ROW: row}):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise _Exceeded(f"more than {MAX_OUTPUT_CHARS:,} characters of output")
            chunks.append(chunk)
        return "".join(chunks)
    finally:
        sys.settrace(previous)


def _template_line(exc: BaseException) -> int | None:
    """The template line an error was raised at (jinja2 rewrites its traceback so that
    the template's frames carry the template's line numbers)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# jinja2's message for a name the template reads that the row lacks: it names the
# template's own variable, never a value of the row.
_UNDEFINED_NAME = re.compile(r"'([A-Za-z_][A-Za-z0-9_]*)' is undefined")


def _columns_of(source: str) -> str:
    return ", ".join(repr(n) for n in sorted(template_variables(source))) or "none"


def render(source: str, row: Mapping[str, Any]) -> str:
    """The template's output for the row; RowError when it cannot be rendered.

    The error names the template's line and the columns it reads, never a value of the
    row: error texts reach the run's summary, and a row's values may be anything."""
    try:
        return _run(_compile(source), row)
    except _NullValue:
        nulls = sorted(n for n in template_variables(source) if row.get(n) is None)
        raise RowError(f"template prints a null value; null column(s): {nulls}") from None
    except _Exceeded as exc:
        raise RowError(f"template stopped: {exc}") from None
    except jinja2.UndefinedError as exc:
        found = _UNDEFINED_NAME.fullmatch(exc.message or "")
        if found is not None and found.group(1) in template_variables(source):
            raise RowError(f"template: {exc.message}") from None
        where = _template_line(exc)
        raise RowError(
            f"template{f' line {where}' if where else ''}: reads an attribute or key a "
            f"value does not have (it reads columns {_columns_of(source)})"
        ) from None
    except Exception as exc:  # anything a row's values make a template raise
        where = _template_line(exc)
        raise RowError(
            f"template failed{f' at line {where}' if where else ''}: "
            f"{type(exc).__name__} (it reads columns {_columns_of(source)})"
        ) from None


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
        got = "has none" if role is None else "is none of these"
        raise RowError(f"{where} needs 'role' (one of {', '.join(ROLES)}); its role {got}")
    content = message.get("content")
    if content is None:
        if role != "assistant":
            raise RowError(f"{where} ({role}) needs 'content'")
        return  # an assistant turn may be only tool calls
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise RowError(
                    f"{where}: content part {j} needs 'type' (text, image_url, …), got a "
                    f"{type(part).__name__} without one"
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
        except RecursionError:
            raise RowError(
                f"column {column!r} starts like a conversation but its JSON is nested too "
                "deeply to read"
            ) from None
    if not isinstance(value, list) or not value:
        raise RowError(
            f"column {column!r}: expected text or a non-empty list of messages, "
            f"got {type(value).__name__}"
        )
    try:
        messages = _without_nulls(value)
    except RecursionError:
        raise RowError(f"column {column!r}: the messages are nested too deeply") from None
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
    and image parts in order, images read as `images.image_parts` says (files only under
    `image_prefixes`)."""

    def __init__(
        self,
        task: str,
        template: str | None = None,
        system: str | None = None,
        column: str | None = None,
        *,
        content: list[Part] | None = None,
        max_image_bytes: int = 20 * 1024 * 1024,
        image_prefixes: tuple[str, ...] = (),
    ) -> None:
        if sum(x is not None for x in (template, column, content)) != 1:
            raise ValueError("exactly one of template, column and content")
        self.task = task
        self.template = template
        self.system = system
        self.column = column
        self.content = content
        self.max_image_bytes = max_image_bytes
        self.image_prefixes = image_prefixes

    def _content(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        assert self.content is not None
        parts: list[dict[str, Any]] = []
        for kind, source in self.content:
            if kind == "image":
                got = row.get(source)
                parts += image_parts(got, source, self.max_image_bytes, self.image_prefixes)
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
