"""A PostgreSQL cluster of a test's own, to stop and restart under a run: never the shared
server, which other tests (and other people) use at the same time."""

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SYSTEM_USER = "postgres"  # initdb and postgres refuse to run as root


class Cluster:
    """initdb'd in ``directory`` (trust auth), listening on 127.0.0.1:``port`` only."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        with socket.socket() as probe:  # a free port (the OS's pick)
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(directory, SYSTEM_USER)
            self._as_owner = ["runuser", "-u", SYSTEM_USER, "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self._as_owner, str(PG_BIN / program), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", *args)

    def _server(self, action: str, *args: str) -> None:
        """pg_ctl ``action`` with the server's options and log file (without ``-l`` the server
        would write to pg_ctl's output, which would then never end)."""
        self._pg_ctl(
            "-o",
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1",
            "-l",
            str(self.directory / "log"),
            *args,
            action,
        )

    def start(self) -> None:
        self._server("start")

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "stop")

    def restart(self) -> None:
        self._server("restart", "-m", "fast")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        secret = f":{password}" if password else ""  # trust auth: a password is never asked
        return f"postgresql://postgres{secret}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        name = f"d1mt_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """A running cluster in a temporary directory, stopped and removed afterwards. (Not under
    pytest's tmp_path: its parents are closed to the server's system user.)"""
    with tempfile.TemporaryDirectory(prefix="d1m-pg-") as directory:
        cluster = Cluster(Path(directory))
        cluster.start()
        try:
            yield cluster
        finally:
            if cluster.running():
                cluster.stop()
