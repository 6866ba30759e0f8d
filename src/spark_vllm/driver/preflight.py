"""Know before you spend: what a run would send, counted without sending it
(`spark-vllm plan`).

The job's own plan runs first (the input read, resume applied: rows in total, done, to
send). Then one Spark job over the rows to send renders each one's request exactly as a
run would and counts its prompt tokens as the server will, chat template included: by
vLLM's `POST /tokenize` when a server serves the model (`ServerTokens`), else with the
model's tokenizer files (`FileTokens`, transformers). Per row it finds, as vLLM treats
the request (`fit_row`), the bound on its output tokens, whether vLLM refuses it (a
prompt that fills the context) and whether its answer gets less room than its
max_tokens. The driver sums that up (`PlanReport`): render failures with
a few ids and reasons, prompt tokens (total, mean, p50, p95, max), the output bound, the
rows over the context with their ids, and, given a throughput (`estimate` in the spec),
the longest the run can take and its GPU-hours.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

from spark_vllm.driver.plan import Plan, largest_max_tokens, map_in_arrow
from spark_vllm.errors import RowError, SpecError
from spark_vllm.request.kinds import (
    COMPLETION_DEFAULT_MAX_TOKENS,
    BatchLine,
    Chat,
    Completion,
    Embedding,
    RequestKind,
    row_request,
)
from spark_vllm.spec import JobSpec
from spark_vllm.task.client import probe, read_api_key, served_context, server_root

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# How many render failures the report shows, and how many ids of rows over the context.
SHOWN_FAILURES = 5
LISTED_IDS = 1000
# Tokenize requests a task keeps in flight.
TOKENIZE_CONCURRENCY = 16
# Keys of a chat request that change how vLLM renders and counts its prompt.
_CHAT_KEYS = (
    "add_generation_prompt",
    "continue_final_message",
    "add_special_tokens",
    "chat_template",
    "chat_template_kwargs",
    "tools",
    "documents",
)

COUNTED_DDL = (
    "id string, error string, prompt_tokens bigint, output_bound bigint, "
    "over_context boolean, short_answer boolean"
)
COUNTED = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("error", pa.string()),  # why the row cannot become a request
        pa.field("prompt_tokens", pa.int64()),
        pa.field("output_bound", pa.int64()),  # most output tokens the row can cost
        pa.field("over_context", pa.bool_()),  # vLLM refuses it
        pa.field("short_answer", pa.bool_()),  # it gets fewer tokens than its max_tokens
    ]
)


@dataclass(frozen=True)
class Counting:
    """What a row's request is counted against: its tokenize `requests` (a chat's
    messages as one, or each prompt or input), the lengths of inputs given as token ids
    (`given`), its max_tokens (else `default_max_tokens`), whether it generates output,
    and its own `truncate_prompt_tokens` if it carries one (-1: the context)."""

    requests: list[dict[str, Any]]
    given: list[int] = field(default_factory=list)
    max_tokens: int | None = None
    generating: bool = True
    default_max_tokens: int | None = None
    truncate_to: int | None = None


def counting(kind: RequestKind, payload: Any) -> Counting:
    """How to count one row's request (`kind.body` of its payload), as vLLM would."""
    body = kind.body([payload])
    if isinstance(kind, BatchLine):
        url = kind.request_url([payload])
        what = "chat" if url.endswith("/chat/completions") else url.rsplit("/", 1)[-1]
    elif isinstance(kind, Chat):
        what = "chat"
    elif isinstance(kind, Completion):
        what = "completions"
    elif isinstance(kind, Embedding):
        what = "embeddings"
    else:  # pragma: no cover - every kind is above
        raise TypeError(f"no token counting for {type(kind).__name__}")
    # A row's LoRA adapter shares the base model's tokenizer: counted by the base model,
    # which the server serves whether or not it has loaded the adapter yet.
    model = body.get("model") if isinstance(kind, BatchLine) else kind.model
    own = body.get("truncate_prompt_tokens")
    truncate_to = own if isinstance(own, int) and not isinstance(own, bool) else None
    if what == "chat":
        request = {"model": model, "messages": body.get("messages")}
        request.update({k: body[k] for k in _CHAT_KEYS if k in body})
        asked = body.get("max_completion_tokens", body.get("max_tokens"))
        return Counting([request], max_tokens=asked, truncate_to=truncate_to)
    key = "prompt" if what == "completions" else "input"
    texts, given = _prompts(body.get(key), key)
    extra = {k: body[k] for k in ("add_special_tokens",) if k in body}
    requests = [{"model": model, "prompt": text, **extra} for text in texts]
    if what == "completions":
        return Counting(
            requests, given, body.get("max_tokens"),
            default_max_tokens=COMPLETION_DEFAULT_MAX_TOKENS, truncate_to=truncate_to,
        )  # fmt: skip
    return Counting(requests, given, generating=False, truncate_to=truncate_to)


