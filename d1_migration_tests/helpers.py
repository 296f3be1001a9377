"""Helpers shared by the source and re-sync tests: sync into Postgres, dump it, change D1."""

import contextlib
import sqlite3
from pathlib import Path

import psycopg

from d1_migration.demo.sample_data import sqlite_ddl
from d1_migration.source.snapshot import SqliteSource
from d1_migration.spec.model import Schema, q
from d1_migration.spec.tables import SCHEMA
from d1_migration.sync.engine import sync_all
from d1_migration.target.load import TableResult

ROOT = Path(__file__).resolve().parents[1]  # the project: dagster.yaml, README.md


def as_url(conninfo: str) -> str:
    """A libpq key=value string as a postgresql:// URL, which SQLAlchemy (Dagster) needs."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = params.get("user", "postgres")
    return f"postgresql://{user}@{params['host']}:{params.get('port', 5432)}/{params['dbname']}"


def sync(
    url: str,
    source: Path,
    shadow: Path | None,
    incremental: bool,
    schema: Schema = SCHEMA,
    spec: Schema = SCHEMA,
) -> dict[str, TableResult]:
    """Every table of ``schema`` (a subset of ``spec``, for speed) from a SQLite file; ``spec``
    is another than the project's when a test evolves it."""
    with psycopg.connect(url, autocommit=True) as conn, SqliteSource(source).snapshot() as snap:
        return sync_all(
            conn,
            snap,
            spec,
            None if shadow is None else lambda _: shadow,
            incremental=incremental,
            selected=[t.name for t in schema.tables],
        )


def dump(url: str, schema: Schema = SCHEMA) -> dict:
    """Every target row and every open quarantine entry, in a comparable form."""
    with psycopg.connect(url) as conn:
        out = {
            t.name: sorted(map(repr, conn.execute(f"SELECT * FROM {q(t.name)}")))
            for t in schema.tables
        }
        out["quarantine"] = sorted(
            map(
                repr,
                conn.execute(
                    "SELECT source_table, source_pk, target_pk, column_name, reason_code, reason, "
                    "raw_row FROM d1_migration.rejected_rows WHERE resolved_at IS NULL"
                ),
            )
        )
        out["id_map"] = sorted(map(repr, conn.execute("SELECT * FROM d1_migration.id_map")))
        out["ref_map"] = sorted(map(repr, conn.execute("SELECT * FROM d1_migration.ref_map")))
    return out


def mutate(path: Path, statements: list[str]) -> None:
    """Apply changes as the app would; one that D1 refuses (a FK, a UNIQUE) does not happen."""
    with sqlite3.connect(path, isolation_level=None) as d1:
        d1.execute("PRAGMA foreign_keys = ON")
        for statement in statements:
            with contextlib.suppress(sqlite3.IntegrityError):
                d1.execute(statement)


def first(path: Path, sql: str) -> object:
    with sqlite3.connect(path) as d1:
        return d1.execute(sql).fetchone()[0]


def new_d1(path: Path, statements: list[str]) -> Path:
    """A D1 file with the spec's schema and only the rows ``statements`` write."""
    with sqlite3.connect(path) as d1:
        d1.executescript(sqlite_ddl(SCHEMA))
    mutate(path, statements)
    return path


def assert_like_fresh_migration(
    synced: str, source: Path, fresh: str, schema: Schema = SCHEMA, spec: Schema = SCHEMA
) -> None:
    """``synced`` holds what a full migration of ``source`` into the empty ``fresh`` gives."""
    sync(fresh, source, None, incremental=False, schema=schema, spec=spec)
    assert dump(synced, schema) == dump(fresh, schema)
