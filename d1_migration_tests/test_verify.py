"""matches_d1 on real SQLite and Postgres: a migrated target equals a fresh migration of D1,
and every hand-made divergence (a value, a row, a quarantine entry, an id) is named."""

import sqlite3
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from dagster import AssetCheckKey, AssetSelection

from d1_migration.defs.assets import SyncConfig
from d1_migration.defs.keys import target_key
from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.demo.sample_data import build_sample_db
from d1_migration.runner import materialize_all
from d1_migration.source.snapshot import ROWID, Blocks, SqliteSource
from d1_migration.spec.tables import SCHEMA
from d1_migration.target.ddl import ensure_schema
from d1_migration.transforms import uuid_for
from d1_migration.verify.checks import MATCHES_D1, ContentCheck
from d1_migration.verify.content import (
    WHOLE,
    Slice,
    Verification,
    last_verified_whole,
    verify_table,
)
from d1_migration_tests.helpers import mutate, new_d1, sync


@pytest.fixture
def migrated(tmp_path: Path, pg_url: str) -> Path:
    """A sample D1 (with bad rows of every kind) migrated in full into ``pg_url``."""
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=20, seed=5)
    sync(pg_url, source, tmp_path / "shadow.sqlite", incremental=False)
    return source


def verify(url: str, source: Path, table: str, part: Slice = WHOLE) -> Verification:
    with psycopg.connect(url, autocommit=True) as conn, SqliteSource(source).snapshot() as snap:
        return verify_table(conn, snap, SCHEMA.table(table), SCHEMA, part)


def one(url: str, sql: str) -> object:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchone()[0]


def d1_user(source: Path, pk: str) -> tuple[str, str]:
    """The D1 id and name of the user whose Postgres id is ``pk``."""
    with SqliteSource(source).snapshot() as snap:
        rows = snap.connection.execute("SELECT id, name FROM users").fetchall()
    return next((i.decode(), n.decode()) for i, n in rows if uuid_for(i.decode()) == pk)


def test_a_fresh_migration_matches_d1_whole_and_in_every_slice(migrated, pg_url):
    """No false alarm: not with quarantined rows, duplicates kept by rowid, orphans, remapped
    ids or self-references, and not when a slice holds only one row of a duplicate pair (slices
    of single rowids split these small tables finely; matches_d1 takes blocks of rowids)."""
    assert one(pg_url, "SELECT count(*) FROM d1_migration.rejected_rows") > 10
    for table in SCHEMA.tables:
        for part in (WHOLE, *(Slice(i, 3) for i in range(3)), *(Slice(i, 3, 1) for i in range(3))):
            found = verify(pg_url, migrated, table.name, part)
            assert found.passed, (table.name, str(part), found.samples)
    assert verify(pg_url, migrated, "points_ledger").compared_rows > 100


DIVERGENCES = [
    pytest.param(
        "users",
        "UPDATE users SET name = 'x' WHERE id = '{pk}'",
        {"problem": "differs", "columns": ["name"]},
        id="value-changed-by-hand",
    ),
    pytest.param(
        "habits", "DELETE FROM habits WHERE id = '{pk}'", {"problem": "missing"}, id="deleted-row"
    ),
    pytest.param(
        "activity_events",
        "UPDATE activity_events SET metadata = jsonb_set(coalesce(metadata, '{{}}'), '{{k}}', "
        "'1') WHERE id = '{pk}'",
        {"problem": "differs", "columns": ["metadata"]},
        id="jsonb-value",
    ),
    pytest.param(
        "focus_sessions",
        "UPDATE focus_sessions SET started_at = started_at + interval '1 microsecond' "
        "WHERE id = '{pk}'",
        {"problem": "differs", "columns": ["started_at"]},
        id="timestamp-off-by-one-microsecond",
    ),
]


@pytest.mark.parametrize(("table", "tamper", "expected"), DIVERGENCES)
def test_a_divergence_is_named_by_its_primary_key(migrated, pg_url, table, tamper, expected):
    pk = str(one(pg_url, f"SELECT id FROM {table} ORDER BY id LIMIT 1"))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(tamper.format(pk=pk))
    found = verify(pg_url, migrated, table)
    assert not found.passed
    assert found.differences == 1
    assert found.samples[0].items() >= {"pk": pk, **expected}.items()


def test_an_extra_row_in_postgres_is_found(migrated, pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (id, name, email) VALUES "
            "('00000000-0000-4000-8000-00000000abcd', 'ghost', 'ghost@example.com')"
        )
    found = verify(pg_url, migrated, "users")
    assert (found.extra, found.differences) == (1, 1)
    assert found.samples == [{"problem": "extra", "pk": "00000000-0000-4000-8000-00000000abcd"}]


