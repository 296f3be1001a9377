"""Postgres DDL derived from the table spec: enum types, tables, constraints, indexes.

Everything is idempotent (IF NOT EXISTS, duplicate_object guards) so that every run can ensure
the schema before data lands, without a separate migration tool. It runs only when the catalog
lacks something: even a no-op ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` takes an ACCESS
EXCLUSIVE lock (and ``CREATE INDEX IF NOT EXISTS`` a SHARE lock) before it finds nothing to do,
which queued behind another session's quarantine update and deadlocked with it. What the spec
adds to or changes in a target that exists is evolve.py's.
"""

from __future__ import annotations

from graphlib import TopologicalSorter

import psycopg

from d1_migration.spec.model import Column, Schema, Table, q

BOOKKEEPING_SCHEMA = "d1_migration"
SYNC_STATE = f"{BOOKKEEPING_SCHEMA}.sync_state"
# Serialises schema changes (bookkeeping DDL, creation, evolution) between syncs.
SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtext('d1_migration.ensure_schema'))"

BOOKKEEPING_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {BOOKKEEPING_SCHEMA};
CREATE TABLE IF NOT EXISTS {BOOKKEEPING_SCHEMA}.id_map (
    source_table TEXT NOT NULL,
    source_id TEXT NOT NULL,
    target_id UUID NOT NULL,
    PRIMARY KEY (source_table, source_id)
);
CREATE TABLE IF NOT EXISTS {BOOKKEEPING_SCHEMA}.rejected_rows (
    source_table TEXT NOT NULL,
    source_pk TEXT NOT NULL,
    target_pk TEXT,
    column_name TEXT,
    reason_code TEXT NOT NULL,
    reason TEXT NOT NULL,
    raw_row JSONB NOT NULL,
    run_id TEXT,
    first_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at TIMESTAMPTZ,
    PRIMARY KEY (source_table, source_pk)
);
CREATE INDEX IF NOT EXISTS rejected_rows_open
    ON {BOOKKEEPING_SCHEMA}.rejected_rows (source_table) WHERE resolved_at IS NULL;
