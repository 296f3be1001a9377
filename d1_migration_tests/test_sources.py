"""D1 as a file and as a `wrangler d1 export`; schema drift stops a run before any load."""

import math
import os
import shutil
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from dagster import AssetSelection, DagsterInstance, Definitions, define_asset_job

from d1_migration.definitions import ASSET_CHECKS, ASSETS
from d1_migration.defs.keys import source_key, table_of
from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.demo.sample_data import build_sample_db, sqlite_ddl
from d1_migration.runner import materialize_all
from d1_migration.source.export import ExportError, replay
from d1_migration.source.snapshot import SqliteSource
from d1_migration.spec.tables import SCHEMA
from d1_migration.sync.shadow import Shadow
from d1_migration.verify.checks import ROW_PARITY
from d1_migration_tests.helpers import dump, mutate, sync
from d1_migration_tests.wrangler import write_export


def test_an_export_migrates_exactly_like_the_file(tmp_path, new_database):
    database = tmp_path / "d1.sqlite"
    build_sample_db(database, users=25, seed=8)
    with sqlite3.connect(database) as d1:  # the two kinds of text no export can carry
        d1.execute("DELETE FROM ideas WHERE CAST(content AS BLOB) = X'66ff6f'")
        d1.execute("DELETE FROM journal_entries WHERE instr(CAST(content AS BLOB), X'00') > 0")
    export = tmp_path / "d1.sql"
    write_export(database, export)
    replayed = tmp_path / "replayed.sqlite"
    replay(export, replayed)

    from_file, from_export = new_database(), new_database()
    sync(from_file, database, None, incremental=False)
    sync(from_export, replayed, None, incremental=False)
    assert dump(from_export) == dump(from_file)


def test_export_quirks_replay_to_exact_values(tmp_path):
    export = tmp_path / "quirks.sql"
    export.write_text(
        "PRAGMA defer_foreign_keys=TRUE;\n"
        "CREATE TABLE child (id TEXT PRIMARY KEY, parent_id TEXT REFERENCES parent(id));\n"
        "INSERT INTO \"child\" VALUES('c1','p1');\n"  # before its parent: creation order
        "CREATE TABLE parent (id TEXT PRIMARY KEY, note TEXT, data BLOB, score REAL,\n"
        "    big INTEGER);\n"
        "CREATE TABLE seq (n INTEGER PRIMARY KEY AUTOINCREMENT);\n"
        'INSERT INTO "parent" ("id","note","data","score","big") VALUES(\'p1\','
        "replace('two\\nlines; with a semicolon','\\n',char(10)),X'00FF',9e999,\n"
        "9007199254740993);\n"
        "INSERT INTO \"parent\" VALUES('p2','it''s',NULL,3.0,-1);\n"
        "DELETE FROM sqlite_sequence;\n"
        "INSERT INTO \"sqlite_sequence\" VALUES('seq',41);\n"
    )
    database = tmp_path / "out.sqlite"
    assert replay(export, database) == 9
    with sqlite3.connect(database) as d1:
        p1, p2 = d1.execute("SELECT * FROM parent ORDER BY id").fetchall()
        assert p1[:3] == ("p1", "two\nlines; with a semicolon", b"\x00\xff")
        assert math.isinf(p1[3]) and p1[4] == 9007199254740993
        assert p2 == ("p2", "it's", None, 3.0, -1)
        assert d1.execute("SELECT * FROM child").fetchall() == [("c1", "p1")]
        assert d1.execute("SELECT seq FROM sqlite_sequence").fetchone()[0] == 41


def test_an_export_cut_short_is_refused(tmp_path):
    export = tmp_path / "cut.sql"
    export.write_text('CREATE TABLE t (a TEXT);\nINSERT INTO "t" VALUES(\'never\n')
    with pytest.raises(ExportError, match="ends inside a statement"):
        replay(export, tmp_path / "out.sqlite")


