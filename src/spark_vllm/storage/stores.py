"""Where a job's output lives: files under `output.path`, a Delta table, or a table over JDBC.

One interface for both, used by the driver in this order:

1. `prepare()` makes the output ready for the run and says whether earlier runs are
   there to resume from. Its side effect is an explicit step with its own name:
   `JdbcStore.recover_staging` (the staging tables a driver that died left behind);
   `begin()`, once the run is about to send (the sidecar is ready), clears an output
   that output.mode overwrite replaces (`FileStore.delete`), so a run stopped before
   that leaves the earlier output as it was. Overwrite deletes only an output a job
   wrote (its marker file, see results): `prepare()` refuses any other path before
   anything starts, and the delete asks again;
2. `records()` / `record(...)`: what each run recorded before it sent anything (its
   fingerprint, see fingerprint);
3. `attempts(...)`: every row ever written, with the `run` column (resume and the
   summary read the latest attempt per id from it);
4. `write(result, run_id)` writes a run's rows as the tasks commit them, and
   `finish(run_id)` completes the run (JDBC: one transaction moves the staged rows into
   the table; Delta: one commit), also after a task failed for good;
5. `this_run(...)`: the rows the run committed, for its summary.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_vllm.errors import SpecError
from spark_vllm.spec import JdbcOutput, JobSpec
from spark_vllm.storage import delta, jdbc, results
from spark_vllm.storage.fingerprint import RunRecord


class OutputStore:
    """The interface; see the module's text."""

    # How messages name the output, and how to start afresh there.
    location: str
    afresh: str

    def __init__(self, spark: SparkSession, spec: JobSpec) -> None:
        self.spark = spark
        self.spec = spec
        self.id_column = spec.id_column()

    def where(self) -> str:
        """The output, for the summary."""
        return self.spec.output.where()

    def prepare(self) -> bool:
        raise NotImplementedError

    def begin(self) -> None:
        """The run starts sending: replace what output.mode overwrite replaces."""

    def records(self) -> dict[str, RunRecord]:
        raise NotImplementedError

    def record(self, record: RunRecord) -> None:
        raise NotImplementedError

    def save_summary(self, run_id: str, text: str) -> None:
        """Leave the run's summary (JSON) beside the output."""
        raise NotImplementedError

    def summaries(self) -> dict[str, str]:
        """The JSON summaries earlier runs left, by run id."""
        raise NotImplementedError

    def attempts(self, stored: T.StructType | None) -> DataFrame:
        raise NotImplementedError

    def write(self, result: DataFrame, run_id: str) -> None:
        raise NotImplementedError

    def finish(self, run_id: str) -> None:
        """Complete a run after `write`, whether it succeeded or not."""

    def this_run(self, run_id: str, stored: T.StructType | None) -> DataFrame | None:
        raise NotImplementedError


class PathStore(OutputStore):
    """An output at `output.path`, its run records and summaries beside it (see results)."""

    def __init__(self, spark: SparkSession, spec: JobSpec) -> None:
        super().__init__(spark, spec)
        assert spec.output.path is not None
        self.path = spec.output.path
        self.location = f"output.path {self.path!r}"
        self.afresh = "output.mode: overwrite, or another output.path"

    def records(self) -> dict[str, RunRecord]:
        return results.read_records(self.spark, self.path)

    def record(self, record: RunRecord) -> None:
        results.write_record(self.spark, self.path, record)

    def save_summary(self, run_id: str, text: str) -> None:
        results.write_summary(self.spark, self.path, run_id, text)

    def summaries(self) -> dict[str, str]:
        return results.read_summaries(self.spark, self.path)


