"""A target migrated under one spec, synced under the next: what is additive is applied and
filled from D1 (Postgres then equals a fresh migration), anything else is refused unwritten."""

import sqlite3
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterInstance, ExecuteInProcessResult, materialize

from d1_migration.defs.asset_checks import build_source_checks
from d1_migration.defs.assets import build_assets
from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.spec.model import Column, EnumType, Index, Kind, Schema, Table, bigint, enum, text
from d1_migration.spec.tables import SCHEMA
from d1_migration.sync.engine import SchemaDrift
from d1_migration.target.ddl import ensure_schema
from d1_migration.target.evolve import EvolutionRefused
from d1_migration.verify.cutover import cutover_check
from d1_migration_tests.helpers import assert_like_fresh_migration, dump, mutate, new_d1, sync

ROWS = [
    "INSERT INTO users (id, email, created_at) VALUES ('u1', 'u1@x', '2026-01-06')",
    "INSERT INTO habits (id, user_id, name) VALUES ('h1', 'u1', 'Read'), ('h2', 'u1', 'Run')",
    "INSERT INTO habit_logs (id, habit_id, user_id, completed_at) "
    "VALUES ('l1', 'h1', 'u1', '2026-01-07 08:00:00'), ('l2', 'h2', 'u1', '2026-01-07 09:00:00')",
]
HABITS = SCHEMA.table("habits")
SUBSET = Schema(SCHEMA.enums, tuple(SCHEMA.table(n) for n in ("users", "habits", "habit_logs")))

CATALOG = {
    "columns": """SELECT table_name, ordinal_position, column_name, data_type, udt_name,
                         is_nullable, column_default
                  FROM information_schema.columns WHERE table_schema = 'public'""",
    "constraints": """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid),
                             convalidated
                      FROM pg_constraint WHERE connamespace = 'public'::regnamespace""",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
    "enums": """SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)
                FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY 1""",
}


def catalog(url: str) -> dict[str, list[tuple]]:
    """The target's schema as Postgres describes it: a fresh and an evolved target compare."""
    with psycopg.connect(url) as conn:
        return {name: sorted(conn.execute(sql).fetchall()) for name, sql in CATALOG.items()}


def evolved(base: Schema = SCHEMA, table: Table = HABITS, **changes: object) -> Schema:
    """``base`` (the spec) with one table changed, as the team would edit tables.py."""
    new = replace(table, **changes)
    return replace(base, tables=tuple(new if t.name == table.name else t for t in base.tables))


def with_enum(name: str, values: tuple[str, ...]) -> Schema:
    enums = tuple(EnumType(name, values) if e.name == name else e for e in SCHEMA.enums)
    return replace(SCHEMA, enums=enums)


def migrated(tmp_path: Path, new_database) -> tuple[Path, str, Path]:
    """A D1 file synced once into a new target under today's spec, with its shadow."""
    source = new_d1(tmp_path / "d1.sqlite", ROWS)
    synced, shadow = new_database(), tmp_path / "shadow.sqlite"
    sync(synced, source, shadow, incremental=True, schema=SUBSET)
    return source, synced, shadow


def test_a_column_added_in_d1_and_then_to_the_spec_is_added_and_filled(tmp_path, new_database):
    source, synced, shadow = migrated(tmp_path, new_database)
    mutate(source, ["ALTER TABLE habits ADD COLUMN notes TEXT", "UPDATE habits SET notes = name"])
    with pytest.raises(SchemaDrift, match=r"added column habits\.notes"):
        sync(synced, source, shadow, incremental=True, schema=SUBSET)

    spec = evolved(columns=(*HABITS.columns, text("notes")))
    subset = replace(SUBSET, tables=tuple(spec.table(t.name) for t in SUBSET.tables))
    results = sync(synced, source, shadow, incremental=True, schema=subset, spec=spec)

    assert results["habits"].mode == "full"
    with psycopg.connect(synced) as conn:
        assert conn.execute("SELECT name, notes FROM habits ORDER BY name").fetchall() == [
            ("Read", "Read"),
            ("Run", "Run"),
        ]
    fresh = new_database()
    assert_like_fresh_migration(synced, source, fresh, schema=subset, spec=spec)
    assert catalog(synced) == catalog(fresh)
    again = sync(synced, source, shadow, incremental=True, schema=subset, spec=spec)
    assert again["habits"].mode == "incremental" and again["habits"].considered == 0


