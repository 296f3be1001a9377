"""One Dagster asset per D1 table, built from the table spec.

Each ``pg/<table>`` asset depends on ``d1/<table>`` (the source, an external asset) and on the
``pg/`` assets of its FK parents; one subsettable multi-asset step loads the selected tables,
parents before children.
"""

from collections.abc import Iterator
from contextlib import closing

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    Failure,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from d1_migration.checks import CheckRunner, check_specs
from d1_migration.ddl import ensure_schema, load_order
from d1_migration.drift import schema_drift
from d1_migration.keys import source_key, target_key
from d1_migration.load import TableResult, ancestors, migrate_table
from d1_migration.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.shadow import Shadow
from d1_migration.spec import Schema, Table
from d1_migration.target_lock import TARGET_POOL, TargetBusy, holder_name, target_lock


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


def table_spec(table: Table) -> AssetSpec:
    return AssetSpec(
        key=target_key(table.name),
        group_name=table.section,
        deps=[source_key(table.name), *(target_key(p) for p in table.parents)],
        description=_description(table),
        kinds={"postgres"},
        skippable=True,
    )


def _metadata(result: TableResult) -> dict:
    return {
        "mode": result.mode,
        "rows_considered": result.considered,
        "source_rows": result.source_rows,
        "quarantined_this_run": result.quarantined,
        "quarantine_reasons": MetadataValue.json(result.reasons),
        "inserted": result.inserted,
        "updated": result.updated,
        "deleted": result.deleted,
        "remapped_ids": result.remapped_ids,
        "seconds": result.seconds,
    }


def build_table_assets(schema: Schema) -> AssetsDefinition:
    """All 66 tables and their checks in one step: each table is still its own asset (own
    deps, metadata, checks, materializable alone), but Dagster's per-step cost is paid once
    instead of 66 times, which on two cores is most of a no-change re-sync; and each table's
    checks run beside the loading of the next tables (checks.py)."""

    def sync_selected(
        context: AssetExecutionContext, d1: D1Source, postgres: PostgresTarget, sync: SyncSettings
    ) -> Iterator[MaterializeResult | AssetCheckResult]:
        selected = context.selected_asset_keys
        failed: set[str] = set()
        with d1.snapshot() as snapshot:  # before any data moves
            drift = schema_drift(snapshot, schema, tuple(d1.skip_tables))
        if drift.skipped:
            context.log.info(f"D1 tables not migrated (internal): {', '.join(drift.skipped)}")
        if drift:
            raise Failure(
                description="D1's schema differs from the table spec; nothing was loaded:\n"
                + "\n".join(f"- {problem}" for problem in drift.problems),
                metadata={"schema_drift": MetadataValue.json(drift.problems)},
            )
        described = {
            **d1.run_metadata(),
            "target": postgres.describe(),
            "d1_internal_tables_skipped": MetadataValue.json(drift.skipped),
        }
        with (
            d1.snapshot() as snapshot,
            postgres.connect() as conn,
            postgres.connect() as check_conn,
            closing(CheckRunner(check_conn, context.selected_asset_check_keys)) as checks,
        ):
            ensure_schema(conn, schema)
            shadow = Shadow(snapshot, sync.shadow_path(conn))
            if sync.mode == "incremental":
                shadow.prefetch([t for t in load_order(schema) if target_key(t.name) in selected])
            for table in load_order(schema):
                if target_key(table.name) not in selected:  # its checks may be, run on their own
                    checks.settled(table, snapshot.count(table) if checks.wants(table) else None)
                    continue
                if ancestors(schema, table) & failed:
                    failed.add(table.name)
                    checks.failed(table)
                    context.log.error(f"{table.name}: not synced, an ancestor table failed")
                    continue
                try:
                    result = migrate_table(
                        conn,
                        snapshot,
                        table,
                        schema,
                        run_id=context.run.run_id,
                        shadow=shadow,
                        incremental=sync.mode == "incremental",
                    )
                except Exception:  # the table is unchanged (one transaction); go on with others
                    shadow.rollback()
                    failed.add(table.name)
                    checks.failed(table)
                    context.log.exception(f"{table.name}: sync failed, the table is unchanged")
                    continue
                if result.shadow_note:
                    context.log.warning(result.shadow_note)
                if result.quarantined:
                    context.log.warning(
                        f"{table.name}: {result.quarantined} row(s) quarantined in "
                        f"d1_migration.rejected_rows: {result.reasons}"
                    )
                yield MaterializeResult(
                    asset_key=target_key(table.name), metadata={**_metadata(result), **described}
                )
                checks.settled(table, result.source_rows)
                yield from checks.finished()
            shadow.checkpoint()  # while the last checks run
            yield from checks.finished(wait=True)
        for error in checks.errors:
            context.log.error(f"a check could not run: {error}")
        problems = []
        if failed:
            problems.append(f"{len(failed)} table(s) not synced: {', '.join(sorted(failed))}")
        if checks.errors:
            problems.append(f"{len(checks.errors)} check(s) could not run")
        if problems:
            raise Failure("; ".join(problems))

    @multi_asset(
        name="migrate_tables",
        specs=[table_spec(t) for t in schema.tables],
        check_specs=check_specs(schema),
        can_subset=True,
        pool=TARGET_POOL,  # runs Dagster launches take turns here; the lock covers the rest
    )
    def migrate_tables(
        context: AssetExecutionContext, d1: D1Source, postgres: PostgresTarget, sync: SyncSettings
    ) -> Iterator[MaterializeResult | AssetCheckResult]:
        # Before D1 is copied (one copy file per source) and before anything is written.
        lock = target_lock(
            postgres.resolved_url(),
            holder_name(context.run.run_id),
            sync.lock_timeout_seconds,
            on_wait=context.log.warning,
        )
        try:
            with lock:
                yield from sync_selected(context, d1, postgres, sync)
        except TargetBusy as busy:  # raised before the block: nothing was written
            raise Failure(description=str(busy)) from None

    return migrate_tables


def build_assets(schema: Schema) -> list[AssetsDefinition | AssetSpec]:
    return [source_asset(t) for t in schema.tables] + [build_table_assets(schema)]
