"""The sample D1 database follows the spec: a column added to a table needs no other edit.

The spec is changed here with ``dataclasses.replace``, as an edit of ``tables.py`` would change
it, without touching ``tables.py`` or the fixture.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from d1_migration.demo.sample_data import build_sample_db
from d1_migration.source.snapshot import SqliteSource
from d1_migration.spec.model import Column, Schema, integer, text
from d1_migration.spec.tables import SCHEMA
from d1_migration.sync.engine import sync_all
from d1_migration.transforms import uuid_for
from d1_migration.verify.content import WHOLE, verify_table


def with_column(schema: Schema, table: str, column: Column) -> Schema:
    """``schema`` with one more column in ``table``."""
    tables = tuple(
        replace(t, columns=(*t.columns, column)) if t.name == table else t for t in schema.tables
    )
    return replace(schema, tables=tables)


def test_a_nullable_column_added_to_the_spec_is_sampled_and_migrated(tmp_path: Path, pg_url):
    """End to end through the engine every entry point uses: D1 built from the changed spec,
    migrated with it, and the new column's values in Postgres exactly as in D1."""
    spec = with_column(SCHEMA, "habits", text("notes"))
    d1 = tmp_path / "d1.sqlite"
    sample = build_sample_db(d1, users=10, seed=3, schema=spec)

    with sqlite3.connect(d1) as conn:
        notes = conn.execute("SELECT id, notes FROM habits").fetchall()
    bad = {r.source_pk for r in sample.rejects if r.table == "habits"}
    assert {n is None for _, n in notes} == {True, False}  # NULL and values, as nullable allows

    with psycopg.connect(pg_url, autocommit=True) as conn, SqliteSource(d1).snapshot() as snap:
        results = sync_all(conn, snap, spec, None, incremental=False)
        migrated = conn.execute("SELECT id::text, notes FROM habits").fetchall()
        quarantined = conn.execute(
            "SELECT source_table, source_pk, reason_code FROM d1_migration.rejected_rows"
        ).fetchall()
        content = verify_table(conn, snap, spec.table("habits"), spec, WHOLE)

    assert set(results) == {t.name for t in spec.tables}
    assert sorted(migrated) == sorted((uuid_for(i), n) for i, n in notes if i not in bad)
    assert set(quarantined) == {(r.table, r.source_pk, r.reason_code) for r in sample.rejects}
    assert content.passed, content.samples


def test_a_check_the_sample_cannot_meet_is_named(tmp_path: Path) -> None:
    """Values are valid by construction: a column CHECK the generator cannot satisfy stops the
    build with the column and what to do, rather than writing rows the migration quarantines."""
    spec = with_column(SCHEMA, "habits", integer("streak", check="streak % 7 = 0"))
    with pytest.raises(ValueError, match=r"habits\.streak: CHECK \(streak % 7 = 0\)"):
        build_sample_db(tmp_path / "d1.sqlite", users=10, schema=spec)
