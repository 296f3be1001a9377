"""What the asset catalog shows about a table, derived from the spec (``spec/tables.py``) alone:
the column schema of each ``pg/`` table (Postgres types, nullability, PK/UNIQUE/FK/CHECK, the
D1 column each one comes from) and of each ``d1/`` table (D1's declared types), and the column
lineage from the one to the other. Nothing here is listed per table.

The keys are Dagster's table metadata (``TableMetadataSet``): ``dagster/column_schema``,
``dagster/column_lineage``, ``dagster/row_count``, ``dagster/table_name``.
"""

from datetime import timedelta

from dagster import (
    TableColumn,
    TableColumnConstraints,
    TableColumnDep,
    TableColumnLineage,
    TableConstraints,
    TableSchema,
)

from d1_migration.defs.keys import source_key
from d1_migration.spec.model import Column, Schema, Table

COLUMN_SCHEMA = "dagster/column_schema"
COLUMN_LINEAGE = "dagster/column_lineage"
ROW_COUNT = "dagster/row_count"
TABLE_NAME = "dagster/table_name"


def _duration(delta: timedelta) -> str:
    sign, delta = ("-", -delta) if delta < timedelta(0) else ("+", delta)
    if delta.seconds == 0 and delta.microseconds == 0:
        return f"{sign}{delta.days} days"
    return f"{sign}{delta}"


def column_origin(column: Column, schema: Schema) -> str:
    """Where a Postgres column's value comes from, in one phrase naming the D1 column."""
    if column.source_sql:
        return f"derived in D1 by `{' '.join(column.source_sql.split())}`"
    if column.added:
        default = f" (DEFAULT {column.default})" if column.default else ""
        return f"added by the map, no D1 column: NULL{default} until the app writes it"
    source = f"`{column.source_name}` ({column.source_type})"
    if column.secret:
        phrase = f"SHA-256 of D1 {source}; the value itself is never stored"
    elif column.shift is not None:
        phrase = f"derived from D1 {source}, shifted by {_duration(column.shift)}"
    elif column.source_name != column.name:
        phrase = f"renamed from D1 {source}"
    else:
        phrase = f"from D1 {source}"
    for number, other in column.flags:
        phrase += f"; D1's {number} means " + (f"the row's {other}" if other else "NULL")
    if column.enum:
        phrase += f"; one of: {', '.join(schema.enum(column.enum).values)}"
    return phrase


def _column_constraints(table: Table, column: Column) -> TableColumnConstraints:
    other = []
    single_pk = table.primary_key == (column.name,)
    if single_pk:
        other.append("PRIMARY KEY")
    if column.parent:
        parent_table, parent_column = column.parent
        fk = f"FK → {parent_table}.{parent_column}"
        other.append(fk + (f" ON DELETE {column.on_delete}" if column.on_delete else ""))
    if column.check:
        other.append(f"CHECK ({column.check})")
    if column.default is not None:
        other.append(f"DEFAULT {column.default}")
    return TableColumnConstraints(
        nullable=column.nullable and column.name not in table.primary_key,
        unique=column.unique or single_pk,
        other=other,
    )


def target_column_schema(table: Table, schema: Schema) -> TableSchema:
    """The Postgres table as ``target/ddl.py`` creates it."""
    columns = [
        TableColumn(
            name=c.name,
            type=c.pg_type,
            description=column_origin(c, schema),
            constraints=_column_constraints(table, c),
        )
        for c in table.columns
    ]
    other = []
    if len(table.primary_key) > 1:
        other.append(f"PRIMARY KEY ({', '.join(table.primary_key)})")
    other += [f"UNIQUE ({', '.join(cols)})" for cols in table.uniques]
    other += [f"CONSTRAINT {name} CHECK ({expr})" for name, expr in table.checks]
    return TableSchema(columns=columns, constraints=TableConstraints(other=other))


def source_column_schema(table: Table) -> TableSchema:
    """The D1 table as the spec reads it (the drift check holds D1 to exactly these columns)."""
    targets: dict[str, list[Column]] = {}
    for c in table.columns:
        if c.source_name:
            targets.setdefault(c.source_name, []).append(c)
    return TableSchema(
        columns=[
            TableColumn(
                name=name,
                type=read[0].source_type,
                description="becomes " + ", ".join(f"`{table.name}.{c.name}`" for c in read),
                constraints=TableColumnConstraints(nullable=name not in table.source_pk),
            )
            for name, read in targets.items()
        ]
    )


def column_lineage(table: Table) -> TableColumnLineage:
    """Each Postgres column read from a D1 column, renamed or not, from the ``d1/`` asset."""
    return TableColumnLineage(
        deps_by_column={
            c.name: [TableColumnDep(asset_key=source_key(table.name), column_name=c.source_name)]
            for c in table.columns
            if c.source_name
        }
    )
