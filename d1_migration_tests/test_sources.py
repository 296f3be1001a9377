"""D1 as a file and as a `wrangler d1 export`; schema drift stops a run before any load."""

import math
import sqlite3

import psycopg
import pytest

from d1_migration.export import ExportError, replay
from d1_migration.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.runner import materialize_all
from d1_migration.sample_data import build_sample_db, sqlite_ddl
from d1_migration.tables import SCHEMA
from d1_migration_tests.helpers import dump, sync
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
        D1Source(path=str(export), export_cache_dir=str(tmp_path / "exports")),
        PostgresTarget(url=pg_url),
        sync=SyncSettings(state_dir=str(tmp_path / "sync")),
    )
    assert summary.success
    assert summary.tables["users"]["target_rows"] == 1


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
