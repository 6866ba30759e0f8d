"""SQL databases over JDBC: the input read in parallel, the results written once.

Reading is Spark's JDBC source (`dbtable`, or a query wrapped as a subquery so that it
can be partitioned too). Writing goes through a staging table: the tasks insert this
run's rows into `<table>__spark_vllm_<run id>`, then one transaction on the driver moves
them into the target (append, overwrite, or upsert by id with MERGE) and drops the
staging table. A task that Spark ran twice, or a failed task's partial insert, can leave
copies of an id in staging; the move keeps one row per id (a success before a failure),
so the target never gets an id twice from one run.
"""

from __future__ import annotations

import os
import re
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_vllm.errors import JdbcError, SpecError
from spark_vllm.redact import redact
from spark_vllm.spec import JdbcConnection, JdbcInput, JdbcOutput
from spark_vllm.storage.fingerprint import RunRecord

# The run column: which run wrote a row of the target table.
RUN_COLUMN = "run"


def _java_cause(exc: Exception) -> str:
    """The innermost Java exception's message of a py4j error (the driver's own words)."""
    throwable = getattr(exc, "java_exception", None)
    if throwable is None:
        return str(exc)
    while throwable.getCause() is not None:
        throwable = throwable.getCause()
    return str(throwable.getMessage() or throwable.toString())


# Driver classes for the JDBC URL schemes the manual documents (docs/job-spec.md).
KNOWN_DRIVERS = {
    "jdbc:postgresql:": "org.postgresql.Driver",
    "jdbc:sqlserver:": "com.microsoft.sqlserver.jdbc.SQLServerDriver",
}


def driver_class(conn: JdbcConnection) -> str | None:
    if conn.driver:
        return conn.driver
    return next((c for prefix, c in KNOWN_DRIVERS.items() if conn.url.startswith(prefix)), None)


def properties(conn: JdbcConnection, where: str) -> dict[str, str]:
    """Connection properties: the spec's, the driver class, and the credentials read from
    the environment variables the spec names (on Kubernetes, filled from a Secret)."""
    props = dict(conn.properties)
    for key, env in (("user", conn.user_env), ("password", conn.password_env)):
        if env is None:
            continue
        value = os.environ.get(env)
        if not value:
            raise SpecError(
                f"{where}.{key}_env names {env!r}, but that environment variable is not set "
                f"or empty here; set it (on Kubernetes, from a Secret) or remove {key}_env"
            )
        props[key] = value
    driver = driver_class(conn)
    if driver:
        props["driver"] = driver
    return props


def quote_spark(name: str) -> str:
    """A column name for Spark's parser."""
    return "`" + name.replace("`", "``") + "`"


def quote(name: str) -> str:
    """An identifier in ANSI double quotes (PostgreSQL; SQL Server with QUOTED_IDENTIFIER)."""
    return '"' + name.replace('"', '""') + '"'


_QUOTED = re.compile(r'"(?:[^"]|"")+"')


def quote_table(name: str) -> str:
    """schema.table, each part quoted unless it already is (properly)."""
    return ".".join(p if _QUOTED.fullmatch(p) else quote(p) for p in name.split("."))


# The statements below are built from identifiers only (quoted by quote/quote_table);
# no value from the data is ever spliced into SQL.


# Database types whose values Spark's JDBC source would not give as the database holds
# them, read as the database's own text instead (PostgreSQL's names; an array's type is
# its element's with `_` before it): numeric past Spark's 38 digits, or unconstrained
# (Spark reads it as decimal(38,18): 40 digits fail, 1/3 loses digits); timestamptz and
# timetz (Spark drops the offset and shows the instant in the session's time zone); money
# (Spark reads '$1,000.00' as a double, or fails).
_AS_TEXT = {"timestamptz", "timetz", "money", "interval"}
# Spark's largest decimal precision.
_DECIMAL_DIGITS = 38


