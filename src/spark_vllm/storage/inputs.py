"""The input: read with Spark for a run, or its columns read without Spark for `validate`.

Spark's readers get the defaults a user's files need: CSV as RFC 4180 writes it, JSON
Lines with a conversation column kept as its JSON text, an OpenAI batch file checked
line by line. An empty input (a 0-byte file, a folder with no data files) is no rows,
not an error; a path or table that is not there is a SpecError.
"""

from __future__ import annotations

import csv
import glob
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_vllm.errors import SpecError
from spark_vllm.request import openai_batch
from spark_vllm.request.openai_batch import BLOCK, FILE, POSITION
from spark_vllm.spec import InputSpec, JobSpec
from spark_vllm.storage import delta, jdbc, results


def read_batch_file(spark: SparkSession, spec: InputSpec) -> DataFrame:
    """Request lines of an OpenAI batch file, their shape checked before any request.

    Raises SpecError naming every line (file:line) that is not a JSON object with a
    non-empty string custom_id, string method and url and an object body, and every
    custom_id found on more than one line."""
    assert spec.path is not None
    lines = (
        spark.read.options(**spec.options)
        .text(spec.path)
        .select(
            "value",
            F.col("_metadata.file_path").alias(openai_batch.FILE),
            F.col("_metadata.file_block_start").alias(openai_batch.BLOCK),
        )
    )
    parsed = openai_batch.read_lines(lines)
    shown, total = openai_batch.shape_problems(parsed, lines)
    if shown:
        more = f"\n  … and {total - len(shown)} more" if total > len(shown) else ""
        raise SpecError(
            f"input.path {spec.path!r} is not a valid OpenAI batch file ({total} "
            f"problem{'s' if total != 1 else ''}); each line is one JSON object such as "
            f"{openai_batch.EXAMPLE}, with a custom_id of its own:\n  " + "\n  ".join(shown) + more
        )
    return parsed.select(*openai_batch.INPUT_SCHEMA.fieldNames())


# A CSV file as RFC 4180 writes it: a header row, quoted fields that may hold line breaks,
# quotes inside them doubled, and each value the text it is (no type inference: `007`
# stays `007`). input.options override each.
CSV_DEFAULTS = {
    "header": "true",
    "multiLine": "true",
    "quote": '"',
    "escape": '"',
    "inferSchema": "false",
}


def _conversation_column(spec: JobSpec) -> str | None:
    """The column that may hold conversations (chat over prompt.column), if any."""
    if spec.task == "chat" and spec.prompt is not None:
        return spec.prompt.column
    return None


_POSITIONS = T.StructType(
    [
        T.StructField("value", T.StringType()),
        T.StructField(FILE, T.StringType()),
        T.StructField(BLOCK, T.LongType()),
        T.StructField(POSITION, T.LongType()),
    ]
)