def test_dagster_reads_an_export_given_as_the_source(tmp_path, pg_url):
    database, export = tmp_path / "d1.sqlite", tmp_path / "d1.sql"
    with sqlite3.connect(database) as d1:
        d1.executescript(sqlite_ddl(SCHEMA))
        d1.execute("INSERT INTO users (id, email) VALUES ('u1', 'a@x')")
        d1.execute("CREATE TABLE _cf_KV (key TEXT PRIMARY KEY, value BLOB)")  # D1's own
    write_export(database, export)
    summary = materialize_all(
        D1Source(path=str(export), copy_dir=str(tmp_path / "exports")),
        PostgresTarget(url=pg_url),
        sync=SyncSettings(state_dir=str(tmp_path / "sync")),
    )
    assert summary.success
    assert summary.check("users", ROW_PARITY).metadata["target_rows"] == 1


def test_schema_drift_stops_the_run_before_any_load(tmp_path, pg_url):
    database = tmp_path / "d1.sqlite"
    build_sample_db(database, users=12, seed=1)
    with sqlite3.connect(database) as d1:
        d1.execute("ALTER TABLE users ADD COLUMN nickname TEXT")
        d1.execute("ALTER TABLE habits RENAME COLUMN color TO colour")
        d1.execute("CREATE TABLE stray_table (id TEXT PRIMARY KEY)")
        d1.execute("CREATE TABLE d1_migrations (id INTEGER PRIMARY KEY, name TEXT)")

    summary = materialize_all(
        D1Source(path=str(database)),
        PostgresTarget(url=pg_url),
        sync=SyncSettings(state_dir=str(tmp_path / "sync")),
    )
    assert not summary.success and not summary.tables
    message = str(summary.failure)
    for expected in (
        "added column users.nickname",
        "added column habits.colour",
        "removed column habits.color",
        "unknown table stray_table",
    ):
        assert expected in message
    assert "d1_migrations" not in message
    with psycopg.connect(pg_url) as conn:
        loaded = conn.execute("SELECT to_regclass('public.users') IS NOT NULL").fetchone()[0]
    assert not loaded  # nothing moved, not even the schema


def test_a_wal_database_being_written_is_read_from_one_consistent_state(tmp_path, pg_url):
    database = tmp_path / "wrangler-state.sqlite"
    build_sample_db(database, users=15, seed=11)
    with sqlite3.connect(database) as d1:
        d1.execute("PRAGMA journal_mode = WAL")
        user = d1.execute("SELECT id FROM users WHERE created_at LIKE '2%' LIMIT 1").fetchone()[0]
    stop = threading.Event()

    def app_writing() -> None:  # each habit and its first log land in one transaction
        with sqlite3.connect(database, isolation_level=None) as d1:
            n = 0
            while not stop.is_set():
                n += 1
                d1.execute("BEGIN")
                d1.execute(
                    "INSERT INTO habits (id, user_id, name) VALUES (?, ?, 'h')",
                    [f"live-h{n}", user],
                )
                d1.execute(
                    "INSERT INTO habit_logs (id, habit_id, user_id, completed_at) VALUES "
                    "(?, ?, ?, '2026-01-06 10:00:00')",
                    [f"live-l{n}", f"live-h{n}", user],
                )
                d1.execute("COMMIT")

    writer = threading.Thread(target=app_writing)
    writer.start()
    try:
        time.sleep(0.2)
        summary = materialize_all(
            D1Source(path=str(database), copy_dir=str(tmp_path / "copies")),
            PostgresTarget(url=pg_url),
            sync=SyncSettings(state_dir=str(tmp_path / "sync")),
        )
    finally:
        stop.set()
        writer.join()
    assert summary.success
    with psycopg.connect(pg_url) as conn:
        live = conn.execute("SELECT count(*) FROM habits WHERE name = 'h'").fetchone()[0]
        orphans = conn.execute(
            "SELECT count(*) FROM d1_migration.rejected_rows WHERE source_pk LIKE 'live-%'"
        ).fetchone()[0]
    assert live > 0 and orphans == 0  # every live habit_log arrived with its habit


