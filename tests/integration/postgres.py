"""A real PostgreSQL server for the JDBC tests: Debian's `postgresql` package, a fresh
cluster in a temporary directory on a free loopback port, password authentication over
TCP, stopped at the end."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from spark_vllm.driver.local_server import free_port  # internal helper: a free loopback port

USER = "spark_vllm"
PASSWORD = "s3cret-for-tests"  # a throwaway cluster's
DATABASE = "shop"


def bin_dir() -> Path:
    """Where Debian puts initdb, pg_ctl and psql (not on PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError(
            "no PostgreSQL server here: install Debian's postgresql package "
            "(make test does, with apt-get, when it runs as root)"
        )
    return Path(found[-1]).parent


class Postgres:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.port = free_port()
        self.bin = bin_dir()
        # initdb refuses to run as root: then the cluster belongs to the postgres user.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> str:
        proc = subprocess.run(
            [*self.as_user, *args], capture_output=True, text=True, check=False, cwd="/"
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def start(self) -> Postgres:
        self.sockets.mkdir(parents=True)
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.as_user:
            for path in (self.root, self.sockets, pwfile):
                shutil.chown(path, "postgres", "postgres")
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8",
        )  # fmt: skip
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
            "-w", "-t", "60", "-o",
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )  # fmt: skip
        self.psql(f"CREATE DATABASE {DATABASE}", database="postgres")
        return self

    def psql(self, sql: str, database: str = DATABASE) -> str:
        """Run SQL over the local socket; the rows as `a|b` lines."""
        return self._run(
            str(self.bin / "psql"), "-h", str(self.sockets), "-p", str(self.port), "-U", USER,
            "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql,
        )  # fmt: skip

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    @property
    def url(self) -> str:
        return f"jdbc:postgresql://127.0.0.1:{self.port}/{DATABASE}"