def _positions(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: (text, file, split start) in, each line's index in its split added
    (see openai_batch.LineCounter)."""
    count = openai_batch.LineCounter()
    for batch in batches:
        files, blocks = batch.column(1).to_pylist(), batch.column(2).to_pylist()
        positions = [count(file, block) for file, block in zip(files, blocks, strict=True)]
        yield pa.RecordBatch.from_arrays(
            [*batch.columns, pa.array(positions, pa.int64())],
            names=_POSITIONS.fieldNames(),
        )


def _refuse_malformed_lines(spark: SparkSession, src: InputSpec, df: DataFrame) -> None:
    """SpecError naming the lines of a JSON Lines input that Spark's parser cannot read as
    a JSON object (it keeps them as corrupt records: a row of nulls, with no id), when
    schema inference found any. The lines are parsed again with Spark's own parser and
    the same options, so exactly the lines Spark refused are named, as file:line."""
    options = {k.lower(): v for k, v in src.options.items()}  # Spark's keys ignore case
    corrupt = options.get("columnnameofcorruptrecord", "_corrupt_record")
    if corrupt not in df.columns or options.get("mode", "PERMISSIVE").upper() != "PERMISSIVE":
        return
    assert src.path is not None
    hint = (
        "fix them, or set input.options.mode: DROPMALFORMED to leave them out of the job "
        "(Spark then drops them without a word)"
    )
    if options.get("multiline", "false") == "true":
        raise SpecError(
            f"input.path {src.path!r} holds JSON that Spark cannot read as objects "
            f"(input.options.multiLine is true, so each file is one JSON document); {hint}"
        )
    lines = (
        spark.read.options(**src.options)  # the same files: pathGlobFilter, recursive…
        .text(src.path)
        .select(
            F.regexp_replace("value", "^\ufeff", "").alias("value"),
            F.col("_metadata.file_path").alias(FILE),
            F.col("_metadata.file_block_start").alias(BLOCK),
        )
        .mapInArrow(_positions, _POSITIONS)
    )
    parsed = lines.where(F.trim("value") != "").withColumn(
        "_parsed", F.from_json("value", df.schema, {**src.options, "mode": "PERMISSIVE"})
    )
    bad = parsed.where(F.col("_parsed").isNull() | F.col(f"_parsed.{corrupt}").isNotNull())
    order = [F.col(FILE), F.col(BLOCK), F.col(POSITION)]
    first = bad.orderBy(*order).limit(openai_batch.SHOWN_PROBLEMS).collect()
    total = len(first) if len(first) < openai_batch.SHOWN_PROBLEMS else bad.count()
    place = openai_batch.place
    shown = [f"{place(lines, r[FILE], r[BLOCK], r[POSITION])}: {r['value'][:80]!r}" for r in first]
    more = f"\n  … and {total - len(shown)} more" if total > len(shown) else ""
    raise SpecError(
        f"input.path {src.path!r} has {total} line{'s' if total != 1 else ''} that "
        "Spark cannot read as a JSON object, so they have no id and no columns (each line "
        'of JSON Lines is one object, such as {"id": "q1", "question": "..."}):\n  '
        + "\n  ".join(shown)
        + more
        + f"\n{hint}"
    )


def _read_json(spark: SparkSession, spec: JobSpec) -> DataFrame:
    """JSON Lines, with a conversation column kept as its JSON text: inferring one type for
    every row's messages would turn a list of content parts into a string. Lines that are
    not JSON objects are refused by file:line (see _refuse_malformed_lines)."""
    assert spec.input.path is not None
    reader = spark.read.options(**spec.input.options)
    df = reader.json(spec.input.path)
    _refuse_malformed_lines(spark, spec.input, df)
    column = _conversation_column(spec)
    if column is None or column not in df.columns:
        return df
    if isinstance(df.schema[column].dataType, T.StringType):
        return df
    schema = T.StructType(
        [T.StructField(f.name, T.StringType()) if f.name == column else f for f in df.schema]
    )
    return reader.schema(schema).json(spec.input.path)


# The session settings our reads of files run under. Partition folders' values stay the
# text the folder names hold (`store=0042` is '0042', not 42; `dt=2024-01-01` is text, not
# a date). Column names are read as the files spell them, so that two that differ only in
# case are found and named (see _refuse_case_twins), not renamed (CSV: `id0`, `Id1`) or
# refused by Spark with COLUMN_ALREADY_EXISTS.
READ_CONF = {
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    "spark.sql.caseSensitive": "true",
}


def _refuse_case_twins(where: str, columns: list[str]) -> None:
    """SpecError naming the columns whose names differ only in case: Spark matches column
    names regardless of case, so the job could not tell them apart."""
    seen: dict[str, list[str]] = {}
    for name in columns:
        seen.setdefault(name.lower(), []).append(name)
    twice = [names[0] for names in seen.values() if len(set(names)) < len(names)]
    if twice:
        raise SpecError(
            f"{where} names a column more than once: {', '.join(map(repr, twice))}. Spark "
            "would rename each by its place (a0, a1), which no template or key names; "
            "rename them in the source"
        )
    twins = [names for names in seen.values() if len(names) > 1]
    if twins:
        said = "; ".join(" and ".join(repr(n) for n in names) for names in twins)
        raise SpecError(
            f"{where} has columns whose names differ only in case: {said}. Spark matches "
            "column names regardless of case, so the job cannot tell them apart; rename "
            "one of each in the source (or select them under other names: input.format "
            "table over a view, or input.jdbc.query)"
        )


def _parquet_types(
    spark: SparkSession, src: InputSpec, df: DataFrame
) -> dict[str, dict[str, list[str]]]:
    """Per column: each type the files give it, and the files (names) that do, for the
    columns given more than one type (each file's footer read by Spark)."""
    found: dict[str, dict[str, list[str]]] = {}
    for path in df.inputFiles()[:_TYPES_FILES]:
        name = path.rsplit("/", 1)[-1]
        for column in spark.read.options(**src.options).parquet(path).schema:
            kinds = found.setdefault(column.name, {})
            kinds.setdefault(column.dataType.simpleString(), []).append(name)
    return {column: kinds for column, kinds in found.items() if len(kinds) > 1}


def _spark_name(kind: pa.DataType) -> str:
    """An Arrow type as Spark names it (int32 is int), for the same words in `validate`
    as in `run`."""
    from pyspark.sql.pandas.types import from_arrow_type

    try:
        return from_arrow_type(kind).simpleString()
    except Exception:  # a type Spark has no name for: Arrow's
        return str(kind)


# Files whose footers are read to name the ones a changed column's types come from.
_TYPES_FILES = 200


def _read_parquet(spark: SparkSession, src: InputSpec) -> DataFrame:
    """Parquet with the files' schemas merged (mergeSchema, unless input.options says
    otherwise): a column int in one file and long in the next is read as long, each value
    as the file holds it. A column given types that do not merge (int in one file,
    string in the next) is refused, naming the column and the files' types; read with
    the first file's type, the run died reading the other files."""
    from py4j.protocol import Py4JJavaError

    assert src.path is not None
    options = {"mergeSchema": "true", **src.options}
    try:
        return spark.read.options(**options).parquet(src.path)
    except Py4JJavaError as exc:  # Spark 4.2 raises it unconverted, from the footers' job
        if "CANNOT_MERGE" not in str(exc.java_exception):
            raise
    files = spark.read.options(**src.options).parquet(src.path)
    raise _types_changed(src.path, _parquet_types(spark, src, files))


def _types_changed(path: str, changed: dict[str, dict[str, list[str]]]) -> SpecError:
    """What `run` and `validate` say of parquet files that give a column types that do
    not merge: per column, each type and (the first three of) its files."""
    said = (
        "\n  ".join(
            f"column {column!r}: "
            + "; ".join(
                f"{kind} in {', '.join(names[:3])}{' …' if len(names) > 3 else ''}"
                for kind, names in kinds.items()
            )
            for column, kinds in changed.items()
        )
        or "(the files' footers could not be told apart)"
    )
    return SpecError(
        f"input.path {path!r}: a column has a different type in different files, "
        f"and the types do not merge:\n  {said}\nrewrite the files with one type for it "
        "(or read them as one type in a view: input.format table)"
    )


def _read_csv(spark: SparkSession, src: InputSpec) -> DataFrame:
    """CSV as CSV_DEFAULTS say. A header that names a column twice (`a,a`, or `id,Id`) is
    refused naming it: Spark would rename such columns by their place (`a0`, `a1`), so a
    template naming `a` would find none of them."""
    assert src.path is not None
    options = {**CSV_DEFAULTS, **src.options}
    df = spark.read.options(**options).csv(src.path)
    if {k.lower(): v for k, v in options.items()}.get("header", "").lower() != "true":
        return df
    first = spark.read.options(**{**options, "header": "false"}).csv(src.path).first()
    if first is not None:
        header = ["" if v is None else str(v) for v in first]
        _refuse_case_twins(src.where(), header)
    return df


def _read(spark: SparkSession, spec: JobSpec) -> DataFrame:
    src = spec.input
    if src.jdbc is not None:
        return jdbc.read(spark, src.jdbc)
    if src.format == "openai-batch":
        return read_batch_file(spark, src)
    if src.format == "table":
        assert src.table is not None
        return spark.table(src.table)
    assert src.path is not None
    if src.format == "parquet":
        return _read_parquet(spark, src)
    if src.format == "jsonl":
        return _read_json(spark, spec)
    if src.format == "binaryFile":
        return spark.read.options(**src.options).format("binaryFile").load(src.path)
    if src.format == "delta":
        return delta.read(spark, src.path, src.options)
    return _read_csv(spark, src)


def read_input(spark: SparkSession, spec: JobSpec) -> DataFrame | None:
    """The input rows, or None when the input holds no rows and no columns (an empty
    file, or a folder with no data files). SpecError for a path or table not there."""
    from pyspark.errors import AnalysisException

    src = spec.input
    # Asked before Spark's reader, which logs a stack trace for a missing path first.
    if src.path is not None and src.jdbc is None and results.matches(spark, src.path) is False:
        raise SpecError(not_there(src.path))
    try:
        if src.format in FILE_FORMATS and src.jdbc is None:
            with results.session_settings(spark, READ_CONF):
                df = _read(spark, spec)
        else:
            df = _read(spark, spec)
    except AnalysisException as exc:
        condition = exc.getCondition()
        if condition == "PATH_NOT_FOUND":
            raise SpecError(not_there(src.path)) from None
        if condition == "TABLE_OR_VIEW_NOT_FOUND":
            raise SpecError(f"input.table {src.table!r} is not in the catalog") from None
        if condition == "UNABLE_TO_INFER_SCHEMA":  # a folder with no data files
            return None
        raise
    if not df.columns and df.isEmpty():  # an empty JSON Lines file
        return None
    _refuse_case_twins(spec.input.where(), df.columns)
    return df


# The formats read from files by Spark's file sources, under READ_CONF.
FILE_FORMATS = ("parquet", "csv", "jsonl", "binaryFile")


# The columns of Spark's binaryFile source, a row per file.
BINARY_FILE_COLUMNS = ("path", "modificationTime", "length", "content")

# Lines of a JSON Lines input that `validate` reads for its columns.
SAMPLE_LINES = 1000


@dataclass
class Columns:
    """An input's columns as read without Spark: `names` None when they were not read
    (`source` says why), `complete` False when only the first lines were read."""

    names: list[str] | None
    source: str
    complete: bool = True
    # Lines that `run` would refuse, as "file:line: what is wrong" (at most SHOWN_PROBLEMS).
    problems: list[str] = field(default_factory=list)


def not_there(path: str | None) -> str:
    """What `run` and `validate` say of an input.path with nothing at it."""
    return f"input.path {path!r} does not exist"


def _local(path: str) -> Path | None:
    parsed = urlparse(path)
    if parsed.scheme not in ("", "file"):
        return None
    return Path(parsed.path if parsed.scheme else path)


# Characters of a Hadoop glob; Python's glob expands all but `{a,b}` alternatives.
_GLOB = re.compile(r"[*?\[{]")


def local_matches(path: str) -> list[Path] | None:
    """What a local input.path (a plain path or file://) names, a glob expanded: none when
    nothing is there. None when this cannot be told without Spark: a remote URL (s3a://,
    hdfs://), or a glob with `{a,b}` alternatives."""
    root = _local(path)
    if root is None:
        return None
    if not _GLOB.search(str(root)):
        return [root] if root.exists() else []
    if "{" in str(root):
        return None
    return [Path(p) for p in sorted(glob.glob(str(root)))]


def _data_files(root: Path) -> list[Path]:
    """The data files under a file or folder, as Spark lists them (hidden names left out)."""
    if root.is_file():
        return [root]
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith(("_", ".")) for part in p.relative_to(root).parts)
    )


