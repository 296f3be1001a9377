"""The embedded PostgreSQL (pgserver): the target, and Dagster's storage, on a machine where
none is configured. It outlives runs on purpose (a later run and ``dagster dev`` reuse it);
``stop_embedded_postgres`` ends it.
"""

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "d1_target"


def embedded_postgres_url(workdir: Path, database: str = EMBEDDED_DATABASE) -> str:
    """Start (or reuse) the embedded server under ``workdir`` and make sure ``database`` exists."""
    import pgserver  # imported lazily: only machines without a configured target need it

    data_dir = (workdir / "pgdata").resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode=None)  # keep running for later runs
    admin_url = server.get_uri("postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')
    log.info("Using embedded PostgreSQL with data directory %s", data_dir)
    return server.get_uri(database)


def stop_embedded_postgres(workdir: Path, timeout: float = 60.0) -> None:
    """Stop the embedded server under ``workdir`` (it outlives runs on purpose): a fast
    shutdown (SIGINT to the postmaster named in postmaster.pid, what ``pg_ctl stop -m fast``
    sends), waiting until it has exited. Not through pg_ctl: as root, pgserver runs it as
    another user, who may no longer reach the data directory (pytest makes its temporary root
    0700 again whenever a session starts), and pgserver's own cleanup() skips the stop unless
    it counts this process's handle as the last one."""
    pid_file = (workdir / "pgdata" / "postmaster.pid").resolve()
    try:
        pid = int(pid_file.read_text().split()[0])
    except FileNotFoundError:
        return  # not running
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # ProcessLookupError once it has exited
            time.sleep(0.1)
        raise TimeoutError(f"the embedded PostgreSQL (pid {pid}) did not stop in {timeout} s")