class FileStore(PathStore):
    """parquet, jsonl or openai-batch files: a `run=<id>` folder per run (see results)."""

    def __init__(self, spark: SparkSession, spec: JobSpec) -> None:
        super().__init__(spark, spec)
        self.format = spec.output.format

    def delete(self) -> None:
        """Delete the output path, runs and records (output.mode: overwrite)."""
        results.delete(self.spark, self.path)

    def prepare(self) -> bool:
        mode = self.spec.output.mode
        if mode == "overwrite":
            try:
                results.check_overwritable(self.spark, self.path)
            except results.NotOurOutput as exc:
                raise SpecError(str(exc)) from None
            return False  # deleted by begin(), when the run starts sending
        if mode == "error" and results.exists(self.spark, self.path):
            raise SpecError(
                f"output.path {self.path!r} exists and output.mode is 'error'; "
                "use mode resume or overwrite, or another path"
            )
        try:
            return results.holds_runs(self.spark, self.path)
        except ValueError as exc:
            raise SpecError(str(exc)) from None

    def begin(self) -> None:
        if self.spec.output.mode == "overwrite":
            try:
                self.delete()
            except results.NotOurOutput as exc:
                raise SpecError(str(exc)) from None

    def attempts(self, stored: T.StructType | None) -> DataFrame:
        return results.read_attempts(self.spark, self.path, self.format, stored)

    def write(self, result: DataFrame, run_id: str) -> None:
        results.write_run(result, results.run_path(self.path, run_id), self.format)

    def this_run(self, run_id: str, stored: T.StructType | None) -> DataFrame | None:
        path = results.run_path(self.path, run_id)
        if not results.entries(self.spark, path):
            return None
        return results.read_attempts(self.spark, path, self.format, stored)


class JdbcStore(OutputStore):
    """A table over JDBC, written through a staging table per run (see jdbc)."""

    def __init__(self, spark: SparkSession, spec: JobSpec) -> None:
        super().__init__(spark, spec)
        assert spec.output.jdbc is not None
        self.out: JdbcOutput = spec.output.jdbc
        self.location = f"output.jdbc.table {self.out.table!r}"
        self.afresh = "output.jdbc.write_mode: overwrite, or another output.jdbc.table"

    def recover_staging(self) -> list[str]:
        """Move the rows a driver that died left staged into the table (dropped under
        write_mode overwrite); the staging tables it found."""
        return jdbc.recover(self.spark, self.out, self.id_column)

    def prepare(self) -> bool:
        self.recover_staging()
        if not jdbc.Database(self.spark, self.out, "output.jdbc").has_table(self.out.table):
            return False
        if self.out.write_mode == "overwrite":
            self.check_ours()
        if self.spec.output.mode == "error":
            raise SpecError(
                f"output.jdbc.table {self.out.table!r} exists and output.mode is 'error'; "
                "use mode resume, or another table"
            )
        return self.out.write_mode != "overwrite"

    def check_ours(self) -> None:
        """write_mode overwrite deletes the table's rows: only in a table a job made,
        which has the `run` column every job's table has (its marker)."""
        columns = jdbc.read_table(self.spark, self.out).columns
        if jdbc.RUN_COLUMN not in columns:
            raise SpecError(
                f"output.jdbc.table {self.out.table!r} has no {jdbc.RUN_COLUMN!r} column, so "
                "no spark-vllm job made it; output.jdbc.write_mode overwrite deletes the rows "
                "of a spark-vllm table only. Choose another table, or empty this one yourself"
            )

    def records(self) -> dict[str, RunRecord]:
        return jdbc.read_records(self.spark, self.out)

    def record(self, record: RunRecord) -> None:
        jdbc.write_record(self.spark, self.out, record)

    def save_summary(self, run_id: str, text: str) -> None:
        jdbc.write_summary(self.spark, self.out, run_id, text)

    def summaries(self) -> dict[str, str]:
        return jdbc.read_summaries(self.spark, self.out)

    def attempts(self, stored: T.StructType | None) -> DataFrame:
        return jdbc.read_table(self.spark, self.out)

    def write(self, result: DataFrame, run_id: str) -> None:
        jdbc.write_staging(result, self.out, run_id)

    def finish(self, run_id: str) -> None:
        """Move the staged rows into the table (those staged before a task failed for
        good too: the next run resumes from them)."""
        staging = jdbc.staging_table(self.out, run_id)
        if jdbc.Database(self.spark, self.out, "output.jdbc").has_table(staging):
            jdbc.move_rows(self.spark, self.out, staging, self.id_column)

    def this_run(self, run_id: str, stored: T.StructType | None) -> DataFrame | None:
        return self.attempts(stored).where(F.col(jdbc.RUN_COLUMN) == run_id)


