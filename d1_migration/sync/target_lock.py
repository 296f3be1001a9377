"""One sync of a target at a time, whoever starts it: a Dagster run, the gate, a hand-started CLI.

The lock is a session-level advisory lock on a connection of its own: it outlives the many
transactions of a sync (one per table, the checks, the shadow's commits), and Postgres drops it
the moment its holder's session ends, so a run killed with SIGKILL never blocks the next one.
Advisory locks belong to the database they are taken in, so one fixed key serves every target
and two targets never wait for each other. The holder names itself in ``application_name``
(run id, pid, host), which is what a run that is refused reports.

Holding it is re-entrant within a thread: the gate holds it across its two syncs and the checks,
and ``sync_all`` takes it too when it is called alone.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import make_conninfo

from d1_migration.target.connection import connect_target

LOCK_KEY = (0x44314D47, 0x53594E43)  # any fixed pair; "D1MG", "SYNC"
APP_PREFIX = "d1m "  # application_name holds 63 bytes: a run id, a pid and some of the host
# The Dagster pool of every step that writes a target; dagster.yaml gives a pool one slot.
TARGET_POOL = "d1_migration_target"
_held = threading.local()  # server identities whose lock this thread holds
log = logging.getLogger(__name__)


class TargetBusy(RuntimeError):
    """Another sync holds the target and did not finish within the timeout: nothing was written."""


def holder_name(run_id: str | None = None) -> str:
    """Who syncs, as another run will be told: the Dagster run if any, the process, the host."""
    who = f"run {run_id}" if run_id else "no run"
    return f"{who} pid {os.getpid()}@{socket.gethostname()}"


def _conninfo(target: str | psycopg.Connection) -> str:
    if isinstance(target, str):
        return target
    params = target.info.get_parameters()  # without the password, which info keeps apart
    if target.info.password:
        params["password"] = target.info.password
    return make_conninfo(**params)


def _identity(conn: psycopg.Connection) -> tuple:
    """The target database as the server sees it: two spellings of one URL are one target."""
    return conn.execute(
        "SELECT current_database(), current_setting('port'), pg_postmaster_start_time()"
    ).fetchone()


def current_holder(conn: psycopg.Connection) -> str:
    """Who holds the lock of the database ``conn`` is connected to ('' if nobody does)."""
    row = conn.execute(
        """SELECT a.application_name, a.pid, a.backend_start FROM pg_locks l
           JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
             AND l.classid = %s AND l.objid = %s
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
        LOCK_KEY,
    ).fetchone()
    if row is None:
        return ""
    name, pid, since = row
    who = name.removeprefix(APP_PREFIX)
    return f"{who}; Postgres backend {pid}, since {since:%Y-%m-%d %H:%M:%S%z}"


@contextmanager
def target_lock(
    target: str | psycopg.Connection,
    holder: str,
    timeout: float | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the target for the block. Waits for a running sync to finish (``on_wait`` is told
    who it is; logged by default), for at most ``timeout`` seconds when given, then raises
    TargetBusy naming the holder. Take it before anything writes: the schema, the shadow file,
    the tables."""
    held: set[tuple] = _held.__dict__.setdefault("identities", set())
    conn = connect_target(_conninfo(target), application_name=(APP_PREFIX + holder)[:63])
    try:
        identity = _identity(conn)
        if identity in held:  # this thread holds it already (the gate around sync_all)
            conn.close()
            yield
            return
        if not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", LOCK_KEY).fetchone()[0]:
            _wait(conn, holder, timeout, on_wait)
        held.add(identity)
        try:
            yield
        finally:
            held.discard(identity)
    finally:
        conn.close()  # ends the session, which releases the lock


@contextmanager
def held_elsewhere(conn: psycopg.Connection) -> Iterator[None]:
    """Within the block, target_lock passes through on this thread for ``conn``'s target, as
    if this thread held it: for the engine's process (sync/apart.py), whose parent holds the
    lock and which dies with that parent, so it never writes once the lock is gone."""
    held: set[tuple] = _held.__dict__.setdefault("identities", set())
    identity = _identity(conn)
    held.add(identity)
    try:
        yield
    finally:
        held.discard(identity)


def _wait(
    conn: psycopg.Connection,
    holder: str,
    timeout: float | None,
    on_wait: Callable[[str], None] | None,
) -> None:
    other = current_holder(conn)
    started = time.monotonic()

    def busy() -> TargetBusy:
        return TargetBusy(
            f"another sync of this target is running ({current_holder(conn) or other}); "
            f"{holder} waited {time.monotonic() - started:.0f} s and wrote nothing"
        )

    if timeout is not None and timeout <= 0:
        raise busy()
    (on_wait or log.warning)(f"waiting for another sync of this target to finish ({other})")
    # lock_timeout 0 is Postgres's "wait as long as it takes"
    limit = "0" if timeout is None else str(max(1, round(timeout * 1000)))
    conn.execute("SELECT set_config('lock_timeout', %s, false)", [limit])
    try:
        conn.execute("SELECT pg_advisory_lock(%s, %s)", LOCK_KEY)
    except psycopg.errors.LockNotAvailable:
        raise busy() from None
    conn.execute("RESET lock_timeout")