def test_a_new_column_read_from_a_column_d1_already_has_is_filled(tmp_path, new_database):
    """D1 does not change, so neither drift nor the shadow notice: the evolution's own reset
    of the table's sync state is what gives it the full pass that fills the column."""
    source, synced, shadow = migrated(tmp_path, new_database)
    spec = evolved(columns=(*HABITS.columns, text("title", source="name")))
    subset = replace(SUBSET, tables=tuple(spec.table(t.name) for t in SUBSET.tables))

    results = sync(synced, source, shadow, incremental=True, schema=subset, spec=spec)

    assert results["habits"].mode == "full"
    assert results["users"].mode == "incremental"  # only the table that gained a column
    assert_like_fresh_migration(synced, source, new_database(), schema=subset, spec=spec)


def test_a_table_below_keeps_the_full_pass_its_parent_owed_it(tmp_path, new_database):
    """habits removed a row that Postgres cascaded into habit_logs, and habit_logs has not
    synced since: resetting habits' sync state must not make habit_logs forget it (D1 keeps
    the orphaned log, which a fresh migration quarantines)."""
    source, synced, shadow = migrated(tmp_path, new_database)
    with sqlite3.connect(source) as d1:  # no FK enforcement: the log stays, orphaned
        d1.execute("DELETE FROM habits WHERE id = 'h1'")
    only_habits = replace(SUBSET, tables=(HABITS,))
    assert sync(synced, source, shadow, incremental=True, schema=only_habits)["habits"].deleted

    spec = evolved(columns=(*HABITS.columns, text("title", source="name")))
    subset = replace(SUBSET, tables=tuple(spec.table(t.name) for t in SUBSET.tables))
    results = sync(synced, source, shadow, incremental=True, schema=subset, spec=spec)

    assert results["habit_logs"].reasons == {"missing_parent": 1}
    assert_like_fresh_migration(synced, source, new_database(), schema=subset, spec=spec)


def materialize_with(spec: Schema, source: Path, url: str, state: Path) -> ExecuteInProcessResult:
    """A Dagster run of every table and check, with the assets built from ``spec``."""
    with DagsterInstance.ephemeral() as instance:
        return materialize(
            [*build_assets(spec), build_source_checks(spec)],
            resources={
                "d1": D1Source(path=str(source)),
                "postgres": PostgresTarget(url=url),
                "sync": SyncSettings(state_dir=str(state)),
            },
            instance=instance,
            selection="key:pg/*",
            raise_on_error=False,
        )


def test_a_column_added_to_the_spec_reaches_the_target_through_a_dagster_run(
    tmp_path, new_database
):
    source, synced, _ = migrated(tmp_path, new_database)
    mutate(source, ["ALTER TABLE habits ADD COLUMN notes TEXT", "UPDATE habits SET notes = name"])
    spec = evolved(columns=(*HABITS.columns, text("notes")))

    result = materialize_with(spec, source, synced, tmp_path / "sync")

    assert result.success
    checks = result.get_asset_check_evaluations()
    failed = [(c.asset_key.to_user_string(), c.check_name) for c in checks if not c.passed]
    assert failed == []  # matches_d1 among them: every table equals a fresh migration
    with psycopg.connect(synced) as conn:
        assert conn.execute("SELECT count(*) FROM habits WHERE notes = name").fetchone() == (2,)


def test_a_new_index_appears_on_an_existing_target(tmp_path, new_database):
    source, synced, shadow = migrated(tmp_path, new_database)
    spec = evolved(indexes=(*HABITS.indexes, Index("idx_habits_name", "lower(name)")))
    subset = replace(SUBSET, tables=tuple(spec.table(t.name) for t in SUBSET.tables))

    sync(synced, source, shadow, incremental=True, schema=subset, spec=spec)

    fresh = new_database()
    with psycopg.connect(fresh, autocommit=True) as conn:
        ensure_schema(conn, spec)
    assert catalog(synced) == catalog(fresh)
    with psycopg.connect(synced) as conn:
        assert conn.execute("SELECT to_regclass('idx_habits_name') IS NOT NULL").fetchone()[0]