CREATE INDEX IF NOT EXISTS id_map_target ON {BOOKKEEPING_SCHEMA}.id_map (source_table, target_id);
CREATE TABLE IF NOT EXISTS {BOOKKEEPING_SCHEMA}.sync_state (
    table_name TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    synced_at TIMESTAMPTZ NOT NULL,
    removed_at TIMESTAMPTZ,
    changed_at TIMESTAMPTZ,
    generation BIGINT NOT NULL DEFAULT 0
);
ALTER TABLE {BOOKKEEPING_SCHEMA}.sync_state ADD COLUMN IF NOT EXISTS changed_at TIMESTAMPTZ;
CREATE TABLE IF NOT EXISTS {BOOKKEEPING_SCHEMA}.verified_slices (
    table_name TEXT NOT NULL,
    slices INTEGER NOT NULL,
    slice INTEGER NOT NULL,
    verified_at TIMESTAMPTZ NOT NULL,
    passed BOOLEAN NOT NULL,
    PRIMARY KEY (table_name, slices, slice)
);
-- A target synced before ref_map existed has no entries for the rows it holds, and UUIDv5s of
-- skill keys in universal_quests.skill_id: every table's next sync is then a full one.
DO $$ BEGIN
    IF to_regclass('{BOOKKEEPING_SCHEMA}.ref_map') IS NULL THEN
        DELETE FROM {BOOKKEEPING_SCHEMA}.sync_state;
        IF to_regclass('universal_quests') IS NOT NULL THEN
            ALTER TABLE universal_quests ALTER COLUMN skill_id TYPE TEXT;
        END IF;
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS {BOOKKEEPING_SCHEMA}.ref_map (
    source_table TEXT NOT NULL,
    target_pk TEXT NOT NULL,
    column_name TEXT NOT NULL,
    source_text TEXT NOT NULL,
    target_id UUID NOT NULL,
    PRIMARY KEY (source_table, target_pk, column_name)
);
ALTER TABLE {BOOKKEEPING_SCHEMA}.sync_state
    ADD COLUMN IF NOT EXISTS generation BIGINT NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS {BOOKKEEPING_SCHEMA}.sync_token (
    token UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO {BOOKKEEPING_SCHEMA}.sync_token (token)
    SELECT gen_random_uuid() WHERE NOT EXISTS (SELECT 1 FROM {BOOKKEEPING_SCHEMA}.sync_token);
-- A target from before cascaded_rows verified slices of every N-th rowid, not of blocks of
-- rowids (verify/content.py): its records do not say which rows were verified.
DO $$ BEGIN
    IF to_regclass('{BOOKKEEPING_SCHEMA}.cascaded_rows') IS NULL THEN
        DELETE FROM {BOOKKEEPING_SCHEMA}.verified_slices;
    END IF;
END $$;
-- Rows of a table that Postgres's ON DELETE CASCADE / SET NULL changed while an ancestor
-- synced (target/load.py, record_cascade): the table's next sync judges them again.
CREATE TABLE IF NOT EXISTS {BOOKKEEPING_SCHEMA}.cascaded_rows (
    table_name TEXT NOT NULL,
    source_pk TEXT NOT NULL,
    PRIMARY KEY (table_name, source_pk)
);
CREATE TABLE IF NOT EXISTS {BOOKKEEPING_SCHEMA}.expected_catalog (
    fingerprint TEXT PRIMARY KEY,
    catalog JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""


# What BOOKKEEPING_DDL makes, as the catalog shows it: relations, then (table, column) pairs.
BOOKKEEPING_RELATIONS = tuple(
    f"{BOOKKEEPING_SCHEMA}.{name}"
    for name in (
        "id_map",
        "rejected_rows",
        "rejected_rows_open",
        "id_map_target",
        "sync_state",
        "sync_token",
        "verified_slices",
        "ref_map",
        "expected_catalog",
        "cascaded_rows",
    )
)
BOOKKEEPING_COLUMNS = (("sync_state", "changed_at"), ("sync_state", "generation"))


def load_order(schema: Schema) -> list[Table]:
    """Parents before children, so FK REFERENCES and FK checks always find their parent."""
    graph = {t.name: set(t.parents) for t in schema.tables}
    order = list(TopologicalSorter(graph).static_order())
    return [schema.table(name) for name in order]


def column_ddl(table: Table, column: Column) -> str:
    parts = [q(column.name), column.pg_type]
    if table.primary_key == (column.name,):
        parts.append("PRIMARY KEY")
    elif not column.nullable:
        parts.append("NOT NULL")
    if column.default is not None:
        parts.append(f"DEFAULT {column.default}")
    if column.unique:
        parts.append("UNIQUE")
    if column.check:
        parts.append(f"CHECK ({column.check})")
    if column.parent:
        parent_table, parent_column = column.parent
        parts.append(f"REFERENCES {q(parent_table)}({q(parent_column)})")
        if column.on_delete:
            parts.append(f"ON DELETE {column.on_delete}")
    return " ".join(parts)


def create_table_sql(table: Table) -> str:
    lines = [column_ddl(table, c) for c in table.columns]
    if len(table.primary_key) > 1:
        lines.append(f"PRIMARY KEY ({', '.join(map(q, table.primary_key))})")
    lines += [f"UNIQUE ({', '.join(map(q, cols))})" for cols in table.uniques]
    lines += [f"CONSTRAINT {q(name)} CHECK ({expr})" for name, expr in table.checks]
    body = ",\n    ".join(lines)
    return f"CREATE TABLE IF NOT EXISTS {q(table.name)} (\n    {body}\n)"


def create_index_sql(table: Table) -> list[str]:
    statements = []
    for index in table.indexes:
        using = f" USING {index.using}" if index.using else ""
        where = f" WHERE {index.where}" if index.where else ""
        statements.append(
            f"CREATE INDEX IF NOT EXISTS {q(index.name)} ON {q(table.name)}{using}"
            f"({index.expr}){where}"
        )
    return statements


def create_enum_sql(name: str, values: tuple[str, ...]) -> str:
    literals = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return (
        f"DO $$ BEGIN CREATE TYPE {q(name)} AS ENUM ({literals}); "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )


def schema_statements(schema: Schema) -> list[str]:
    """The target's enums, tables and indexes, parents first."""
    statements = [create_enum_sql(e.name, e.values) for e in schema.enums]
    for table in load_order(schema):
        statements.append(create_table_sql(table))
        statements += create_index_sql(table)
    return statements


def _bookkeeping_present(conn: psycopg.Connection) -> bool:
    """Whether every object of BOOKKEEPING_DDL exists and the target has its sync token."""
    complete = (
        conn.execute(
            """SELECT bool_and(to_regclass(r) IS NOT NULL) FROM unnest(%s::text[]) AS r""",
            [list(BOOKKEEPING_RELATIONS)],
        ).fetchone()[0]
        and conn.execute(
            """SELECT count(*) = %s FROM information_schema.columns WHERE table_schema = %s
           AND (table_name, column_name) IN (SELECT * FROM unnest(%s::text[], %s::text[]))""",
            [
                len(BOOKKEEPING_COLUMNS),
                BOOKKEEPING_SCHEMA,
                [t for t, _ in BOOKKEEPING_COLUMNS],
                [c for _, c in BOOKKEEPING_COLUMNS],
            ],
        ).fetchone()[0]
    )
    return (
        bool(complete)
        and conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM {BOOKKEEPING_SCHEMA}.sync_token)"
        ).fetchone()[0]
    )


def ensure_schema(conn: psycopg.Connection, schema: Schema) -> None:
    """Create the bookkeeping objects if any is missing, then bring the spec's objects along
    (evolve.py), taking no lock on a target that has it all (see the module's docstring).
    Serialised with an advisory lock, so parallel runs are safe."""
    if not _bookkeeping_present(conn):
        with conn.transaction():
            conn.execute(SCHEMA_LOCK)
            if not _bookkeeping_present(conn):
                conn.execute(BOOKKEEPING_DDL)  # also upgrades an older target's tables
    from d1_migration.target.evolve import evolve  # evolve.py builds on this module's DDL

    evolve(conn, schema)