def test_a_quiet_table_is_not_compared_row_by_row(tmp_path):
    """Equal leaf pages stand for equal rows: only a table whose pages changed is read."""
    source, shadow_path = tmp_path / "d1.sqlite", tmp_path / "shadow.sqlite"
    build_sample_db(source, users=10, seed=1)
    users, habits = SCHEMA.table("users"), SCHEMA.table("habits")
    with SqliteSource(source).snapshot() as snapshot:
        before = {t.name: snapshot.leaf_pages(t) for t in (users, habits)}
        shadow = Shadow(snapshot, shadow_path)
        for table in (users, habits):
            shadow.replace_all(table, 1)
        shadow.commit()
    mutate(source, ["UPDATE habits SET name = 'Renamed' WHERE rowid = 1"])
    _tamper(shadow_path, "UPDATE users SET name = 'not what D1 has'")  # seen only if read
    with SqliteSource(source).snapshot() as snapshot:
        assert snapshot.leaf_pages(users) == before["users"]
        assert snapshot.leaf_pages(habits) != before["habits"]
        shadow = Shadow(snapshot, shadow_path)
        assert not shadow.changes(users)
        assert len(shadow.changes(habits).rowids) == 1


def _tamper(shadow_path: Path, statement: str) -> None:
    """Make the shadow's copy of rows differ from D1: a comparison that reads them reports
    them as changed, so what it reports shows which rows it read."""
    with sqlite3.connect(shadow_path) as conn:
        conn.execute(statement)


def _recorded(source, shadow_path, table):
    with SqliteSource(source).snapshot() as snapshot:
        shadow = Shadow(snapshot, shadow_path)
        shadow.replace_all(table, 1)
        shadow.commit()


def _shadow_rows(shadow_path: Path) -> dict[str, list[tuple]]:
    with closing(sqlite3.connect(shadow_path)) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: conn.execute(f'SELECT * FROM "{n}" ORDER BY 1').fetchall() for n in names}


STAGED_TABLES = ("users", "accounts", "sessions", "habits")  # a derived column, a secret one


def test_a_copy_staged_while_postgres_loads_equals_one_made_after(tmp_path):
    """The shadow of a full load is copied by a worker while Postgres loads the table
    (Shadow.stage), then swapped in: the same rows, derived values and secret digests, the
    same layout, generation and page map as a copy made after the load on the snapshot's own
    connection."""
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=20, seed=6)
    tables = [SCHEMA.table(name) for name in STAGED_TABLES]
    for staged in (False, True):
        with SqliteSource(source).snapshot() as snapshot:
            shadow = Shadow(snapshot, tmp_path / f"shadow_{staged}.sqlite")
            for table in tables:
                if staged:
                    shadow.stage(table)
                    shadow._staged[table.name][0].result()  # copied before the swap
                    assert f"{table.name}~staged" in _shadow_rows(shadow._path)
                shadow.replace_all(table, 7)
                shadow.commit()
            shadow.checkpoint()
    inline, staged = (_shadow_rows(tmp_path / f"shadow_{s}.sqlite") for s in (False, True))
    assert inline == staged
    assert set(STAGED_TABLES) <= set(staged) and all(staged[t] for t in STAGED_TABLES)


def test_a_staged_copy_is_not_swapped_in_once_d1_changed(tmp_path):
    """Between the staged copy and its swap the snapshot begins a new read transaction; D1
    written in between (a live file) would leave the shadow holding rows D1 no longer has."""
    source, shadow_path = tmp_path / "d1.sqlite", tmp_path / "shadow.sqlite"
    build_sample_db(source, users=10, seed=7)
    habits = SCHEMA.table("habits")
    with SqliteSource(source).snapshot() as snapshot:
        shadow = Shadow(snapshot, shadow_path)
        shadow.stage(habits)
        shadow._staged["habits"][0].result()
        shadow.commit()  # a new read transaction: D1 may be written before it reads
        mutate(source, ["UPDATE habits SET name = 'Renamed' WHERE rowid = 1"])
        with pytest.raises(sqlite3.OperationalError, match="changed while it was copied"):
            shadow.replace_all(habits, 1)


