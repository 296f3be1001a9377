"""The table step's engine in a process of its own (sync/apart.py), with real processes: it dies
with the step that holds the target lock, its own death fails the step without losing a
committed table, and what it raises reaches the step as itself."""

import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.demo.sample_data import build_sample_db
from d1_migration.runner import materialize_all
from d1_migration.spec.tables import SCHEMA
from d1_migration.sync.apart import _sendable
from d1_migration.sync.engine import SchemaDrift, TargetLost
from d1_migration.sync.target_lock import LOCK_KEY
from d1_migration.target.ddl import ensure_schema
from d1_migration.target.evolve import Change, EvolutionRefused
from d1_migration.verify.drift import Drift
from d1_migration_tests.helpers import ROOT

USERS = 600  # a load of a few seconds: long enough to be cut inside a table

MATERIALIZE_ALL = """
import sys
from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.runner import materialize_all
source, url, state = sys.argv[1:]
materialize_all(D1Source(path=source), PostgresTarget(url=url),
                sync=SyncSettings(state_dir=state), log_level="WARNING")
"""


def engine_of(parent: int) -> int | None:
    """The pid of ``parent``'s engine process, if it has one."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"d1_migration.sync.apart" in cmdline:
            return int(pid)
    return None


def alive(pid: int) -> bool:
    """Running (a zombie, which nothing may reap in a container, has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def committed_tables(url: str) -> int:
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('d1_migration.sync_state')").fetchone()[0] is None:
            return 0
        return conn.execute("SELECT count(*) FROM d1_migration.sync_state").fetchone()[0]


def wait_for(condition, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {seconds} s: {condition}")


def run(source: Path, url: str, state: Path):
    return materialize_all(
        D1Source(path=str(source)),
        PostgresTarget(url=url),
        sync=SyncSettings(state_dir=str(state)),
        log_level="WARNING",
    )


def waiting_for(url: str, table: str) -> bool:
    """Whether a session waits for a lock on ``table`` (the engine: nothing else reads it)."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE %s)",
            [f"%{table}%"],
        ).fetchone()[0]


def test_the_engine_dies_with_the_step_and_commits_nothing_after_it(tmp_path, pg_url):
    """SIGKILL of the step's process releases the target lock (its session ends); the engine
    must end with it, or it would go on committing beside the next sync that takes the lock.
    The engine is held inside the sync when the step dies, by a lock this test takes on
    focus_sessions (which no check reads before that table is loaded: only the engine waits
    for it), so an engine left running would go on and commit once let go."""
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=USERS, seed=3)
    step = subprocess.Popen(
        [sys.executable, "-c", MATERIALIZE_ALL, str(source), pg_url, str(tmp_path / "sync")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with psycopg.connect(pg_url) as blocker:
        try:
            engine = wait_for(lambda: engine_of(step.pid))
            wait_for(lambda: blocker.execute("SELECT to_regclass('focus_sessions')").fetchone()[0])
            blocker.execute("LOCK TABLE focus_sessions IN ACCESS EXCLUSIVE MODE")
            wait_for(lambda: waiting_for(pg_url, "focus_sessions"))
        finally:
            step.send_signal(signal.SIGKILL)
            step.wait()
        at_kill = committed_tables(pg_url)
        wait_for(lambda: not alive(engine), seconds=5)
        blocker.rollback()  # what an engine left running would now go on with
    time.sleep(2)
    assert committed_tables(pg_url) == at_kill
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM focus_sessions").fetchone()[0] == 0
        assert conn.execute("SELECT pg_try_advisory_lock(%s, %s)", LOCK_KEY).fetchone()[0]

    summary = run(source, pg_url, tmp_path / "sync")
    assert set(summary.tables) == {t.name for t in SCHEMA.tables}, summary.failure


def test_an_engine_killed_mid_sync_fails_the_step_and_keeps_what_it_committed(tmp_path, pg_url):
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=USERS, seed=4)
    killed: list[int] = []

    def kill_the_engine() -> None:
        engine = wait_for(lambda: engine_of(os.getpid()))
        wait_for(lambda: committed_tables(pg_url) >= 3)
        os.kill(engine, signal.SIGKILL)
        killed.append(engine)

    killer = threading.Thread(target=kill_the_engine)
    killer.start()
    summary = run(source, pg_url, tmp_path / "sync")
    killer.join()
    assert killed
    assert not summary.success
    assert "the sync engine's process ended (signal SIGKILL) before the sync did" in (
        summary.failure
    ), summary.failure
    assert 3 <= committed_tables(pg_url) < len(SCHEMA.tables)

    summary = run(source, pg_url, tmp_path / "sync")
    assert set(summary.tables) == {t.name for t in SCHEMA.tables}, summary.failure


@pytest.mark.parametrize(
    "error",
    [
        TargetLost("Lost the connection to the target: server closed", ["users", "sessions"]),
        SchemaDrift(Drift(problems=["users: a column more"], skipped=[], by_table={})),
        EvolutionRefused([Change("ALTER TABLE x DROP y", "why", False)], "a note"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_the_engines_errors_reach_the_step_as_themselves(error):
    """The step tells them apart by type (retry a lost target, report drift, show the DDL)."""
    sent = pickle.loads(pickle.dumps(_sendable(error)))
    assert type(sent) is type(error)
    assert str(sent) == str(error)
    notes = "__notes__"  # the engine's traceback, which the step has no use for in these
    assert {k: v for k, v in vars(sent).items() if k != notes} == {
        k: v for k, v in vars(error).items() if k != notes
    }


def test_a_bug_in_the_engine_reaches_the_step_with_its_traceback():
    try:
        {}["missing"]
    except KeyError as error:
        sent = pickle.loads(pickle.dumps(_sendable(error)))
    assert type(sent) is KeyError
    assert "in the sync engine's process" in sent.__notes__[0]
    assert "in test_a_bug_in_the_engine_reaches_the_step_with_its_traceback" in sent.__notes__[0]


def test_an_error_that_does_not_pickle_reaches_the_step_as_its_text():
    class Unpicklable(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a} and {b}")

    sent = _sendable(Unpicklable(1, 2))
    assert isinstance(sent, RuntimeError)
    assert "Unpicklable: 1 and 2" in str(sent)


def test_the_schema_reaches_the_engine_as_it_is():
    """The engine compares kinds by identity (``kind is Kind.ID``): a schema that arrived with
    copies of them loaded every table down the wrong paths (no id_map entries, no one-pass
    first load)."""
    sent = pickle.loads(pickle.dumps(SCHEMA))
    assert sent == SCHEMA
    for table, original in zip(sent.tables, SCHEMA.tables, strict=True):
        for column, its in zip(table.columns, original.columns, strict=True):
            assert column.kind is its.kind, (table.name, column.name)


def test_the_engines_log_reaches_the_steps_loggers(tmp_path, pg_url, pg, caplog):
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=15, seed=6)
    ensure_schema(pg, SCHEMA)  # then Postgres refuses every row of habits
    pg.execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
    )
    pg.execute("CREATE TRIGGER refuse BEFORE INSERT ON habits EXECUTE FUNCTION refuse()")
    with caplog.at_level(logging.ERROR, logger="d1_migration"):
        summary = run(source, pg_url, tmp_path / "sync")
    assert "habits" not in summary.tables
    (record,) = [
        r
        for r in caplog.records
        if r.name == "d1_migration.sync.engine" and "habits: sync failed" in r.getMessage()
    ]
    assert record.levelno == logging.ERROR
    assert "disk full" in record.getMessage()  # its traceback, formatted in the engine
