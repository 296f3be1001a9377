"""The DDL built from the spec against the map's own SQL, compared through the catalogs."""

import re

import psycopg

from d1_migration.spec.tables import SCHEMA
from d1_migration.target.ddl import ensure_schema

MAP_TABLES = (
    "users", "accounts", "sessions", "user_settings", "user_interests", "user_wallet",
    "points_ledger", "activity_events", "focus_sessions", "quests", "habits", "calendar_events",
    "exercises", "reference_tracks", "market_items",
)  # fmt: skip

CATALOG_QUERIES = {
    "columns": """SELECT table_name, ordinal_position, column_name, udt_name, is_nullable,
                         column_default
                  FROM information_schema.columns
                  WHERE table_schema = 'public' AND table_name = ANY(%s) ORDER BY 1, 2""",
    "constraints": """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
                      FROM pg_constraint WHERE conrelid::regclass::text = ANY(%s) ORDER BY 1, 2""",
    "indexes": """SELECT tablename, indexname, indexdef FROM pg_indexes
                  WHERE schemaname = 'public' AND tablename = ANY(%s) ORDER BY 1, 2""",
    "enums": """SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)
                FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY 1 ORDER BY 1""",
}


def _catalog(conn: psycopg.Connection) -> dict[str, list[tuple]]:
    return {
        name: conn.execute(sql, [list(MAP_TABLES)] if "%s" in sql else None).fetchall()
        for name, sql in CATALOG_QUERIES.items()
    }


def _map_postgres_sql(migration_map: str) -> str:
    """Every ```sql block that follows a '**Postgres Schema:**' heading, in map order."""
    blocks = re.findall(r"\*\*Postgres Schema:\*\*\s*```sql\n(.*?)```", migration_map, re.S)
    assert len(blocks) == len(MAP_TABLES)
    return "\n".join(blocks)


def test_map_tables_match_the_map_exactly(new_database, migration_map):
    with psycopg.connect(new_database(), autocommit=True) as conn:
        # calendar_events references workouts, which the map does not show in full
        conn.execute("CREATE TABLE workouts (id UUID PRIMARY KEY)")
        conn.execute(_map_postgres_sql(migration_map))
        expected = _catalog(conn)
    with psycopg.connect(new_database(), autocommit=True) as conn:
        ensure_schema(conn, SCHEMA)
        actual = _catalog(conn)
    for name in CATALOG_QUERIES:
        assert actual[name] == expected[name], name


def test_ensure_schema_is_idempotent_and_creates_all_tables(pg):
    ensure_schema(pg, SCHEMA)
    ensure_schema(pg, SCHEMA)
    names = {
        r[0]
        for r in pg.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    }
    assert names == {t.name for t in SCHEMA.tables}
    assert pg.execute("SELECT to_regclass('d1_migration.rejected_rows') IS NOT NULL").fetchone()[0]


def test_ensure_schema_takes_no_lock_on_a_complete_target(pg, pg_url):
    """Another run's quarantine update is in flight (its row locks held): ensuring the schema
    of a target that has it all must not wait for it, let alone deadlock with it."""
    ensure_schema(pg, SCHEMA)
    with psycopg.connect(pg_url) as other:
        other.execute("UPDATE d1_migration.rejected_rows SET resolved_at = now()")
        other.execute("UPDATE d1_migration.sync_state SET mode = mode")
        pg.execute("SET lock_timeout = '2s'")
        ensure_schema(pg, SCHEMA)  # LockNotAvailable if it queues behind ``other``
        other.rollback()


def test_ensure_schema_upgrades_a_target_that_lacks_a_bookkeeping_column(pg):
    ensure_schema(pg, SCHEMA)
    pg.execute("ALTER TABLE d1_migration.sync_state DROP COLUMN generation")
    ensure_schema(pg, SCHEMA)
    assert pg.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'd1_migration' "
        "AND table_name = 'sync_state' AND column_name = 'generation'"
    ).fetchone() == (1,)