class DeltaStore(PathStore):
    """A Delta table at `output.path`: one commit per run, staged first (see delta)."""

    def prepare(self) -> bool:
        delta.check_connector(self.spark, "output.format 'delta'")
        mode = self.spec.output.mode
        if mode == "overwrite":
            try:
                results.check_overwritable(self.spark, self.path)
            except results.NotOurOutput as exc:
                raise SpecError(str(exc)) from None
            return False  # this run's commit replaces the rows; begin() drops staged ones
        if mode == "error" and results.exists(self.spark, self.path):
            raise SpecError(
                f"output.path {self.path!r} exists and output.mode is 'error'; "
                "use mode resume or overwrite, or another path"
            )
        self.recover_staging()
        if not delta.is_table(self.spark, self.path):
            foreign = results.entries(self.spark, self.path)
            if foreign:
                raise SpecError(
                    f"output.path {self.path!r} holds {sorted(foreign)[:5]} but no Delta "
                    "table (no _delta_log folder); choose an empty or new path, or set "
                    "output.mode: overwrite"
                )
            return False
        self.check_ours()
        return True

    def recover_staging(self) -> list[str]:
        """Commit the rows a driver that died left staged, each run under its own id;
        the runs it found."""
        staged = delta.staged_runs(self.spark, self.path)
        for run_id in staged:
            delta.commit(self.spark, self.path, run_id, overwrite=False, upsert_on=self.upsert_on)
        return staged

    @property
    def upsert_on(self) -> str | None:
        """The id column when each commit is a MERGE on it (output.delta.write_mode)."""
        options = self.spec.output.delta
        return self.id_column if options and options.write_mode == "upsert" else None

    def check_ours(self) -> None:
        """Resume reads and appends rows with the `run` column every job's table has."""
        columns = delta.read_table(self.spark, self.path).columns
        if results.RUN_COLUMN not in columns:
            raise SpecError(
                f"output.path {self.path!r} is a Delta table without a "
                f"{results.RUN_COLUMN!r} column, so no spark-vllm job made it; choose "
                "another output.path"
            )

    def begin(self) -> None:
        if self.spec.output.mode == "overwrite":
            delta.drop_staged(self.spark, self.path)

    def attempts(self, stored: T.StructType | None) -> DataFrame:
        return delta.read_table(self.spark, self.path)

    def write(self, result: DataFrame, run_id: str) -> None:
        delta.stage(result, self.path, run_id)

    def finish(self, run_id: str) -> None:
        """Commit the staged rows in one Delta transaction (those staged before a task
        failed for good too: the next run resumes from them)."""
        overwrite = self.spec.output.mode == "overwrite"
        delta.commit(self.spark, self.path, run_id, overwrite=overwrite, upsert_on=self.upsert_on)

    def this_run(self, run_id: str, stored: T.StructType | None) -> DataFrame | None:
        if not delta.is_table(self.spark, self.path):
            return None
        return self.attempts(stored).where(F.col(results.RUN_COLUMN) == run_id)


def store_for(spark: SparkSession, spec: JobSpec) -> OutputStore:
    """The output store the job spec names."""
    if spec.output.jdbc is not None:
        return JdbcStore(spark, spec)
    if spec.output.format == "delta":
        return DeltaStore(spark, spec)
    return FileStore(spark, spec)