def test_a_new_enum_label_is_accepted(tmp_path, new_database):
    source, synced, shadow = migrated(tmp_path, new_database)
    mutate(source, ["INSERT INTO habits (id, user_id, name, frequency) VALUES "
                    "('h3', 'u1', 'Stretch', 'hourly')"])  # fmt: skip
    spec = with_enum(
        "habit_frequency", ("hourly", "daily", "weekly", "biweekly", "monthly", "custom")
    )

    results = sync(synced, source, shadow, incremental=True, schema=SUBSET, spec=spec)

    assert results["habits"].quarantined == 0 and results["habits"].inserted == 1
    fresh = new_database()
    assert_like_fresh_migration(synced, source, fresh, schema=SUBSET, spec=spec)
    assert catalog(synced) == catalog(fresh)  # the labels in the spec's order


def test_a_new_check_is_validated_against_the_rows(tmp_path, new_database):
    source, synced, shadow = migrated(tmp_path, new_database)
    mutate(source, ["UPDATE habits SET name = 'x' WHERE id = 'h2'"])
    sync(synced, source, shadow, incremental=True, schema=SUBSET)
    before = dump(synced, SUBSET), catalog(synced)
    spec = evolved(checks=(("habits_name_long", "length(name) >= 2"),))

    with pytest.raises(EvolutionRefused, match=r"1 row\(s\) of habits break"):
        sync(synced, source, shadow, incremental=True, schema=SUBSET, spec=spec)
    assert (dump(synced, SUBSET), catalog(synced)) == before

    mutate(source, ["UPDATE habits SET name = 'Run' WHERE id = 'h2'"])
    with psycopg.connect(synced) as conn:  # Postgres as the last sync left it, fixed by hand
        conn.execute("UPDATE habits SET name = 'Run' WHERE name = 'x'")
    sync(synced, source, shadow, incremental=True, schema=SUBSET, spec=spec)
    fresh = new_database()
    assert_like_fresh_migration(synced, source, fresh, schema=SUBSET, spec=spec)
    assert catalog(synced) == catalog(fresh)  # validated, as a fresh one is


RETYPED = evolved(
    columns=tuple(
        bigint("target_count", null=False, default="1", check="target_count >= 1")
        if c.name == "target_count"
        else c
        for c in HABITS.columns
    ),
    indexes=(*HABITS.indexes, Index("idx_habits_name", "name")),  # safe, but not alone
)


def test_a_type_change_is_refused_before_any_write_with_the_ddl_to_run(tmp_path, new_database):
    source, synced, shadow = migrated(tmp_path, new_database)
    before = dump(synced, SUBSET), catalog(synced)

    with pytest.raises(EvolutionRefused) as refused:
        sync(synced, source, shadow, incremental=True, schema=SUBSET, spec=RETYPED)

    assert (dump(synced, SUBSET), catalog(synced)) == before  # not even the new index
    assert len(refused.value.statements) == 1
    assert refused.value.statements[0] in str(refused.value)
    with psycopg.connect(synced, autocommit=True) as conn:  # the person reviews and runs it
        conn.execute(refused.value.statements[0])
    sync(synced, source, shadow, incremental=True, schema=SUBSET, spec=RETYPED)
    fresh = new_database()
    assert_like_fresh_migration(synced, source, fresh, schema=SUBSET, spec=RETYPED)
    assert catalog(synced) == catalog(fresh)


def test_a_refusal_fails_the_dagster_run_and_the_gate_with_the_ddl(tmp_path, new_database):
    source, synced, shadow = migrated(tmp_path, new_database)
    before = dump(synced, SUBSET), catalog(synced)
    with pytest.raises(EvolutionRefused) as refused:
        sync(synced, source, shadow, incremental=True, schema=SUBSET, spec=RETYPED)

    run = materialize_with(RETYPED, source, synced, tmp_path / "sync")
    verdict = cutover_check(
        D1Source(path=str(source)),
        PostgresTarget(url=synced),
        SyncSettings(state_dir=str(tmp_path / "sync")),
        RETYPED,
    )

    assert not run.success and run.get_asset_materialization_events() == []
    assert not verdict.ready
    statement = refused.value.statements[0]
    (failure,) = run.get_step_failure_events()  # a Failure of one message, as TargetBusy is
    assert failure.step_failure_data.user_failure_data.description == str(refused.value)
    assert any(statement in reason for reason in verdict.reasons)
    assert (dump(synced, SUBSET), catalog(synced)) == before