def test_quarantine_and_id_map_are_compared_too(migrated, pg_url):
    table, source_pk = (
        psycopg.connect(pg_url)
        .execute(
            "SELECT source_table, source_pk FROM d1_migration.rejected_rows ORDER BY 1, 2 LIMIT 1"
        )
        .fetchone()
    )
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE d1_migration.rejected_rows SET raw_row = raw_row || '{\"x\": 1}' "
            "WHERE source_table = %s AND source_pk = %s",
            [table, source_pk],
        )
    found = verify(pg_url, migrated, table)
    assert found.quarantine_differences == 1
    assert found.samples == [{"problem": "quarantine entry differs in raw_row", "d1_pk": source_pk}]

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE d1_migration.rejected_rows SET resolved_at = now() "
            "WHERE source_table = %s AND source_pk = %s",
            [table, source_pk],
        )
    assert verify(pg_url, migrated, table).samples == [
        {"problem": "not quarantined", "d1_pk": source_pk}
    ]

    source_id = one(
        pg_url, "SELECT source_id FROM d1_migration.id_map WHERE source_table = 'users' LIMIT 1"
    )
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM d1_migration.id_map WHERE source_table = 'users' AND source_id = %s",
            [source_id],
        )
    found = verify(pg_url, migrated, "users")
    assert (found.id_map_differences, found.differences) == (1, 1)
    assert found.samples == [{"problem": "id_map entry differs", "d1_id": source_id}]


def test_slices_rotate_so_every_row_is_verified_within_n_syncs(migrated, pg_url):
    """Three slices: a tampered row is found by exactly one of three successive checks, and
    the table counts as verified whole only once all three passed."""
    pk = str(one(pg_url, "SELECT id FROM users ORDER BY id LIMIT 1"))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE users SET name = 'x' WHERE id = %s", [pk])
    content = ContentCheck(migrated, SCHEMA, slices=3)
    users = SCHEMA.table("users")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        results = [content.result(conn, users) for _ in range(3)]
        assert sorted(r.metadata["verified"].value for r in results) == [
            "slice 1 of 3",
            "slice 2 of 3",
            "slice 3 of 3",
        ]
        assert [r.passed for r in results].count(False) == 1
        failing = next(r for r in results if not r.passed)
        assert failing.metadata["differences"].value[0]["pk"] == pk
        assert results[-1].metadata["last_verified_whole_at"].value == "not yet"

        conn.execute("UPDATE users SET name = %s WHERE id = %s", [d1_user(migrated, pk)[1], pk])
        again = [content.result(conn, users) for _ in range(3)]  # the same order again
        assert [r.metadata["verified"].value for r in again] == [
            r.metadata["verified"].value for r in results
        ]
        assert all(r.passed for r in again)
        assert again[-1].metadata["last_verified_whole_at"].value != "not yet"


def test_matches_d1_runs_in_materialize_all_and_alone(tmp_path, pg_url):
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=15, seed=7)
    d1, target = D1Source(path=str(source)), PostgresTarget(url=pg_url)
    sync_settings = SyncSettings(state_dir=str(tmp_path / "sync"))
    summary = materialize_all(d1, target, sync=sync_settings, config=SyncConfig(verify_slices=1))
    matches = [c for c in summary.checks if c.check == MATCHES_D1]
    assert len(matches) == len(SCHEMA.tables)
    assert all(c.passed for c in matches), [c.metadata for c in matches if not c.passed]

    pk = str(one(pg_url, "SELECT id FROM habits ORDER BY id LIMIT 1"))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE habits SET name = 'edited in Postgres' WHERE id = %s", [pk])
    alone = materialize_all(
        d1,
        target,
        sync=sync_settings,
        selection=AssetSelection.checks(AssetCheckKey(target_key("habits"), MATCHES_D1)),
        config=SyncConfig(verify_slices=1),
    )
    [check] = alone.checks
    assert not check.passed
    assert check.metadata["differing_rows"] == 1
    [difference] = check.metadata["differences"]
    assert difference.items() >= {"problem": "differs", "pk": pk, "columns": ["name"]}.items()


def _through_a_second_shadow(tmp_path: Path, pg_url: str) -> tuple[Path, Path, str, str]:
    """The trap of a job that lost its state directory: a rename synced through another
    shadow, then undone in D1, which the first shadow never saw change. Returns the source, the
    first shadow, the user's Postgres id and its D1 name."""
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=15, seed=8)
    shadow, other = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    sync(pg_url, source, shadow, incremental=True)
    sync(pg_url, source, other, incremental=True)
    pk = str(one(pg_url, "SELECT id FROM users ORDER BY id LIMIT 1"))
    d1_id, name = d1_user(source, pk)
    mutate(source, [f"UPDATE users SET name = 'renamed' WHERE id = '{d1_id}'"])
    sync(pg_url, source, other, incremental=True)
    mutate(source, [f"UPDATE users SET name = '{name}' WHERE id = '{d1_id}'"])
    return source, shadow, pk, name


