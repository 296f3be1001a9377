"""Schema evolution: brings a target's spec objects (enum types, tables, columns, constraints,
indexes) to what the spec declares, before every sync loads.

D1 gains a column, the drift check stops the run, the team declares it in ``tables.py``: the
next sync must bring Postgres along, or the merge fails on every run. ``evolve`` compares the
target's catalog with the spec and applies only what is additive, where a fresh migration and
the evolved target then hold the same: a new enum type or label, table, index, nullable or
defaulted column (its table then gets a full pass, so the merge fills it from D1), or CHECK
(proved against the rows with VALIDATE). Anything else (a retyped, dropped or renamed column,
a narrowed enum, a changed default or constraint, a NOT NULL column without a default on a
table with rows) would change or lose data Postgres holds: it is refused before anything is
written, with the DDL a person should review and run. A column added in the spec between two
others is appended in Postgres; every reader names its columns, so position does not matter.

The spec's expressions (defaults, CHECKs, index definitions) are compared as Postgres prints
them: the spec is created once in a scratch schema that is rolled back, and what its catalog
shows is kept in ``d1_migration.expected_catalog`` per spec and server version. A target that
has it all is then compared with a few catalog reads, and nothing is locked or written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from d1_migration.spec.model import EnumType, Schema, Table
from d1_migration.target.ddl import (
    BOOKKEEPING_SCHEMA,
    SCHEMA_LOCK,
    SYNC_STATE,
    column_ddl,
    create_enum_sql,
    create_index_sql,
    create_table_sql,
    load_order,
    q,
    schema_statements,
)
from d1_migration.target.load import ancestors

EXPECTED_CATALOG = f"{BOOKKEEPING_SCHEMA}.expected_catalog"
SCRATCH_SCHEMA = "d1_migration_expected"  # exists only inside a transaction that rolls back

# The spec's tables as the catalog shows them, through the session's search_path: a table and
# the types and tables it refers to are printed unqualified both in the target and in the
# scratch schema. Index definitions are compared from USING on (before it: their table).
CATALOG_SQL = {
    "columns": """
        SELECT c.relname, a.attname,
               json_build_array(format_type(a.atttypid, a.atttypmod), a.attnotnull,
                                pg_get_expr(d.adbin, d.adrelid))
        FROM unnest(%(tables)s::text[]) AS n
        JOIN pg_class c ON c.oid = to_regclass(quote_ident(n))
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum""",
    "constraints": """
        SELECT c.relname, k.conname,
               json_build_array(pg_get_constraintdef(k.oid), ARRAY(
                   SELECT attname FROM pg_attribute
                   WHERE attrelid = c.oid AND attnum = ANY(k.conkey) ORDER BY attname))
        FROM unnest(%(tables)s::text[]) AS n
        JOIN pg_class c ON c.oid = to_regclass(quote_ident(n))
        JOIN pg_constraint k ON k.conrelid = c.oid AND k.contype <> 'n'""",
    "indexes": """
        SELECT c.relname, i.relname,
               to_json(substring(pg_get_indexdef(i.oid) FROM ' USING .*'))
        FROM unnest(%(tables)s::text[]) AS n
        JOIN pg_class c ON c.oid = to_regclass(quote_ident(n))
        JOIN pg_index x ON x.indrelid = c.oid
        JOIN pg_class i ON i.oid = x.indexrelid
        WHERE NOT EXISTS (SELECT 1 FROM pg_constraint k
                          WHERE k.conindid = x.indexrelid AND k.contype IN ('p', 'u'))""",
}

Catalog = dict[str, dict[str, dict[str, list]]]  # part -> table -> object name -> definition


@dataclass(frozen=True)
class Change:
    """One difference between the target and the spec, and the DDL that resolves it."""

    ddl: str
    why: str
    safe: bool
    table: str | None = None
    gains_column: bool = False  # the table's rows need a value from D1: a full pass
    label: bool = False  # ALTER TYPE ... ADD VALUE: usable only once committed
    violations: str | None = None  # for a new CHECK: counts the rows that break it


class EvolutionRefused(Exception):
    """The target differs from the spec in a way a sync does not apply; nothing was written.
    ``statements`` is the DDL to review and run (in order) before the next sync."""

    def __init__(self, changes: list[Change], note: str = "") -> None:
        self.changes, self.note = changes, note
        self.statements = [c.ddl for c in changes]
        super().__init__(
            "The target's schema differs from the table spec in ways a sync does not apply; "
            f"nothing was changed.{' ' + note if note else ''} Review and run:\n"
            + "\n".join(f"-- {c.why}\n{c.ddl};" for c in changes)
        )

    def __reduce__(self):  # pickled as what it was made of (sync/apart.py)
        return EvolutionRefused, (self.changes, self.note)


def _catalog(conn: psycopg.Connection, tables: list[str]) -> Catalog:
    catalog: Catalog = {}
    for part, sql in CATALOG_SQL.items():
        catalog[part] = {}
        for table, name, definition in conn.execute(sql, {"tables": tables}):
            catalog[part].setdefault(table, {})[name] = definition
    return catalog


def _expected(conn: psycopg.Connection, schema: Schema) -> Catalog:
    """The spec's catalog as Postgres prints it: built in the scratch schema the first time a
    spec (on this server version) is compared, read from ``expected_catalog`` afterwards."""
    statements = schema_statements(schema)
    version = conn.execute("SHOW server_version_num").fetchone()[0]
    fingerprint = hashlib.sha256("\n;\n".join([version, *statements]).encode()).hexdigest()
    row = conn.execute(
        f"SELECT catalog FROM {EXPECTED_CATALOG} WHERE fingerprint = %s", [fingerprint]
    ).fetchone()
    if row is not None:
        return row[0]
    with conn.transaction(force_rollback=True):
        conn.execute(f"CREATE SCHEMA {SCRATCH_SCHEMA}")
        conn.execute(f"SET LOCAL search_path = {SCRATCH_SCHEMA}")
        for statement in statements:
            conn.execute(statement)
        catalog = _catalog(conn, [t.name for t in schema.tables])
    with conn.transaction():
        conn.execute(f"DELETE FROM {EXPECTED_CATALOG}")  # one spec is current
        conn.execute(
            f"INSERT INTO {EXPECTED_CATALOG} (fingerprint, catalog) VALUES (%s, %s) "
            "ON CONFLICT DO NOTHING",
            [fingerprint, Jsonb(catalog)],
        )
    return catalog


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _enum_changes(schema: Schema, labels: dict[str, list[str]]) -> list[Change]:
    changes = []
    for enum in schema.enums:
        have = labels.get(enum.name)
        if have is None:
            changes.append(
                Change(
                    create_enum_sql(enum.name, enum.values), f"new enum type {enum.name}", safe=True
                )
            )
        elif [v for v in enum.values if v in have] != have:  # a label gone, or reordered
            changes.append(_rebuilt_enum(schema, enum, have))
        else:
            for i, value in enumerate(enum.values):
                if value not in have:
                    where = (
                        f"AFTER {_literal(enum.values[i - 1])}"
                        if i
                        else f"BEFORE {_literal(have[0])}"
                    )
                    ddl = f"ALTER TYPE {q(enum.name)} ADD VALUE {_literal(value)} {where}"
                    changes.append(Change(ddl, f"new label {enum.name}.{value}", True, label=True))
    return changes


def _rebuilt_enum(schema: Schema, enum: EnumType, have: list[str]) -> Change:
    """Postgres cannot drop or move an enum label: the type is rebuilt, and each column that
    has it is cast through text (a row holding a dropped label fails the cast: fix it first)."""
    new = q(enum.name + "_new")
    statements = [create_enum_sql(enum.name + "_new", enum.values)]
    for table in schema.tables:
        for column in table.columns:
            if column.enum == enum.name:
                c = q(column.name)
                statements.append(
                    f"ALTER TABLE {q(table.name)} ALTER COLUMN {c} DROP DEFAULT, "
                    f"ALTER COLUMN {c} TYPE {new} USING {c}::text::{new}"
                )
    statements += [f"DROP TYPE {q(enum.name)}", f"ALTER TYPE {new} RENAME TO {q(enum.name)}"]
    for table in schema.tables:
        for column in table.columns:
            if column.enum == enum.name and column.default is not None:
                statements.append(
                    f"ALTER TABLE {q(table.name)} ALTER COLUMN {q(column.name)} "
                    f"SET DEFAULT {column.default}"
                )
    return Change(
        ";\n".join(statements),
        f"enum {enum.name} is ({', '.join(have)}) in Postgres, the spec has "
        f"({', '.join(enum.values)}): a label is gone or moved",
        safe=False,
    )


def _column_changes(conn: psycopg.Connection, table: Table, want: dict, have: dict) -> list[Change]:
    name, changes = q(table.name), []
    added = [c for c in table.columns if c.name not in have]
    for column in added:
        ddl = f"ALTER TABLE {name} ADD COLUMN {column_ddl(table, column)}"
        needs_value = not column.nullable or table.primary_key == (column.name,)
        if not needs_value or column.default is not None or _empty(conn, table):
            changes.append(
                Change(
                    ddl,
                    f"new column {table.name}.{column.name}",
                    True,
                    table.name,
                    gains_column=True,
                )
            )
        else:
            changes.append(
                Change(
                    ddl,
                    f"new column {table.name}.{column.name} is NOT NULL "
                    f"without a default, and {table.name} has rows: give it a "
                    "default in tables.py, or add and fill it by hand",
                    False,
                )
            )
    for column in sorted(set(have) - set(want)):
        renamed = [c.name for c in added if want[c.name][0] == have[column][0]]
        hint = f" (if it was renamed: ALTER TABLE {name} RENAME COLUMN {q(column)} TO " + (
            f"{q(renamed[0])})" if renamed else "<new name>)"
        )
        changes.append(
            Change(
                f"ALTER TABLE {name} DROP COLUMN {q(column)}",
                f"{table.name}.{column} is not in the spec{hint}",
                False,
            )
        )
    for column in table.columns:
        if column.name not in have or have[column.name] == want[column.name]:
            continue
        (pg_type, not_null, default), (was_type, was_not_null, was_default) = (
            want[column.name],
            have[column.name],
        )
        alter = f"ALTER TABLE {name} ALTER COLUMN {q(column.name)}"
        what = f"{table.name}.{column.name}"
        if pg_type != was_type:
            changes.append(
                Change(
                    f"{alter} TYPE {pg_type} USING {q(column.name)}::{pg_type}",
                    f"{what} is {was_type} in Postgres, {pg_type} in the spec",
                    False,
                )
            )
        if not_null != was_not_null:
            changes.append(
                Change(
                    f"{alter} {'SET' if not_null else 'DROP'} NOT NULL",
                    f"{what}'s NOT NULL differs from the spec",
                    False,
                )
            )
        if default != was_default:
            ddl = f"{alter} SET DEFAULT {column.default}" if default else f"{alter} DROP DEFAULT"
            changes.append(
                Change(
                    ddl,
                    f"{what}'s default is {was_default} in Postgres, {default} in the spec",
                    False,
                )
            )
    return changes


def _constraint_changes(table: Table, want: dict, have: dict, added: set[str]) -> list[Change]:
    name, changes = q(table.name), []
    named_checks = {n for n, _ in table.checks}
    for constraint, (definition, columns) in want.items():
        if constraint in have:
            if have[constraint][0] != definition:
                changes.append(
                    Change(
                        f"ALTER TABLE {name} DROP CONSTRAINT {q(constraint)}, "
                        f"ADD CONSTRAINT {q(constraint)} {definition}",
                        f"{table.name}'s constraint {constraint} is "
                        f"{have[constraint][0]} in Postgres",
                        False,
                    )
                )
        elif constraint not in named_checks and set(columns) <= added:
            continue  # declared with its new column, and added by its ADD COLUMN
        elif definition.startswith("CHECK "):
            changes.append(
                Change(
                    f"ALTER TABLE {name} ADD CONSTRAINT {q(constraint)} {definition} NOT VALID;\n"
                    f"ALTER TABLE {name} VALIDATE CONSTRAINT {q(constraint)}",
                    f"new CHECK {constraint} on {table.name}",
                    True,
                    table.name,
                    violations=f"SELECT count(*) FROM {name} WHERE NOT {definition[6:]}",
                )
            )
        else:
            changes.append(
                Change(
                    f"ALTER TABLE {name} ADD CONSTRAINT {q(constraint)} {definition}",
                    f"new constraint {constraint} on "
                    f"{table.name}: rows Postgres holds may break it",
                    False,
                )
            )
    for constraint in sorted(set(have) - set(want)):
        changes.append(
            Change(
                f"ALTER TABLE {name} DROP CONSTRAINT {q(constraint)}",
                f"{table.name}'s constraint {constraint} is not in the spec",
                False,
            )
        )
    return changes


def _index_changes(table: Table, want: dict, have: dict) -> list[Change]:
    create = dict(zip((i.name for i in table.indexes), create_index_sql(table), strict=True))
    changes = []
    for index, definition in want.items():
        if index not in have:
            changes.append(Change(create[index], f"new index {index}", True, table.name))
        elif have[index] != definition:
            changes.append(
                Change(
                    f"DROP INDEX {q(index)};\n{create[index]}",
                    f"index {index} is {have[index]} in Postgres",
                    False,
                )
            )
    for index in sorted(set(have) - set(want)):
        changes.append(
            Change(
                f"DROP INDEX {q(index)}", f"index {index} on {table.name} is not in the spec", False
            )
        )
    return changes


def _empty(conn: psycopg.Connection, table: Table) -> bool:
    return conn.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {q(table.name)})").fetchone()[0]


def plan(conn: psycopg.Connection, schema: Schema) -> list[Change]:
    """Every difference between the target and the spec, in the order to resolve them:
    enum types and labels, new tables parents first, then each existing table's changes."""
    labels = dict(
        conn.execute(
            """SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)
               FROM unnest(%s::text[]) AS n JOIN pg_type t ON t.oid = to_regtype(quote_ident(n))
               JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname""",
            [[e.name for e in schema.enums]],
        ).fetchall()
    )
    changes = _enum_changes(schema, labels)
    actual = _catalog(conn, [t.name for t in schema.tables])
    existing = [t for t in load_order(schema) if t.name in actual["columns"]]
    for table in load_order(schema):
        if table.name not in actual["columns"]:
            changes.append(Change(create_table_sql(table), f"new table {table.name}", True))
            changes += [Change(s, f"index of {table.name}", True) for s in create_index_sql(table)]
    expected = _expected(conn, schema) if existing else {}
    for table in existing:
        part = {p: (expected[p].get(table.name, {}), actual[p].get(table.name, {})) for p in actual}
        added = {c for c in part["columns"][0] if c not in part["columns"][1]}
        changes += _column_changes(conn, table, *part["columns"])
        changes += _constraint_changes(table, *part["constraints"], added)
        changes += _index_changes(table, *part["indexes"])
    return changes