def test_staged_copies_never_swapped_in_are_dropped(tmp_path):
    """A table that failed after its copy was staged, and a run killed before the swap."""
    source, shadow_path = tmp_path / "d1.sqlite", tmp_path / "shadow.sqlite"
    build_sample_db(source, users=10, seed=8)
    habits, users = SCHEMA.table("habits"), SCHEMA.table("users")
    with SqliteSource(source).snapshot() as snapshot:
        shadow = Shadow(snapshot, shadow_path)
        shadow.stage(habits)  # its load fails: replace_all is never called
        shadow.checkpoint()
    assert "habits~staged" not in _shadow_rows(shadow_path)
    with closing(sqlite3.connect(shadow_path)) as conn:  # as a killed run leaves it
        conn.execute('CREATE TABLE "users~staged" (_rowid INTEGER PRIMARY KEY)')
        conn.commit()
    with SqliteSource(source).snapshot() as snapshot:
        shadow = Shadow(snapshot, shadow_path)
        assert "users~staged" not in _shadow_rows(shadow_path)
        assert not shadow.usable(users)


def test_only_the_rows_of_changed_pages_are_compared(tmp_path):
    """An update, an insert and a delete in a table of many pages: each is found, and the
    comparison reads only the rowid ranges of the pages they touched."""
    source, shadow_path = tmp_path / "d1.sqlite", tmp_path / "shadow.sqlite"
    build_sample_db(source, users=100, seed=3)
    ledger = SCHEMA.table("points_ledger")
    _recorded(source, shadow_path, ledger)
    with sqlite3.connect(source) as d1:
        rows, last = d1.execute("SELECT count(*), max(rowid) FROM points_ledger").fetchone()
        gone = d1.execute("SELECT id FROM points_ledger WHERE rowid = 7").fetchone()[0]
        d1.execute(f"UPDATE points_ledger SET coins = coins + 1 WHERE rowid = {last // 2}")
        d1.execute("DELETE FROM points_ledger WHERE rowid = 7")
        d1.execute(
            "INSERT INTO points_ledger (id, user_id, event_type, coins, xp, created_at) "
            "SELECT 'new-row', user_id, event_type, 1, 1, created_at FROM points_ledger "
            "WHERE rowid = 1"
        )
    with SqliteSource(source).snapshot() as snapshot:
        changes = Shadow(snapshot, shadow_path).changes(ledger)
    assert sorted(changes.rowids) == [last // 2, last + 1]
    assert changes.deleted == [[gone]]
    _tamper(shadow_path, "UPDATE points_ledger SET coins = -1")  # every row now differs
    with SqliteSource(source).snapshot() as snapshot:
        read = Shadow(snapshot, shadow_path).changes(ledger).rowids
    assert {last // 2, last + 1} <= set(read)
    assert rows > 1000 and len(read) < rows / 10


def test_pages_hashed_ahead_are_not_trusted_after_a_write(tmp_path):
    """Leaf pages are hashed ahead in a worker thread; when D1 is written between that read and
    the snapshot's, the file change counter differs and the pages are hashed again."""
    source, shadow_path = tmp_path / "d1.sqlite", tmp_path / "shadow.sqlite"
    build_sample_db(source, users=10, seed=5)
    habits = SCHEMA.table("habits")
    _recorded(source, shadow_path, habits)
    with SqliteSource(source).snapshot() as snapshot:
        shadow = Shadow(snapshot, shadow_path)
        shadow.prefetch([habits])
        shadow._ahead["habits"].result()  # the worker has read the pages as they were
        mutate(source, ["UPDATE habits SET name = 'Renamed' WHERE rowid = 1"])
        assert shadow.changes(habits).rowids == [1]


def test_a_file_replaced_during_a_run_is_not_read_beside_sqlite(tmp_path):
    """Pages are read from the file by name, beside SQLite's connection: once another file
    holds that name (here one with the pages recorded before the change SQLite sees), reading
    them would hide the change, so the table fails instead."""
    source, shadow_path = tmp_path / "d1.sqlite", tmp_path / "shadow.sqlite"
    build_sample_db(source, users=10, seed=5)
    habits = SCHEMA.table("habits")
    _recorded(source, shadow_path, habits)
    before = tmp_path / "before.sqlite"
    shutil.copy(source, before)
    mutate(source, ["UPDATE habits SET name = 'Renamed' WHERE rowid = 1"])
    with SqliteSource(source).snapshot() as snapshot:
        shadow = Shadow(snapshot, shadow_path)
        os.replace(before, source)
        with pytest.raises(RuntimeError, match="replaced"):
            shadow.changes(habits)


def test_a_change_in_an_overflow_page_alone_is_found(tmp_path):
    """SQLite rewrites a same-size value in place: a long text changed past the part kept on
    its leaf page leaves that page byte for byte as it was. Its overflow pages are hashed
    with it, so the change is still found."""
    source, shadow_path = tmp_path / "d1.sqlite", tmp_path / "shadow.sqlite"
    build_sample_db(source, users=10, seed=4)
    users = SCHEMA.table("users")
    mutate(source, [f"UPDATE users SET image = '{'a' * 20_000}' WHERE rowid = 2"])
    _recorded(source, shadow_path, users)

    def leaf_bytes() -> list[bytes]:
        with sqlite3.connect(source) as d1:
            leaves = d1.execute(
                "SELECT pageno FROM dbstat WHERE name = 'users' AND pagetype = 'leaf'"
            ).fetchall()
        data = source.read_bytes()
        return [data[(p - 1) * 4096 : p * 4096] for (p,) in leaves]

    before = leaf_bytes()
    mutate(source, [f"UPDATE users SET image = '{'a' * 19_000}b{'a' * 999}' WHERE rowid = 2"])
    assert leaf_bytes() == before  # only the overflow pages changed
    with SqliteSource(source).snapshot() as snapshot:
        assert Shadow(snapshot, shadow_path).changes(users).rowids == [2]


def test_rowid_ranges_are_read_from_the_leaf_pages(tmp_path):
    """Negative and 9-byte rowids decode as SQLite stores them."""
    database = tmp_path / "d1.sqlite"
    rowids = [-(2**63), -5, 0, 300, 2**56 + 1, 2**63 - 1]
    with sqlite3.connect(database) as d1:
        d1.execute("CREATE TABLE users (id TEXT PRIMARY KEY)")
        d1.executemany("INSERT INTO users (rowid, id) VALUES (?, ?)", [(r, str(r)) for r in rowids])
    with SqliteSource(database).snapshot() as snapshot:
        pages = snapshot.leaf_pages(SCHEMA.table("users"))
        assert snapshot.rowid_ranges(list(pages.values())) == [(rowids[0], rowids[-1])]


def test_a_wal_database_is_paged_only_through_its_copy(tmp_path):
    """In WAL mode the file lacks the latest pages, so none are listed; the run's backup copy
    is a plain file again, whose pages can be read."""
    database = tmp_path / "wrangler-state.sqlite"
    build_sample_db(database, users=10, seed=2)
    users = SCHEMA.table("users")
    with sqlite3.connect(database) as app:
        app.execute("PRAGMA journal_mode = WAL")
        app.execute("UPDATE users SET name = 'In the WAL only'")
        app.commit()
        with SqliteSource(database).snapshot() as snapshot:
            assert snapshot.leaf_pages(users) is None
        d1 = D1Source(path=str(database), copy_dir=str(tmp_path / "copies"))
        with d1.snapshot() as snapshot:
            assert snapshot.leaf_pages(users)
            names = snapshot.connection.execute("SELECT DISTINCT name FROM users").fetchall()
    assert names == [(b"In the WAL only",)]


def test_source_schema_checks_show_drift_on_each_d1_asset(tmp_path):
    database = tmp_path / "d1.sqlite"
    with sqlite3.connect(database) as d1:
        d1.executescript(sqlite_ddl(SCHEMA))
        d1.execute("ALTER TABLE users ADD COLUMN nickname TEXT")
        d1.execute("CREATE TABLE d1_migrations (id INTEGER PRIMARY KEY, name TEXT)")
    job = define_asset_job(
        "drift_only",
        selection=AssetSelection.checks_for_assets(*[source_key(t.name) for t in SCHEMA.tables]),
    )
    defs = Definitions(
        assets=ASSETS,
        asset_checks=ASSET_CHECKS,
        jobs=[job],
        resources={
            "d1": D1Source(path=str(database)),
            "postgres": PostgresTarget(url="postgresql://unused"),  # the checks read D1 only
            "sync": SyncSettings(state_dir=str(tmp_path / "sync")),
        },
    )
    result = defs.resolve_job_def("drift_only").execute_in_process(
        instance=DagsterInstance.ephemeral(), raise_on_error=False
    )
    outcomes = {
        table_of(e.event_specific_data.asset_key): e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert len(outcomes) == len(SCHEMA.tables)
    assert not outcomes["users"].passed
    problems = outcomes["users"].metadata["problems"].value
    assert problems == [
        "added column users.nickname (TEXT): declare it on users in d1_migration/spec/tables.py"
    ]
    assert all(o.passed for name, o in outcomes.items() if name != "users")
    assert outcomes["habits"].metadata["skipped_internal_tables"].value == ["d1_migrations"]


def _read(batches) -> pa.Table:
    return pa.Table.from_batches(list(batches))


def test_the_arrow_reader_gives_exactly_what_sqlite3_gives(tmp_path):
    """ADBC's whole-table read against sqlite3's, on every table of the spec, bad rows included
    (text in INTEGER columns, invalid UTF-8, NUL, blobs), in batches of 3 so that many a batch
    holds only NULLs in a column whose later batches hold text, and with the extremes of int64
    and a long leading run of NULLs added."""
    database = tmp_path / "d1.sqlite"
    build_sample_db(database, users=40, seed=5)
    with sqlite3.connect(database) as d1:
        user = d1.execute("SELECT id FROM users LIMIT 1").fetchone()[0]
        d1.executemany(
            "INSERT INTO points_ledger (id, user_id, event_type, coins, event_id, reason) "
            "VALUES (?, ?, 'x', ?, ?, ?)",
            [(f"z{n}", user, 0, None, None) for n in range(10)]
            + [
                ("big", user, 2**63 - 1, b"\xff\xfe not UTF-8", 2**62),
                ("small", user, -(2**63), "nul \x00 inside", -1.5),
                ("blob", user, 1.25, sqlite3.Binary(b"\x00\x01"), sqlite3.Binary(b"\x02")),
            ],
        )
    with SqliteSource(database).snapshot() as snapshot:
        for table in SCHEMA.tables:
            via_arrow = _read(snapshot.arrow_batches(table, 3))
            via_sqlite = _read(snapshot.sqlite_batches(table, 3))
            assert via_arrow.num_rows == snapshot.count(table), table.name
            assert via_arrow.equals(via_sqlite), table.name


def test_a_wal_file_is_read_as_the_snapshot_saw_it(tmp_path):
    """In WAL mode a second connection sees commits made after the snapshot began, so a whole
    table is read on the snapshot's own connection there."""
    database = tmp_path / "d1.sqlite"
    build_sample_db(database, users=10, seed=2)
    users = SCHEMA.table("users")
    with sqlite3.connect(database) as d1:
        d1.execute("PRAGMA journal_mode = WAL")
    with SqliteSource(database).snapshot() as snapshot:
        before = snapshot.count(users)
        with sqlite3.connect(database) as d1:
            d1.execute("DELETE FROM users WHERE rowid = (SELECT min(rowid) FROM users)")
        assert _read(snapshot.batches(users, 1000)).num_rows == before


def test_no_write_lands_while_a_journal_file_is_read_beside_its_snapshot(tmp_path):
    """Outside WAL mode the snapshot's read lock keeps every writer from committing while ADBC
    reads on its own connection, so both see one state."""
    database = tmp_path / "d1.sqlite"
    build_sample_db(database, users=10, seed=3)
    users = SCHEMA.table("users")
    with SqliteSource(database).snapshot() as snapshot:
        first = _read(snapshot.batches(users, 1000))
        d1 = sqlite3.connect(database, timeout=0.1)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            d1.execute("DELETE FROM users")
            d1.commit()
        d1.close()
        assert _read(snapshot.arrow_batches(users, 1000)).equals(first)