def test_a_shadow_behind_postgres_is_noticed_and_matches_d1_agrees(tmp_path, pg_url):
    source, shadow, pk, name = _through_a_second_shadow(tmp_path, pg_url)
    results = sync(pg_url, source, shadow, incremental=True)
    assert results["users"].mode == "full"  # its generation is behind Postgres's
    assert one(pg_url, f"SELECT name FROM users WHERE id = '{pk}'") == name
    assert verify(pg_url, source, "users").passed


def test_a_shadow_that_hides_a_change_leaves_a_stale_row_that_matches_d1_names(tmp_path, pg_url):
    """matches_d1 does not trust the shadow. A shadow that claims Postgres's generation (a
    restored copy, a tool's bug) hides the undo; the counts agree, so row_parity is blind to
    the stale row; matches_d1 names it."""
    source, shadow, pk, _ = _through_a_second_shadow(tmp_path, pg_url)
    with psycopg.connect(pg_url) as conn, sqlite3.connect(shadow) as kept:
        for table, generation in conn.execute(
            "SELECT table_name, generation FROM d1_migration.sync_state"
        ):
            kept.execute(
                "UPDATE _generations SET generation = ? WHERE table_name = ?", [generation, table]
            )
    sync(pg_url, source, shadow, incremental=True)
    assert one(pg_url, f"SELECT name FROM users WHERE id = '{pk}'") == "renamed"
    found = verify(pg_url, source, "users")
    [difference] = found.samples
    assert difference.items() >= {"problem": "differs", "pk": pk, "columns": ["name"]}.items()


def test_a_remapped_reference_lost_from_ref_map_is_found(tmp_path, pg_url):
    """ref_map keeps the D1 text of ids remapped in columns with no FK: losing an entry makes
    that text unrecoverable, so it counts as a difference."""
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=20, seed=5)
    sync(pg_url, source, None, incremental=False)
    table, target_pk, column = (
        psycopg.connect(pg_url)
        .execute("SELECT source_table, target_pk, column_name FROM d1_migration.ref_map LIMIT 1")
        .fetchone()
    )
    assert verify(pg_url, source, table).passed
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM d1_migration.ref_map WHERE source_table = %s AND target_pk = %s",
            [table, target_pk],
        )
    found = verify(pg_url, source, table)
    assert found.id_map_differences == 1
    assert found.samples == [{"problem": f"ref_map entry of {column} differs", "pk": target_pk}]


@pytest.mark.parametrize("spread", [1, 2**40], ids=["ranges", "sparse-rowids-scanned"])
def test_slices_of_blocks_partition_the_table(tmp_path, spread):
    """Every row is in exactly one slice, a block of consecutive rowids in one slice whole,
    negative rowids too; rowids spread too far for ranges are sliced by one scan, alike."""
    source = new_d1(tmp_path / "d1.sqlite", [])
    rowids = [-130, -65, -64, -1, 0, 1, 63, 64, 65, 127, 128, 1000, 1001, 5000 * spread]
    with sqlite3.connect(source) as d1:
        d1.executemany(
            "INSERT INTO db_metadata (rowid, key, value) VALUES (?, ?, 'v')",
            [(r, f"k{r}") for r in rowids],
        )
    table = SCHEMA.table("db_metadata")
    with SqliteSource(source).snapshot() as snap:
        for block in (1, 64):
            slices = [snap.slice_rows(table, i, 3, block) for i in range(3)]
            found = [r for ids, _ in slices for r in ids]
            assert sorted(found) == sorted(rowids), block
            for ids, keys in slices:
                assert keys == {f"k{r}" for r in ids}
                assert ids == sorted(ids)
                assert all((r // block) % 3 == (ids[0] // block) % 3 for r in ids)
            assert snap.arrow_reads()  # a slice's rows come through ADBC, with its condition
            for i, (ids, _) in enumerate(slices):
                read = pa.Table.from_batches(list(snap.batches(table, 4, Blocks(i, 3, block))))
                assert read[ROWID].to_pylist() == ids, (block, i)
                assert (
                    read.to_pylist()
                    == pa.Table.from_batches(list(snap.sqlite_batches(table, 4, ids))).to_pylist()
                )
        minus_one = set(snap.slice_rows(table, (-1) % 3, 3, 64)[0])  # rowids -64 to -1
        assert {-64, -1} <= minus_one and -65 not in minus_one


def test_a_target_from_before_block_slices_forgets_its_slice_records(migrated, pg_url):
    """Its slices were every N-th rowid: what they verified says nothing of the block slices,
    so no table counts as verified whole until a rotation of block slices has passed."""
    content = ContentCheck(migrated, SCHEMA, slices=2)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for _ in range(2):
            content.result(conn, SCHEMA.table("users"))
        assert last_verified_whole(conn, "users", 2) is not None
        conn.execute("DROP TABLE d1_migration.cascaded_rows")  # as the bookkeeping was then
        ensure_schema(conn, SCHEMA)
        assert last_verified_whole(conn, "users", 2) is None
        assert one(pg_url, "SELECT count(*) FROM d1_migration.cascaded_rows") == 0