def evolve(conn: psycopg.Connection, schema: Schema) -> None:
    """Bring the target to the spec, or raise EvolutionRefused having written nothing. A
    target that has it all takes no transaction and no lock: DDL that finds nothing to do
    still queues for its exclusive lock behind whatever holds the table."""
    changes = plan(conn, schema)
    if not changes:
        return
    _refuse_unsafe(changes)
    if any(c.label for c in changes):  # a new label cannot be used before it commits
        with conn.transaction():
            conn.execute(SCHEMA_LOCK)
            for change in _refuse_unsafe(plan(conn, schema)):
                if change.label:
                    conn.execute(change.ddl)
    with conn.transaction():
        conn.execute(SCHEMA_LOCK)  # a sync that waited here finds the work done by the one before
        changes = _refuse_unsafe(plan(conn, schema))
        for change in changes:
            try:
                with conn.transaction():
                    conn.execute(change.ddl)
            except psycopg.errors.CheckViolation:
                if change.violations is None:
                    raise
                count = conn.execute(change.violations).fetchone()[0]
                raise EvolutionRefused(
                    [change],
                    f"{count} row(s) of {change.table} break the new CHECK: a fresh migration "
                    f"would quarantine them; fix them in D1 and in Postgres.",
                ) from None
        _reset(conn, schema, {c.table for c in changes if c.gains_column and c.table})


def _refuse_unsafe(changes: list[Change]) -> list[Change]:
    refused = [c for c in changes if not c.safe]
    if refused:
        raise EvolutionRefused(refused)
    return changes


def _reset(conn: psycopg.Connection, schema: Schema, tables: set[str]) -> None:
    """Give ``tables`` a full pass on their next sync (in this transaction, so a sync killed
    after the DDL commits still fills the new columns) by removing their sync state. A table
    below one of them that has not synced since that table last removed rows loses that
    signal with the row, so it is reset too, and so on down."""
    while tables:
        removed = [
            r
            for (r,) in conn.execute(
                f"DELETE FROM {SYNC_STATE} WHERE table_name = ANY(%s) RETURNING removed_at",
                [sorted(tables)],
            )
            if r is not None
        ]
        below = sorted(
            t.name for t in schema.tables if ancestors(schema, t) & tables and t.name not in tables
        )
        tables = (
            {
                n
                for (n,) in conn.execute(
                    f"SELECT table_name FROM {SYNC_STATE} WHERE table_name = ANY(%s) "
                    "AND synced_at < %s",
                    [below, max(removed)],
                )
            }
            if removed
            else set()
        )
