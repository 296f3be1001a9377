"""One Dagster asset per D1 table, built by a factory over the table spec.

Each ``pg/<table>`` asset depends on ``d1/<table>`` (the source, an external asset) and on the
``pg/`` assets of its FK parents, so Materialize all loads parents before children.
"""

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    asset,
)

from d1_migration.ddl import ensure_schema
from d1_migration.load import migrate_table
from d1_migration.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.shadow import Shadow
from d1_migration.spec import Schema, Table

SOURCE_PREFIX = "d1"
TARGET_PREFIX = "pg"


def source_key(table: str) -> AssetKey:
    return AssetKey([SOURCE_PREFIX, table])


def target_key(table: str) -> AssetKey:
    return AssetKey([TARGET_PREFIX, table])


def source_asset(table: Table) -> AssetSpec:
    return AssetSpec(
        key=source_key(table.name),
        group_name=table.section,
        description=f"D1 table `{table.name}` (read, never written).",
        kinds={"sqlite"},
    )


def _description(table: Table) -> str:
    lines = [f"Postgres table `{table.name}`, migrated from D1 `{table.name}`."]
    renamed = [
        f"`{c.source_name}` -> `{c.name}`"
        for c in table.columns
        if c.source_name and c.source_name != c.name
    ]
    if renamed:
        lines.append("Renamed: " + ", ".join(renamed) + ".")
    if table.notes:
        lines.append(table.notes)
    return "\n\n".join(lines)


def table_asset(table: Table, schema: Schema) -> AssetsDefinition:
    @asset(
        key=target_key(table.name),
        group_name=table.section,
        deps=[source_key(table.name), *(target_key(p) for p in table.parents)],
        description=_description(table),
        kinds={"postgres"},
    )
    def _migrate(
        context: AssetExecutionContext, d1: D1Source, postgres: PostgresTarget, sync: SyncSettings
    ) -> MaterializeResult:
        with postgres.connect() as conn, d1.snapshot() as snapshot:
            ensure_schema(conn, schema)
            result = migrate_table(
                conn,
                snapshot,
                table,
                schema,
                run_id=context.run.run_id,
                shadow=Shadow(snapshot, sync.shadow_path(conn)),
                incremental=sync.mode == "incremental",
            )
        if result.quarantined:
            context.log.warning(
                f"{table.name}: {result.quarantined} row(s) quarantined in "
                f"d1_migration.rejected_rows: {result.reasons}"
            )
        return MaterializeResult(
            metadata={
                "mode": result.mode,
                "rows_considered": result.considered,
                "source_rows": result.source_rows,
                "target_rows": result.target_rows,
                "quarantined_this_run": result.quarantined,
                "quarantine_reasons": MetadataValue.json(result.reasons),
                "inserted": result.inserted,
                "updated": result.updated,
                "deleted": result.deleted,
                "remapped_ids": result.remapped_ids,
                "seconds": result.seconds,
                "target": postgres.describe(),
            }
        )

    return _migrate


def build_assets(schema: Schema) -> list[AssetsDefinition | AssetSpec]:
    return [source_asset(t) for t in schema.tables] + [
        table_asset(t, schema) for t in schema.tables
    ]
