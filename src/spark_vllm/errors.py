"""The package's exceptions, in one place, and how a task's error is known again on the
driver.

Every error spark-vllm raises on purpose is a `SparkVllmError`; its message names the bad
value or the cause and what to do. Three families:

- the input is wrong before anything runs: `SpecError` (the job spec, exit code 2),
  `PromptError` (a template does not parse), `SchemaError` (a structured-output schema
  has no Spark type);
- one row is wrong: `RowError` (it cannot become a request) and `AnswerError` (its answer
  does not fit the schema) make that row an error row, never a crash;
- the job cannot go on: `TaskError`s fail the Spark task that raises them (Spark retries
  it, then fails the job), `JdbcError` (a database refused); the driver's `JobFailed`
  and `JobInterrupted` carry the summary of what was committed, so they live beside it
  (see summary).

A `TaskError` raised in an executor's Python worker reaches the driver as the text of a
PySpark exception; `task_error` finds its class there again and rebuilds it, so the
driver handles it by type.
"""

from __future__ import annotations

# What a JSON "\ud83d" escape without its other half decodes to (some writers emit half an
# emoji this way): no text that UTF-8 (Arrow, Spark, a request to vLLM) can carry. A row
# or answer holding one is an error row, named with these words.
LONE_SURROGATE = "a lone UTF-16 surrogate (half a character, such as \\ud83d), which is not text"


class SparkVllmError(Exception):
    """Base of the errors spark-vllm raises on purpose."""


class SpecError(SparkVllmError, ValueError):
    """The job spec is invalid. The message names the key path, the value and the fix."""


class PromptError(SparkVllmError, ValueError):
    """A template does not parse."""


class SchemaError(SparkVllmError, ValueError):
    """A structured-output schema cannot become columns; the message names the path."""


class RowError(SparkVllmError, ValueError):
    """One row cannot become a request; the message names the cause."""


class AnswerError(SparkVllmError, ValueError):
    """The model's answer does not fit the structured-output schema."""


class JdbcError(SparkVllmError, RuntimeError):
    """The database cannot be reached or refused a statement; the message says why."""


class TaskError(SparkVllmError, RuntimeError):
    """Fails the Spark task that raises it; see `task_error` for the driver's side."""


class SidecarNotReady(TaskError):
    """The sidecar did not become ready before the deadline."""


class SidecarDown(TaskError):
    """The sidecar went down mid-task and did not come back within the outage budget."""


class RowFailed(TaskError):
    """A row failed and the job spec says on_error: fail."""


class ErrorBudgetExceeded(TaskError):
    """More of a task's rows failed than max_error_rate allows."""


class ContextExceeded(TaskError):
    """The job asks for more output tokens (max_tokens) than the served model's context
    holds: every row would fail, so the task refuses before it sends anything."""


def _task_errors(cls: type[TaskError] = TaskError) -> list[type[TaskError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_task_errors(sub)]
    return found


def task_error(exc: BaseException) -> TaskError | None:
    """The TaskError behind `exc`, or None.

    On the driver it is `exc` itself (or its cause). From an executor it arrives as the
    text of the worker's traceback inside PySpark's exception, whose last line of the
    error reads `spark_vllm.errors.SidecarDown: <message>`: the last such line of a
    known class names the class and the message."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TaskError):
            return seen
        seen = seen.__cause__
    text = str(exc)
    best: tuple[int, type[TaskError], str] | None = None
    for cls in _task_errors():
        name = f"{cls.__module__}.{cls.__qualname__}: "
        at = text.rfind(name)
        if at >= 0 and (best is None or at > best[0]):
            message = text[at + len(name) :].split("\n", 1)[0]
            best = (at, cls, message)
    return best[1](best[2]) if best is not None else None


class BudgetUnavailable(TaskError):
    """A task under a budget cannot ask the driver how much of it is left."""