def _prompts(value: Any, key: str) -> tuple[list[str], list[int]]:
    """A completion's `prompt` or an embedding's `input`: (texts, the lengths of the
    inputs given as token ids)."""
    if isinstance(value, str):
        return [value], []
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [], [len(value)]
    if isinstance(value, list):
        texts: list[str] = []
        given: list[int] = []
        for item in value:
            found, ids = _prompts(item, key)
            texts += found
            given += ids
        return texts, given
    raise RowError(f"the request's {key!r} is neither text nor token ids: {value!r}"[:300])


@dataclass(frozen=True)
class ServerTokens:
    """Counts with vLLM's `POST /tokenize` at the server's root (the chat template and
    tokenizer the server uses)."""

    root: str
    api_key: str | None = None

    def describe(self) -> str:
        return f"the server's tokenizer ({self.root}/tokenize)"

    def count(self, requests: list[list[dict[str, Any]]]) -> list[list[int] | str]:
        """Per row, the tokens of each of its tokenize requests, or why they failed."""
        return asyncio.run(self._count(requests))

    async def _count(self, requests: list[list[dict[str, Any]]]) -> list[list[int] | str]:
        import aiohttp

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        gate = asyncio.Semaphore(TOKENIZE_CONCURRENCY)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:

            async def one(body: dict[str, Any]) -> int:
                async with gate, session.post(self.root + "/tokenize", json=body) as answer:
                    text = await answer.text()
                    try:
                        data = orjson.loads(text)
                    except orjson.JSONDecodeError:
                        data = text
                    if answer.status != 200 or not isinstance(data, dict):
                        message = data.get("error", data) if isinstance(data, dict) else data
                        if isinstance(message, dict):
                            message = message.get("message", message)
                        raise RowError(f"HTTP {answer.status}: {message}"[:500])
                    return int(data["count"])

            async def row(bodies: list[dict[str, Any]]) -> list[int] | str:
                try:
                    return list(await asyncio.gather(*(one(b) for b in bodies)))
                except RowError as exc:
                    return str(exc)
                except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
                    return f"POST {self.root}/tokenize: {type(exc).__name__}: {exc}"[:500]

            return list(await asyncio.gather(*(row(r) for r in requests)))


@dataclass(frozen=True)
class FileTokens:
    """Counts with the model's own tokenizer files (a directory or a Hugging Face id),
    through transformers, its chat template included."""

    path: str

    def describe(self) -> str:
        return f"the tokenizer files of {self.path}"

    def load(self) -> Any:
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise SpecError(
                "counting tokens without a server needs transformers (pip install "
                f"transformers), which is missing: {exc}"
            ) from None
        return AutoTokenizer.from_pretrained(self.path)

    def count(self, requests: list[list[dict[str, Any]]]) -> list[list[int] | str]:
        tokenizer = _TOKENIZERS.get(self.path)
        if tokenizer is None:
            tokenizer = _TOKENIZERS[self.path] = self.load()
        found: list[list[int] | str] = []
        for bodies in requests:
            try:
                found.append([_count_with(tokenizer, body) for body in bodies])
            except Exception as exc:  # a template that fails on this row, say
                found.append(f"{type(exc).__name__}: {exc}"[:500])
        return found


_TOKENIZERS: dict[str, Any] = {}  # one load per Python worker


