"""The shadow behind Postgres: a sync that ended between Postgres's commit and the shadow's.

Both ways it happens, for real: a sync process killed with SIGKILL in that window (its shadow
write stalls, in the child's own script, not in the product, so the kill lands there every
time), and a shadow write refused with `database is locked` (the test holds the shadow file's
write lock).
"""

import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import psycopg
from dagster import DagsterInstance

from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.runner import materialize_all
from d1_migration.spec.model import Schema
from d1_migration.spec.tables import SCHEMA
from d1_migration_tests.helpers import ROOT, assert_like_fresh_migration, mutate, new_d1, sync

PAIR = Schema(SCHEMA.enums, (SCHEMA.table("users"), SCHEMA.table("habits")))
USERS = Schema(SCHEMA.enums, (SCHEMA.table("users"),))
ROWS = [
    "INSERT INTO users (id, email, name, created_at) VALUES ('u1', 'u1@x', 'Ann', '2026-01-06')",
    "INSERT INTO habits (id, user_id, name) VALUES ('h1', 'u1', 'Read')",
]
SYNC_STALLING_AFTER_USERS_COMMIT = """
import sys, time
from pathlib import Path
from d1_migration.sync.shadow import Shadow
from d1_migration_tests.helpers import sync
from d1_migration_tests.test_shadow_lag import PAIR

def stall(self, table, *args):  # Postgres has committed the table; the shadow is next
    if table.name == "users":
        print("committed", flush=True)
        time.sleep(600)
    return apply(self, table, *args)

apply, Shadow.apply = Shadow.apply, stall
sync(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), incremental=True, schema=PAIR)
"""


def shadow_write_lock(path: Path) -> sqlite3.Connection:
    """Another writer inside the shadow file: the sync can read it, not write it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def users_name(url: str) -> str:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT name FROM users").fetchone()[0]


def test_a_sync_killed_between_postgres_and_the_shadow_is_healed(tmp_path, new_database):
    source = new_d1(tmp_path / "d1.sqlite", ROWS)
    synced, shadow = new_database(), tmp_path / "shadow.sqlite"
    sync(synced, source, shadow, incremental=True, schema=PAIR)
    mutate(source, ["UPDATE users SET name = 'Bob' WHERE id = 'u1'"])

    process = subprocess.Popen(
        [sys.executable, "-c", SYNC_STALLING_AFTER_USERS_COMMIT, synced, str(source), str(shadow)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline() == "committed\n"
        assert users_name(synced) == "Bob"  # in Postgres, not yet in the shadow
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    assert process.returncode == -signal.SIGKILL

    mutate(source, ["UPDATE users SET name = 'Ann' WHERE id = 'u1'"])  # the edit is undone
    results = sync(synced, source, shadow, incremental=True, schema=PAIR)
    assert results["users"].mode == "full"
    assert "the shadow was behind Postgres" in results["users"].shadow_note
    assert results["habits"].mode == "incremental"  # its shadow was never behind
    assert_like_fresh_migration(synced, source, new_database(), PAIR)


def test_a_locked_shadow_is_reported_as_it_is_and_healed(tmp_path, new_database):
    """`database is locked` in the shadow write, in a Dagster run: the log says Postgres has
    the table and the shadow does not, never that the table is unchanged."""
    source = new_d1(tmp_path / "d1.sqlite", ROWS)
    synced = new_database()
    d1, target = D1Source(path=str(source)), PostgresTarget(url=synced)
    settings = SyncSettings(state_dir=str(tmp_path / "sync"))
    assert materialize_all(d1, target, sync=settings, selection="key:pg/users").success
    mutate(source, ["UPDATE users SET name = 'Bob' WHERE id = 'u1'"])
    [shadow] = (tmp_path / "sync").glob("shadow-*.sqlite")

    with DagsterInstance.ephemeral() as instance, closing(shadow_write_lock(shadow)):
        summary = materialize_all(
            D1Source(path=str(source)), target, instance, settings, selection="key:pg/users"
        )
        logs = [e.user_message for e in instance.all_logs(instance.get_runs()[0].run_id)]
    assert summary.success, summary.failure
    assert users_name(synced) == "Bob"
    said = [m for m in logs if m.startswith("users:")]
    assert any("synced in Postgres, but the shadow could not record it" in m for m in said), said
    assert not any("unchanged" in m for m in said), said

    mutate(source, ["UPDATE users SET name = 'Ann' WHERE id = 'u1'"])
    summary = materialize_all(
        D1Source(path=str(source)), target, sync=settings, selection="key:pg/users"
    )
    assert summary.tables["users"]["mode"] == "full"
    assert_like_fresh_migration(synced, source, new_database(), USERS)