def text_columns(columns: list[tuple[str, str, int]]) -> dict[str, str]:
    """The Spark type (string, or array<string>) each column of (name, database type,
    precision) is read as when its values would not reach the job as the database holds
    them (see _AS_TEXT)."""
    read: dict[str, str] = {}
    for name, kind, precision in columns:
        element = kind.lower().removeprefix("_")
        if element in ("numeric", "decimal"):
            as_text = not 0 < precision <= _DECIMAL_DIGITS
        else:
            as_text = element in _AS_TEXT
        if as_text:
            read[name] = "array<string>" if kind.startswith("_") else "string"
    return read


def read(spark: SparkSession, src: JdbcInput) -> DataFrame:
    database = Database(spark, src, "input.jdbc")
    database.check()  # a clear message, not Spark's redacted one
    reader = spark.read.format("jdbc").option("url", src.url)
    reader = reader.options(**properties(src, "input.jdbc"))
    # A subquery rather than Spark's `query` option, which cannot be partitioned.
    dbtable = src.table if src.table is not None else f"({src.query}) spark_vllm_input"
    reader = reader.option("dbtable", dbtable)
    as_text = text_columns(database.column_types(dbtable))
    if as_text:
        reader = reader.option(
            "customSchema", ", ".join(f"{quote_spark(n)} {t}" for n, t in as_text.items())
        )
    if src.partition_column is not None:
        reader = reader.options(
            partitionColumn=src.partition_column,
            lowerBound=str(src.lower_bound),
            upperBound=str(src.upper_bound),
            numPartitions=str(src.num_partitions),
        )
    if src.fetch_size is not None:
        reader = reader.option("fetchsize", str(src.fetch_size))
    return reader.load()


class Database:
    """A JDBC connection from the driver's JVM, for the statements Spark cannot run."""

    def __init__(self, spark: SparkSession, conn: JdbcConnection, where: str) -> None:
        self.spark = spark
        self.url = conn.url
        self.where = where
        self.props = properties(conn, where)

    def _connect(self) -> Any:
        from py4j.protocol import Py4JJavaError

        try:
            return self._open()
        except Py4JJavaError as exc:
            raise JdbcError(
                self._redacted(f"cannot connect to {self.url}: {_java_cause(exc)}")
            ) from None

    def _redacted(self, text: str) -> str:
        """`where: text` without the URL's password or the credentials read for it."""
        return f"{self.where}: " + redact(text, (self.props.get("password"),))

    def check(self) -> None:
        """Connect once, to fail early and clearly (bad URL, credentials, no driver)."""
        self._connect().close()

    def _open(self) -> Any:
        jvm = self.spark.sparkContext._jvm
        assert jvm is not None
        jprops = jvm.java.util.Properties()
        for key, value in self.props.items():
            jprops.setProperty(key, value)
        name = self.props.get("driver")
        if name:
            # Through Spark's class loader: it sees jars added with spark.jars / --jars,
            # which java.sql.DriverManager does not.
            cls = jvm.org.apache.spark.util.Utils.classForName(name, True, False)
            connection = cls.newInstance().connect(self.url, jprops)
            if connection is None:
                raise JdbcError(self._redacted(f"driver {name} does not accept the url {self.url}"))
            return connection
        return jvm.java.sql.DriverManager.getConnection(self.url, jprops)

    def column_types(self, dbtable: str) -> list[tuple[str, str, int]]:
        """(name, the database's type name, precision) of each column of `dbtable` (a
        table, or a subquery with an alias), from a query that reads no row."""
        connection = self._connect()
        try:
            statement = connection.prepareStatement(f"SELECT * FROM {dbtable} WHERE 1=0")
            try:
                meta = statement.getMetaData()
                return [
                    (
                        str(meta.getColumnLabel(i)),
                        str(meta.getColumnTypeName(i)),
                        int(meta.getPrecision(i)),
                    )
                    for i in range(1, meta.getColumnCount() + 1)
                ]
            except Exception as exc:
                raise JdbcError(self._redacted(_java_cause(exc))) from None
            finally:
                statement.close()
        finally:
            connection.close()

    def table_names(self, schema: str | None) -> list[str]:
        """The tables of `schema` (default: the connection's current schema)."""
        connection = self._connect()
        try:
            schema = schema or str(connection.getSchema())
            found = connection.getMetaData().getTables(None, schema, "%", None)
            names = []
            while found.next():  # the schema argument is a LIKE pattern: match it exactly
                if found.getString("TABLE_SCHEM") == schema:
                    names.append(str(found.getString("TABLE_NAME")))
            found.close()
            return names
        finally:
            connection.close()

    def has_table(self, table: str) -> bool:
        schema, name = split_table(table)
        return name in self.table_names(schema)

    def run_in_transaction(self, statements: list[str]) -> list[int]:
        """Run the statements in one transaction; the update count of each."""
        connection = self._connect()
        try:
            connection.setAutoCommit(False)
            counts = []
            statement = connection.createStatement()
            try:
                for sql in statements:
                    statement.execute(sql)
                    counts.append(int(statement.getUpdateCount()))
                connection.commit()
            except Exception as exc:
                connection.rollback()
                raise JdbcError(self._redacted(_java_cause(exc))) from None
            finally:
                statement.close()
            return counts
        finally:
            connection.close()


