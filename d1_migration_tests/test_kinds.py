"""A column kind is one entry (kinds.py): a kind declared in this file alone, with its own
projection, Postgres type and converter, migrates, re-syncs and verifies like the built-in ones,
and no other module needs to know it."""

import sqlite3
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from d1_migration.source.snapshot import SqliteSource
from d1_migration.spec.kinds import (
    ColumnBatch,
    ColumnKind,
    Projection,
    StorageClass,
    quoted,
    sentence,
)
from d1_migration.spec.model import Column, Kind, Schema, Table, text, uuid_pk
from d1_migration.sync.engine import SchemaDrift, sync_all
from d1_migration.transforms import convert_batch
from d1_migration.verify.content import verify_table
from d1_migration_tests.helpers import mutate


def _convert_range(column: ColumnBatch, text: pa.Array) -> pa.Array:
    literal = pc.cast(column.projection("range"), pa.string())
    column.reject(
        pc.and_(pc.is_valid(text), pc.is_null(literal)),
        "bad_range",
        sentence(f"{column.label} = ", quoted(text), " is not a JSON [lower, upper] of integers"),
    )
    return literal


# An inclusive range of integers, written by the app as a JSON pair in a column it declares JSON:
# INT4RANGE in Postgres. The range literal is built in SQLite (JSON1), so the converter only
# checks that there is one.
INT_RANGE = ColumnKind(
    "int4range",
    "INT4RANGE",
    _convert_range,
    d1_type="JSON",
    expected="a JSON [lower, upper]",
    extras=(
        Projection(
            "range",
            "CASE WHEN typeof({x}) != 'text' OR NOT json_valid({x}) THEN NULL "
            "WHEN json_type({x}) = 'array' AND json_array_length({x}) = 2 "
            "AND json_type({x}, '$[0]') = 'integer' AND json_type({x}, '$[1]') = 'integer' "
            "AND json_extract({x}, '$[0]') <= json_extract({x}, '$[1]') "
            "THEN '[' || json_extract({x}, '$[0]') || ',' || json_extract({x}, '$[1]') || ']' END",
            pa.binary(),
        ),
    ),
)
GROUPS = Table("groups", "test", (uuid_pk(), text("name", null=False), Column("ages", INT_RANGE)))
SCHEMA = Schema(enums=(), tables=(GROUPS,))


def d1_with(path: Path, declared: str, rows: list[tuple[str, str, object]]) -> Path:
    """A D1 file written by hand, so the declared types are D1's, not derived from the spec."""
    with sqlite3.connect(path) as d1:
        d1.execute(
            f"CREATE TABLE groups (id TEXT PRIMARY KEY, name TEXT NOT NULL, ages {declared})"
        )
        d1.executemany("INSERT INTO groups VALUES (?, ?, ?)", rows)
    return path


def sync(url: str, source: Path, shadow: Path, schema: Schema = SCHEMA) -> None:
    with psycopg.connect(url, autocommit=True) as conn, SqliteSource(source).snapshot() as snap:
        sync_all(conn, snap, schema, lambda _: shadow, incremental=True)


def test_a_kind_declared_in_one_entry_migrates_resyncs_and_verifies(tmp_path, pg_url):
    source = d1_with(
        tmp_path / "d1.sqlite",
        "JSON",
        [
            ("g1", "adults", "[18, 64]"),
            ("g2", "backwards", "[30, 18]"),
            ("g3", "a blob", b"\x01"),
            ("g4", "unknown", None),
            ("g5", "empty", ""),
        ],
    )
    shadow = tmp_path / "shadow.sqlite"
    sync(pg_url, source, shadow)

    def target() -> tuple[list, set]:
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute(
                "SELECT name, lower(ages), upper(ages) FROM groups ORDER BY name"
            ).fetchall()
            quarantined = conn.execute(
                "SELECT source_pk, column_name, reason_code, reason "
                "FROM d1_migration.rejected_rows WHERE resolved_at IS NULL"
            ).fetchall()
        return rows, set(quarantined)

    rows, quarantined = target()
    # lower()/upper() exist only for ranges: the column has the entry's Postgres type.
    assert rows == [("adults", 18, 65), ("empty", None, None), ("unknown", None, None)]
    assert quarantined == {
        ("g2", "ages", "bad_range", "ages = '[30, 18]' is not a JSON [lower, upper] of integers"),
        (
            "g3",
            "ages",
            "wrong_type",
            "ages holds a BLOB value where a JSON [lower, upper] is required; correct it in D1",
        ),
    }
    with psycopg.connect(pg_url, autocommit=True) as conn, SqliteSource(source).snapshot() as snap:
        assert verify_table(conn, snap, GROUPS, SCHEMA).passed

    mutate(source, ["UPDATE groups SET ages = '[18, 30]' WHERE id = 'g2'"])
    sync(pg_url, source, shadow)
    rows, quarantined = target()
    assert ("backwards", 18, 31) in rows
    assert {pk for pk, *_ in quarantined} == {"g3"}

    with psycopg.connect(pg_url, autocommit=True) as conn, SqliteSource(source).snapshot() as snap:
        conn.execute("UPDATE groups SET ages = '[1, 2]' WHERE name = 'adults'")
        found = verify_table(conn, snap, GROUPS, SCHEMA)
    assert (found.passed, found.differing) == (False, 1)


def test_drift_compares_d1_with_the_kinds_declared_type(tmp_path, pg_url):
    """The entry's D1 type is what the drift check expects D1 to declare."""
    source = d1_with(tmp_path / "d1.sqlite", "TEXT", [("g1", "adults", "[18, 64]")])
    with pytest.raises(SchemaDrift, match=r"groups\.ages: D1 declares TEXT, the spec reads JSON"):
        sync(pg_url, source, tmp_path / "shadow.sqlite")


def test_an_inet_column_read_from_d1_is_refused_with_the_reason(tmp_path):
    """INET exists for columns the map adds: one read from D1 is a mistake in the spec, named,
    rather than a value run through another kind's conversion."""
    table = Table("groups", "test", (uuid_pk(), text("name"), Column("ages", Kind.INET)))
    source = d1_with(tmp_path / "d1.sqlite", "TEXT", [("g1", "adults", "10.0.0.1")])
    with SqliteSource(source).snapshot() as snap:
        batch = next(snap.batches(table, 10))
        with pytest.raises(TypeError, match="ages: an inet column has no D1 value"):
            convert_batch(table, batch, Schema(enums=(), tables=(table,)))


def test_a_kind_whose_value_is_not_what_it_accepts_is_refused():
    """ADBC's read tells a wrong class by a missing value (snapshot.py): a kind that accepted a
    class its value projection leaves NULL would have that class read as NULL, silently."""
    with pytest.raises(ValueError, match=r"gives values of \['TEXT'\] but the kind accepts"):
        ColumnKind("loose", "TEXT", _convert_range, accepts=(StorageClass.TEXT, StorageClass.BLOB))
    assert ColumnKind("strict", "TEXT", _convert_range).accepts == (StorageClass.TEXT,)