def _count_with(tokenizer: Any, body: dict[str, Any]) -> int:
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(p.get("type") != "text" for p in content):
            raise ValueError(
                "a message with image (or other non-text) parts: the tokenizer files do not "
                "know how many tokens the model's processor makes of it; count with a "
                "server (plan without --tokenizer), whose POST /tokenize does"
            )
    if "messages" in body:
        options = dict(body.get("chat_template_kwargs") or {})
        ids = tokenizer.apply_chat_template(
            body["messages"],
            tokenize=True,
            add_generation_prompt=body.get("add_generation_prompt", True),
            continue_final_message=body.get("continue_final_message", False),
            tools=body.get("tools"),
            chat_template=body.get("chat_template"),
            **options,
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # a BatchEncoding
            ids = ids["input_ids"]
        return len(ids)
    special = body.get("add_special_tokens", True)
    return len(tokenizer(body["prompt"], add_special_tokens=special)["input_ids"])


@dataclass(frozen=True)
class CountConfig:
    """What each task of the count needs."""

    kind: RequestKind
    id_column: str
    tokens: ServerTokens | FileTokens
    context: int
    truncate: bool = False  # on_overlong: truncate (no row is over the context)


def count_partition(
    batches: Iterator[pa.RecordBatch], cfg: CountConfig
) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: each row's request rendered and its tokens counted (COUNTED)."""
    for batch in batches:
        # Maps as dicts, as a template reads them (a Spark map holds no key twice).
        rows = batch.to_pylist(maps_as_pydicts="lossy")
        plans: list[Counting | str] = []
        for row in rows:
            try:
                plans.append(counting(cfg.kind, row_request(cfg.kind, row)))
            except RowError as exc:
                plans.append(f"bad input: {exc}")
        todo = [p for p in plans if isinstance(p, Counting)]
        counts = iter(cfg.tokens.count([p.requests for p in todo]) if todo else [])
        out: dict[str, list[Any]] = {name: [] for name in COUNTED.names}
        for row, found in zip(rows, plans, strict=True):
            out["id"].append(str(row[cfg.id_column]))
            error: str | None = None
            fit = Fit(None, None, None, None)
            if isinstance(found, str):
                error = found
            else:
                counted = next(counts)
                if isinstance(counted, str):
                    error = f"cannot count its tokens: {counted}"
                else:
                    fit = fit_row(found, [*counted, *found.given], cfg.context, cfg.truncate)
            out["error"].append(error)
            out["prompt_tokens"].append(fit.prompt_tokens)
            out["output_bound"].append(fit.output_bound)
            out["over_context"].append(fit.over_context)
            out["short_answer"].append(fit.short_answer)
        yield pa.RecordBatch.from_pydict(out, schema=COUNTED)


@dataclass(frozen=True)
class Fit:
    """A row against the context: its prompt tokens, the most output tokens it can cost,
    whether vLLM refuses it (`over_context`), and whether vLLM gives its answer fewer
    tokens than its max_tokens (`short_answer`: the prompt leaves less room)."""

    prompt_tokens: int | None
    output_bound: int | None
    over_context: bool | None
    short_answer: bool | None


def fit_row(found: Counting, counts: list[int], context: int, truncate: bool) -> Fit:
    """As vLLM 0.32 treats a request: a generating prompt of `context` tokens or more is
    refused (an answer needs one token); one that leaves less room than its max_tokens
    is answered with what is left; an embedding input longer than the context is
    refused. A request's own truncate_prompt_tokens, or `truncate` (on_overlong:
    truncate, which cuts a generating prompt to the context minus its max_tokens),
    makes the prompt fit."""
    own = found.truncate_to
    if own is not None:  # vLLM keeps the last `own` tokens of each prompt or input
        keep = context if own == -1 else own
        counts = [min(n, keep) for n in counts]
    prompt = sum(counts)
    if not found.generating:
        return Fit(prompt, 0, max(counts, default=0) > context, False)
    asked = found.max_tokens if found.max_tokens is not None else found.default_max_tokens
    if truncate:  # on_overlong: truncate keeps room for the whole answer
        prompt = min(prompt, max(context - (asked or 1), 1))
    room = context - prompt
    if room <= 0:
        return Fit(prompt, 0, True, False)
    if asked is None:  # vLLM gives what the context leaves
        return Fit(prompt, room, False, False)
    return Fit(prompt, min(asked, room), False, asked > room)


@dataclass
class PlanReport:
    """What `spark-vllm plan` found. Token counts are the server's (or the tokenizer
    files'); `output_bound` is the most output tokens the rows to send can cost; times
    in seconds."""

    spec: str
    tokenizer: str
    context: int
    rows: int
    done: int
    to_send: int
    counted: int = 0
    render_failed: int = 0
    render_failures: list[tuple[str, str]] = field(default_factory=list)
    prompt_tokens: int = 0
    prompt_mean: float = 0.0
    prompt_p50: int = 0
    prompt_p95: int = 0
    prompt_max: int = 0
    output_bound: int = 0
    over_context: int = 0
    over_context_ids: list[str] = field(default_factory=list)
    short_answers: int = 0
    short_answer_ids: list[str] = field(default_factory=list)
    max_tokens: int | None = None  # the largest any row asks (generating jobs)
    output_tokens_per_s: float | None = None
    replicas: int = 1
    gpus_per_replica: int = 1
    note: str = ""
    generating: bool = True  # False: embeddings, which have no output tokens to time
    # Every id was answered already: the counts are of a fresh run (output.mode
    # overwrite), which would send all `to_send` rows; a resume sends none.
    fresh: bool = False

    @property
    def wall_s_at_most(self) -> float | None:
        """The run's length if every row used its whole output bound, at the spec's
        throughput (output tokens/s per replica, all replicas busy); None without a
        throughput, or for embeddings."""
        if not self.output_tokens_per_s or not self.generating:
            return None
        return self.output_bound / (self.output_tokens_per_s * self.replicas)

    @property
    def gpu_hours_at_most(self) -> float | None:
        wall = self.wall_s_at_most
        return None if wall is None else wall * self.replicas * self.gpus_per_replica / 3600

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["render_failures"] = [{"id": i, "reason": r} for i, r in self.render_failures]
        data["wall_s_at_most"] = self.wall_s_at_most
        data["gpu_hours_at_most"] = self.gpu_hours_at_most
        return data

    def render(self) -> str:
        lines = [
            f"spark-vllm plan of {self.spec} (nothing was sent)",
            f"  rows          {self.rows:,}",
            f"  done          {self.done:,} (succeeded in earlier runs)",
            f"  to send       {self.to_send:,}",
        ]
        if self.fresh:
            lines[-1] = (
                f"  to send       0 on resume (every id succeeded); the counts below are of "
                f"a fresh run (--set output.mode=overwrite), which sends {self.to_send:,}"
            )
        if self.note:
            lines.append(f"  {self.note}")
            return "\n".join(lines)
        lines += [
            f"  tokens by     {self.tokenizer}",
            f"  context       {self.context:,} tokens",
            f"  cannot send   {self.render_failed:,} rows (bad input: they become error rows)",
        ]
        lines += [f"    id {i}: {reason}" for i, reason in self.render_failures]
        lines += [
            f"  prompt tokens {self.prompt_tokens:,} in all; per row mean "
            f"{self.prompt_mean:,.1f}, p50 {self.prompt_p50:,}, p95 {self.prompt_p95:,}, "
            f"max {self.prompt_max:,}",
            f"  output tokens at most {self.output_bound:,} (every row's max_tokens, or what "
            "the context leaves it)",
            f"  over context  {self.over_context:,} rows (they would fail)",
        ]
        lines += _ids(self.over_context_ids, self.over_context)
        lines.append(
            f"  short answers {self.short_answers:,} rows (the prompt leaves less room than "
            "max_tokens: vLLM answers with what is left)"
        )
        lines += _ids(self.short_answer_ids, self.short_answers)
        if self.max_tokens is not None and self.max_tokens > self.context:
            lines.append(
                f"  REFUSED       max_tokens {self.max_tokens:,} is more than the context: "
                "a run stops before its first request (exit 2)"
            )
        wall = self.wall_s_at_most
        if not self.generating:
            lines.append("  time          - (embeddings have no output tokens to time)")
        elif wall is None:
            lines.append(
                "  time          give estimate.output_tokens_per_s (per replica, e.g. from "
                "make bench) and estimate.replicas for an estimate"
            )
        else:
            lines += [
                f"  time          at most {_hours(wall)} at {self.output_tokens_per_s:,.0f} "
                f"output tokens/s per replica x {self.replicas} replica(s)",
                f"  GPU-hours     at most {self.gpu_hours_at_most:,.2f} "
                f"({self.gpus_per_replica} GPU(s) per replica)",
            ]
        return "\n".join(lines)


def _ids(ids: list[str], count: int) -> list[str]:
    """The report's line of example ids (the first 20)."""
    shown = ids[:20]
    if not shown:
        return []
    more = count - len(shown)
    return ["    ids " + ", ".join(shown) + (f" and {more:,} more" if more else "")]


def _hours(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


Tokens = ServerTokens | FileTokens


def choose_tokens(spec: JobSpec, tokenizer: str | None) -> tuple[Tokens, int | None]:
    """The server's tokenizer when the spec's endpoint serves the model (and its context
    with it), else the files at `tokenizer`. SpecError when neither is there."""
    base_url, model = spec.endpoint.base_url, spec.endpoint.model
    api_key = read_api_key(spec.endpoint.api_key_env)
    if tokenizer is not None:
        return FileTokens(tokenizer), None
    seen = probe(base_url, model, api_key, timeout=5.0)
    if seen is None:
        return ServerTokens(server_root(base_url), api_key), served_context(
            base_url, model, api_key
        )
    raise SpecError(
        f"plan counts tokens with the server's tokenizer, and none answers: {seen}. Start "
        "one (spark-vllm serve / make serve), or give --tokenizer DIR (the model's "
        "tokenizer files) and --max-model-len N"
    )


def file_context(path: str) -> int | None:
    """The context a model's config.json gives (max_position_embeddings), or None."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
    except Exception:
        return None
    found = getattr(config, "max_position_embeddings", None)
    return int(found) if isinstance(found, int) else None


def count_rows(spec: JobSpec, job: Plan, tokens: Tokens, context: int) -> DataFrame | None:
    """The rows `job` would send, counted (lazily; None: nothing to send): `id` (as
    text), `error` (why the row cannot become a request, or its tokens not be counted),
    `prompt_tokens`, `output_bound` (most output tokens it can cost), `over_context`."""
    if job.to_send is None:
        return None
    cfg = CountConfig(
        job.kind, spec.id_column(), tokens, context, truncate=spec.on_overlong == "truncate"
    )
    return map_in_arrow(job.to_send, partial(count_partition, cfg=cfg), COUNTED_DDL)


def preflight(
    spark: SparkSession,
    spec: JobSpec,
    job: Plan,
    tokens: Tokens,
    context: int,
) -> PlanReport:
    """Count what `job` (the job's plan) would send. One Spark job over the rows to send,
    cached for the report's few aggregations."""
    from pyspark.sql import functions as F

    census = job.census
    report = PlanReport(
        spec=spec.source or "the job spec",
        tokenizer=tokens.describe(),
        context=context,
        rows=census.rows,
        done=census.skipped,
        to_send=census.to_send,
        output_tokens_per_s=spec.estimate.output_tokens_per_s,
        replicas=spec.estimate.replicas,
        gpus_per_replica=spec.estimate.gpus_per_replica,
        note=job.note,
        generating=spec.task != "embedding" or spec.input.format == "openai-batch",
    )
    report.max_tokens = largest_max_tokens(spec, job.census)
    found = count_rows(spec, job, tokens, context)
    if found is None:
        return report
    counted = found.persist()
    try:
        ok = F.col("error").isNull()
        stats = counted.agg(
            F.count(F.lit(1)).alias("rows"),
            F.count(F.when(~ok, 1)).alias("failed"),
            F.coalesce(F.sum("prompt_tokens"), F.lit(0)).alias("total"),
            F.avg("prompt_tokens").alias("mean"),
            F.percentile_approx("prompt_tokens", [0.5, 0.95], 10_000).alias("p"),
            F.max("prompt_tokens").alias("max"),
            F.coalesce(F.sum("output_bound"), F.lit(0)).alias("bound"),
            F.count(F.when(F.col("over_context"), 1)).alias("over"),
            F.count(F.when(F.col("short_answer"), 1)).alias("short"),
        ).first()
        assert stats is not None
        report.counted = int(stats["rows"])
        report.render_failed = int(stats["failed"])
        report.prompt_tokens = int(stats["total"])
        report.prompt_mean = float(stats["mean"] or 0.0)
        p50, p95 = stats["p"] or (0, 0)
        report.prompt_p50, report.prompt_p95 = int(p50 or 0), int(p95 or 0)
        report.prompt_max = int(stats["max"] or 0)
        report.output_bound = int(stats["bound"])
        report.over_context = int(stats["over"])
        report.short_answers = int(stats["short"])
        if report.render_failed:
            failures = counted.where(~ok).orderBy("id").limit(SHOWN_FAILURES).collect()
            report.render_failures = [(r["id"], r["error"]) for r in failures]
        if report.over_context:
            over = counted.where(F.col("over_context")).orderBy("id").limit(LISTED_IDS)
            report.over_context_ids = [r["id"] for r in over.select("id").collect()]
        if report.short_answers:
            short = counted.where(F.col("short_answer")).orderBy("id").limit(LISTED_IDS)
            report.short_answer_ids = [r["id"] for r in short.select("id").collect()]
    finally:
        counted.unpersist()
    return report