def read_table(spark: SparkSession, out: JdbcOutput, table: str | None = None) -> DataFrame:
    return (
        spark.read.format("jdbc")
        .option("url", out.url)
        .options(**properties(out, "output.jdbc"))
        .option("dbtable", quote_table(table or out.table))
        .load()
    )


def split_table(table: str) -> tuple[str | None, str]:
    """(schema or None, name) of `schema.table`, quotes taken off."""
    *schema, name = table.split(".")
    return (schema[-1].strip('"') if schema else None), name.strip('"')


def _staging_prefix(out: JdbcOutput) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", split_table(out.table)[1]) + "__spark_vllm_"


def _sibling(out: JdbcOutput, name: str) -> str:
    """A table name in the target's schema."""
    return ".".join([*out.table.split(".")[:-1], name])


def staging_table(out: JdbcOutput, run_id: str) -> str:
    return _sibling(out, _staging_prefix(out) + run_id.lower())


# A run id as it appears in a staging table's name (see results.new_run_id, lowered).
_RUN_ID = re.compile(r"\d{8}t\d{12}z")


def leftover_staging(spark: SparkSession, out: JdbcOutput) -> list[str]:
    """Staging tables of this target that no driver moved (it died), oldest first."""
    names = Database(spark, out, "output.jdbc").table_names(split_table(out.table)[0])
    prefix = _staging_prefix(out)
    return [
        _sibling(out, n)
        for n in sorted(names)
        if n.startswith(prefix) and _RUN_ID.fullmatch(n[len(prefix) :])
    ]


def runs_table(out: JdbcOutput) -> str:
    """The table of the target's run records (run, record): one row per run."""
    return _sibling(out, _staging_prefix(out) + "runs")


def summaries_table(out: JdbcOutput) -> str:
    """The table of the target's run summaries (run, summary: its JSON document)."""
    return _sibling(out, _staging_prefix(out) + "summaries")


def _append_text(
    spark: SparkSession, out: JdbcOutput, table: str, column: str, row: tuple[str, str]
) -> None:
    """Append (run, text) to `table` (columns run and `column`), created with the
    database's own text type when missing."""
    (
        spark.createDataFrame([row], f"run string, {column} string")
        .write.format("jdbc")
        .option("url", out.url)
        .options(**properties(out, "output.jdbc"))
        .option("dbtable", quote_table(table))
        .mode("append")
        .save()
    )


def _read_texts(spark: SparkSession, out: JdbcOutput, table: str, column: str) -> dict[str, str]:
    """{run: text} of `table`'s columns run and `column` (none when it is missing)."""
    if not Database(spark, out, "output.jdbc").has_table(table):
        return {}
    rows = read_table(spark, out, table).select("run", column).collect()
    return {r["run"]: r[column] for r in rows}


def write_record(spark: SparkSession, out: JdbcOutput, record: RunRecord) -> None:
    """Record a run's fingerprint (before the run stages any row)."""
    _append_text(spark, out, runs_table(out), "record", (record.run, record.to_json()))