@pytest.mark.parametrize(
    ("spec", "d1_change"),
    [
        pytest.param(
            evolved(columns=tuple(c for c in HABITS.columns if c.name != "color")),
            "ALTER TABLE habits DROP COLUMN color",
            id="dropped column",
        ),
        pytest.param(
            evolved(
                columns=tuple(
                    replace(c, name="colour", source=None) if c.name == "color" else c
                    for c in HABITS.columns
                )
            ),
            "ALTER TABLE habits RENAME COLUMN color TO colour",
            id="renamed column",
        ),
        pytest.param(
            with_enum("habit_frequency", ("daily", "weekly", "monthly")), None, id="narrowed enum"
        ),
        pytest.param(
            evolved(columns=(*HABITS.columns, Column("notes", Kind.TEXT, nullable=False))),
            "ALTER TABLE habits ADD COLUMN notes TEXT NOT NULL DEFAULT ''",
            id="NOT NULL column without default",
        ),
    ],
)
def test_what_would_change_or_lose_data_is_refused_before_any_write(
    tmp_path, new_database, spec, d1_change
):
    source, synced, shadow = migrated(tmp_path, new_database)
    if d1_change:
        mutate(source, [d1_change])
    before = dump(synced, SUBSET), catalog(synced)
    subset = replace(SUBSET, tables=tuple(spec.table(t.name) for t in SUBSET.tables))

    with pytest.raises(EvolutionRefused) as refused:
        sync(synced, source, shadow, incremental=True, schema=subset, spec=spec)

    assert (dump(synced, SUBSET), catalog(synced)) == before
    assert refused.value.statements
    assert all(statement in str(refused.value) for statement in refused.value.statements)


def test_evolution_takes_no_lock_on_a_complete_target(tmp_path, new_database):
    """As test_ddl's bookkeeping test, for the spec's own tables: another session updating
    habits must not make a sync of an up-to-date (evolved) target wait."""
    _, synced, _ = migrated(tmp_path, new_database)
    spec = evolved(
        columns=(*HABITS.columns, text("title", source="name")),
        indexes=(*HABITS.indexes, Index("idx_habits_name", "lower(name)")),
        checks=(("habits_name_long", "length(name) >= 2"),),
    )
    with psycopg.connect(synced, autocommit=True) as conn:
        ensure_schema(conn, spec)
        with psycopg.connect(synced) as other:
            other.execute("UPDATE habits SET name = name")
            other.execute("UPDATE d1_migration.sync_state SET mode = mode")
            conn.execute("SET lock_timeout = '2s'")
            ensure_schema(conn, spec)  # LockNotAvailable if it queues behind ``other``
            other.rollback()


def test_a_new_label_can_be_the_default_of_a_new_column(tmp_path, new_database):
    """Postgres refuses a label in the transaction that added it ("unsafe use of new value"):
    labels are committed first, then the column that defaults to one is added."""
    source, synced, shadow = migrated(tmp_path, new_database)
    mutate(source, ["ALTER TABLE habits ADD COLUMN cadence TEXT DEFAULT 'hourly'"])
    spec = evolved(
        with_enum("habit_frequency", (*SCHEMA.enum("habit_frequency").values, "hourly")),
        columns=(*HABITS.columns, enum("cadence", "habit_frequency", default="'hourly'")),
    )
    subset = replace(SUBSET, tables=tuple(spec.table(t.name) for t in SUBSET.tables))

    sync(synced, source, shadow, incremental=True, schema=subset, spec=spec)

    fresh = new_database()
    assert_like_fresh_migration(synced, source, fresh, schema=subset, spec=spec)
    assert catalog(synced) == catalog(fresh)