def _json_columns(files: list[Path], problems: list[str]) -> tuple[list[str], bool]:
    """The keys of the first SAMPLE_LINES lines, and whether that was every line; a line
    that is not a JSON object is added to `problems` (`run` refuses it)."""
    names: dict[str, None] = {}
    read = 0
    for file in files:
        with file.open(encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                if read == SAMPLE_LINES:
                    return list(names), False
                read += 1
                try:
                    value = json.loads(line.removeprefix("\ufeff"))
                except json.JSONDecodeError as exc:
                    problem = f"not JSON ({exc.msg} at column {exc.colno})"
                else:
                    if isinstance(value, dict):
                        names.update(dict.fromkeys(value))
                        continue
                    problem = f"not a JSON object but {type(value).__name__}"
                if len(problems) < openai_batch.SHOWN_PROBLEMS:
                    problems.append(f"{file.name}:{number}: {problem}: {line.strip()[:80]!r}")
    return list(names), True


def _batch_file_problems(files: list[Path]) -> list[str]:
    """What `run` would refuse in local OpenAI batch files, as file:line (every line is
    read: a batch file holds at most 50,000 requests)."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for file in files:
        with file.open(encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                fields, problem = openai_batch.check_line(line.removeprefix("\ufeff").strip())
                where = f"{file.name}:{number}"
                custom_id = fields.get(openai_batch.ID_COLUMN)
                if problem is None and custom_id is not None:
                    if custom_id in seen:
                        problem = f"custom_id {custom_id!r} is also on {seen[custom_id]}"
                    else:
                        seen[custom_id] = where
                if problem is not None and len(problems) < openai_batch.SHOWN_PROBLEMS:
                    problems.append(f"{where}: {problem}")
    return problems


# The most bytes of local input `validate` reads for its ids; beyond, `run` checks them.
ID_CHECK_BYTES = 256 * 2**20


def bad_ids_text(id_column: str, bad: list[tuple[Any, int]]) -> str:
    """What `run` and `validate` say of `bad`: (id, rows holding it), null or on several
    rows."""
    found = []
    for value, count in bad:
        rows = f"{count} row{'s' if count != 1 else ''}"
        found.append(f"no id (null) on {rows}" if value is None else f"id {value!r} on {rows}")
    return (
        f"input.id_column: column {id_column!r} must hold a unique, non-null id per row; "
        f"found {'; '.join(found)}. Fix the input, or unset input.id_column to derive ids"
    )


def bad_ids_without_spark(spec: JobSpec, shown: int = 5) -> tuple[list[tuple[Any, int]], str]:
    """Ids of input.id_column that are null or on several rows (at most `shown`, with
    their row counts) in a local JSON Lines, CSV or parquet input of at most
    ID_CHECK_BYTES, read without Spark, and what was read; ([], why) when they were not
    read (no id_column, another format, a remote or larger input)."""
    src = spec.input
    column = src.id_column
    if column is None or src.path is None or src.format not in ("jsonl", "csv", "parquet"):
        return [], "no input.id_column of a local JSON Lines, CSV or parquet input"
    matched = local_matches(src.path)
    files = [f for root in matched or [] for f in _data_files(root)]
    if not files:
        return [], f"input.path {src.path!r} is not read here"
    if sum(f.stat().st_size for f in files) > ID_CHECK_BYTES:
        return [], f"input.path {src.path!r} is larger than {ID_CHECK_BYTES // 2**20} MiB"
    counts: Counter[Any] = Counter()
    if src.format == "parquet":
        import pyarrow.parquet as pq

        for file in files:
            if column not in _parquet_schema(file).names:
                return [], f"{file.name} has no column {column!r}"
            counts.update(pq.read_table(file, columns=[column]).column(0).to_pylist())
    elif src.format == "csv":
        settings = {**CSV_DEFAULTS, **{k.lower(): v for k, v in src.options.items()}}
        if settings.get("header", "true").lower() != "true":
            return [], "a CSV input without a header"
        for file in files:
            with file.open(encoding=settings.get("encoding", "utf-8"), newline="") as fh:
                reader = csv.DictReader(
                    (line.removeprefix("\ufeff") for line in fh),
                    delimiter=settings.get("sep", settings.get("delimiter", ",")),
                    quotechar=settings.get("quote", '"'),
                )
                counts.update((row.get(column) or None) for row in reader)  # "": null, as Spark
    else:
        counts.update(_json_ids(files, column))
    bad = [(v, n) for v, n in counts.items() if v is None or n > 1]
    bad.sort(key=lambda item: -item[1])
    return bad[:shown], f"every row of {src.path}"


def _json_ids(files: list[Path], column: str) -> list[Any]:
    """The ids of JSON Lines files as Spark reads them: a column of text and numbers (`"1"`
    and `1`) is read as text, each number as written, so `"1"` and `1` are one id."""
    ids: list[Any] = []
    for file in files:
        with file.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.strip():
                    try:  # Decimal keeps a number's text (1.50), and 1.0 == 1 as doubles
                        value = json.loads(line.removeprefix("\ufeff"), parse_float=Decimal)
                    except json.JSONDecodeError:
                        continue  # the columns' check says so
                    if isinstance(value, dict):
                        found = value.get(column)
                        ids.append(found if not isinstance(found, (dict, list)) else repr(found))
    kinds = {_json_kind(i) for i in ids if i is not None}
    if len(kinds) > 1:  # Spark's one type for text, numbers and booleans together
        return [i if i is None or isinstance(i, str) else _json_text(i) for i in ids]
    return [float(i) if isinstance(i, Decimal) else i for i in ids]


def _json_kind(value: Any) -> str:
    return "text" if isinstance(value, str) else "bool" if isinstance(value, bool) else "number"


def _json_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _parquet_schema(file: Path) -> pa.Schema:
    """The Arrow schema of a local parquet file's footer; SpecError naming the file when
    it is no parquet file (a CSV or JSON Lines file given as parquet, a cut-off file)."""
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(file)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SpecError(
            f"input.format is parquet, but {file} is not a parquet file ({exc}); "
            "set input.format to the format the files have (csv, jsonl, …)"
        ) from None


def _csv_columns(file: Path, options: dict[str, str]) -> list[str]:
    settings = {**CSV_DEFAULTS, **{k.lower(): v for k, v in options.items()}}
    encoding = settings.get("encoding", "utf-8")
    # An Excel "CSV UTF-8" file starts with a byte-order mark, which Spark leaves out too.
    encoding = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    with file.open(encoding=encoding, newline="") as fh:
        first = next(
            csv.reader(
                fh,
                delimiter=settings.get("sep", settings.get("delimiter", ",")),
                quotechar=settings.get("quote", '"'),
            ),
            [],
        )
    if settings.get("header", "true").lower() == "true":
        return first
    return [f"_c{i}" for i in range(len(first))]


def columns_without_spark(spec: JobSpec) -> Columns:
    """The input's columns where reading them is cheap and needs no Spark: the footer of
    a local parquet file, the header of a local CSV file, the keys of the first
    SAMPLE_LINES lines of a local JSON Lines input. SpecError, as `run` says it, for a
    local input.path (or glob) with nothing at it."""
    src = spec.input
    matched = local_matches(src.path) if src.path is not None else None
    if matched == []:
        raise SpecError(not_there(src.path))
    if src.format == "openai-batch":
        names = list(openai_batch.INPUT_SCHEMA.fieldNames())
        if not matched:
            return Columns(names, "the batch format")
        files = [f for root in matched for f in _data_files(root)]
        return Columns(names, f"every line of {src.path}", problems=_batch_file_problems(files))
    if src.format == "delta" and matched and not any((m / "_delta_log").is_dir() for m in matched):
        raise SpecError(
            f"input.path {src.path!r} is not a Delta table (no _delta_log folder in it); "
            "choose the table's folder, or the format its files have"
        )  # as run says it (storage/delta.py)
    if src.format in ("table", "jdbc", "delta"):
        where = {"table": "the catalog", "jdbc": "the database", "delta": "its log"}[src.format]
        return Columns(None, f"input.format {src.format} is read from {where} by Spark")
    if src.format == "binaryFile":
        return Columns(list(BINARY_FILE_COLUMNS), "Spark's binaryFile source")
    assert src.path is not None
    if matched is None:
        where = (
            "is not on this machine's file system"
            if _local(src.path) is None
            else ("is a glob with {a,b} alternatives, which Spark expands")
        )
        return Columns(None, f"input.path {src.path!r} {where}")
    files = [f for root in matched for f in _data_files(root)]
    if not files:
        return Columns(None, f"input.path {src.path!r} holds no data files (an empty input)")
    if src.format in ("csv", "jsonl") and all(f.stat().st_size == 0 for f in files):
        # Spark reads these as no rows (a 0-byte parquet file is no parquet file: below).
        return Columns(None, f"input.path {src.path!r} holds only 0-byte files (an empty input)")
    if src.format == "parquet":
        names = list(_parquet_schema(files[0]).names)
        found: dict[str, dict[str, list[str]]] = {}
        for file in files[:_TYPES_FILES]:
            for column in _parquet_schema(file):
                if pa.types.is_nested(column.type):  # Spark merges structs' fields: run tells
                    continue
                kinds = found.setdefault(column.name, {})
                kinds.setdefault(_spark_name(column.type), []).append(file.name)
        changed = {column: kinds for column, kinds in found.items() if len(kinds) > 1}
        if changed:
            raise _types_changed(src.path, changed)
        # Partition folders (key=value) become columns too.
        root = next(r for r in matched if r == files[0] or r in files[0].parents)
        parts = files[0].relative_to(root).parts[:-1] if root.is_dir() else ()
        names += [p.split("=", 1)[0] for p in parts if "=" in p]
        _refuse_case_twins(src.where(), names)
        return Columns(names, f"the footer of {files[0].name}")
    if src.format == "csv":
        names = _csv_columns(files[0], src.options)
        _refuse_case_twins(src.where(), names)
        return Columns(names, f"the header of {files[0].name}")
    problems: list[str] = []
    names, complete = _json_columns(files, problems)
    _refuse_case_twins(src.where(), names)
    source = "every line" if complete else f"the first {SAMPLE_LINES} lines"
    return Columns(names, f"{source} of {src.path}", complete, problems)