def read_records(spark: SparkSession, out: JdbcOutput) -> dict[str, RunRecord]:
    """The run records of the target, by run id (none when the table is missing)."""
    texts = _read_texts(spark, out, runs_table(out), "record")
    return {run: RunRecord.from_json(run, text) for run, text in texts.items()}


def write_summary(spark: SparkSession, out: JdbcOutput, run_id: str, text: str) -> None:
    """Leave a run's summary (its JSON document) beside the target."""
    _append_text(spark, out, summaries_table(out), "summary", (run_id, text))


def read_summaries(spark: SparkSession, out: JdbcOutput) -> dict[str, str]:
    """The JSON summaries of the target's runs, by run id."""
    return _read_texts(spark, out, summaries_table(out), "summary")


def recover(spark: SparkSession, out: JdbcOutput, id_column: str) -> list[str]:
    """Move the rows a crashed driver left staged into the target (they are answers the
    next run need not ask for again); with write_mode overwrite, drop them instead."""
    leftovers = leftover_staging(spark, out)
    for table in leftovers:
        if out.write_mode == "overwrite":
            Database(spark, out, "output.jdbc").run_in_transaction(
                [f"DROP TABLE {quote_table(table)}"]
            )
        else:
            move_rows(spark, out, table, id_column)
    return leftovers


def write_staging(df: DataFrame, out: JdbcOutput, run_id: str) -> str:
    """Insert this run's rows (with the run column) into a fresh staging table."""
    table = staging_table(out, run_id)
    # PostgreSQL's text cannot hold NUL, which a model may emit: write U+FFFD instead.
    text = [f.name for f in df.schema.fields if isinstance(f.dataType, T.StringType)]
    df = df.withColumns(
        {c: F.regexp_replace(F.col(quote_spark(c)), "\u0000", "\ufffd") for c in text}
    )
    (
        df.withColumn(RUN_COLUMN, F.lit(run_id))
        .write.format("jdbc")
        .option("url", out.url)
        .options(**properties(out, "output.jdbc"))
        .option("dbtable", quote_table(table))
        .option("batchsize", str(out.batch_size))
        .mode("overwrite")
        .save()
    )
    return table


def move_rows(spark: SparkSession, out: JdbcOutput, staging: str, id_column: str) -> None:
    """One transaction: staging → target (append / overwrite / upsert), staging dropped.

    The target is created first, empty and shaped like staging, if it does not exist.
    """
    db = Database(spark, out, "output.jdbc")
    target = quote_table(out.table)
    if not db.has_table(out.table):
        read_table(spark, out, staging).limit(0).write.format("jdbc").option(
            "url", out.url
        ).options(**properties(out, "output.jdbc")).option("dbtable", target).mode("append").save()
    columns = read_table(spark, out, staging).columns
    cols = ", ".join(quote(c) for c in columns)
    key = quote(id_column)
    # One row per id: a success before a failure (copies come from task re-runs).
    source = (
        f"SELECT {cols} FROM (SELECT {cols}, ROW_NUMBER() OVER (PARTITION BY {key} "
        f"ORDER BY CASE WHEN {quote('error')} IS NULL THEN 0 ELSE 1 END) AS spark_vllm_n "
        f"FROM {quote_table(staging)}) s WHERE spark_vllm_n = 1"
    )
    statements = []
    if out.write_mode == "overwrite":
        statements.append(f"DELETE FROM {target}")
    if out.write_mode == "upsert":
        updates = ", ".join(f"{quote(c)} = s.{quote(c)}" for c in columns if c != id_column)
        values = ", ".join(f"s.{quote(c)}" for c in columns)
        statements.append(
            f"MERGE INTO {target} t USING ({source}) s ON t.{key} = s.{key} "
            f"WHEN MATCHED THEN UPDATE SET {updates} "
            f"WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({values})"
        )
    else:
        statements.append(f"INSERT INTO {target} ({cols}) {source}")
    statements.append(f"DROP TABLE {quote_table(staging)}")
    db.run_in_transaction(statements)
