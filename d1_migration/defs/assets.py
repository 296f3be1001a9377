"""One Dagster asset per D1 table, built from the table spec.

Each ``pg/<table>`` asset depends on ``d1/<table>`` (the source, an external asset) and on the
``pg/`` assets of its FK parents; one subsettable multi-asset step loads the selected tables,
parents before children.
"""

from collections.abc import Iterator
from contextlib import closing
from typing import Literal

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    Backoff,
    Config,
    DagsterEventType,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    multi_asset,
)
from pydantic import Field

from d1_migration.defs.asset_checks import CheckRunner, check_specs
from d1_migration.defs.keys import source_key, target_key
from d1_migration.defs.resources import (
    D1Source,
    NotConfigured,
    PostgresTarget,
    SyncSettings,
    require_source,
)
from d1_migration.spec.model import Schema, Table
from d1_migration.sync.engine import SchemaDrift, Status, TargetLost, sync_tables, unsynced_message
from d1_migration.sync.target_lock import TARGET_POOL, TargetBusy, holder_name, target_lock
from d1_migration.target.connection import TargetError, TargetUnreachable
from d1_migration.target.ddl import load_order
from d1_migration.target.evolve import EvolutionRefused
from d1_migration.target.load import TableResult
from d1_migration.verify.checks import ContentCheck
from d1_migration.verify.drift import Drift

TABLE_STEP = "migrate_tables"  # the op that jobs configure (ops.migrate_tables.config)

# Only a lost or unreachable target is retried (every other failure is Failure(allow_retries=
# False)): the whole step again, where the tables already synced are incremental no-ops. Waits
# of about 2, 6 and 14 s (each +-2 s, so that runs do not all come back at once) see a server
# through a restart.
TARGET_RETRY = RetryPolicy(
    max_retries=3, delay=2, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)


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


class SyncConfig(Config):
    """How this run syncs (set per job, or in the launchpad under ``ops.migrate_tables``)."""

    mode: Literal["incremental", "full"] = Field(
        default="incremental",
        description="incremental: only what changed since the last sync (the first sync of a "
        "target is full either way); full: re-read, re-check and re-merge every row",
    )
    verify_slices: int = Field(
        default=10,
        ge=1,
        description="matches_d1 verifies 1/N of each table per incremental sync, rotating, so "
        "every row is verified within N syncs; 1 verifies every table whole. A full sync "
        "always verifies whole.",
    )

    @property
    def slices(self) -> int:
        return 1 if self.mode == "full" else self.verify_slices


def build_table_assets(schema: Schema) -> AssetsDefinition:
    """All 66 tables and their checks in one step: each table is still its own asset (own
    deps, metadata, checks, materializable alone), but Dagster's per-step cost is paid once
    instead of 66 times, which on two cores is most of a no-change re-sync; and each table's
    checks run beside the loading of the next tables (asset_checks.py)."""

    @multi_asset(
        name=TABLE_STEP,
        specs=[table_spec(t) for t in schema.tables],
        check_specs=check_specs(schema),
        can_subset=True,
        pool=TARGET_POOL,  # runs Dagster launches take turns here; the lock covers the rest
        retry_policy=TARGET_RETRY,
    )
    def migrate_tables(
        context: AssetExecutionContext,
        config: SyncConfig,
        d1: D1Source,
        postgres: PostgresTarget,
        sync: SyncSettings,
    ) -> Iterator[MaterializeResult | AssetCheckResult]:
        try:
            context.log.info(f"Syncing with {require_source(d1, postgres)}")
            with target_lock(  # before D1 is copied (one copy file per source) or anything written
                postgres.resolved_url(),
                holder_name(context.run.run_id),
                sync.lock_timeout_seconds,
                on_wait=context.log.warning,
            ):
                yield from _sync_step(context, config, d1, postgres, sync, schema)
        except TargetLost as lost:  # transient: TARGET_RETRY runs the step again
            raise _target_gone(context, schema, lost.cause) from None
        except TargetUnreachable as unreachable:  # perhaps restarting: likewise
            raise _target_gone(context, schema, str(unreachable)) from None
        except (
            NotConfigured,
            TargetError,
            TargetBusy,
            EvolutionRefused,
        ) as problem:  # none written
            raise Failure(description=str(problem), allow_retries=False) from None
        except SchemaDrift as drift:
            raise Failure(
                description=str(drift),
                metadata={"schema_drift": MetadataValue.json(drift.drift.problems)},
                allow_retries=False,
            ) from None
        except Failure:
            raise  # _sync_step's verdict on tables and checks, already not retried
        except Exception as error:  # a bug, or the source: running again would not mend it
            raise Failure(
                description="The table step failed (not retried: only a lost target is)",
                allow_retries=False,
            ) from error

    return migrate_tables


def _sync_step(
    context: AssetExecutionContext,
    config: SyncConfig,
    d1: D1Source,
    postgres: PostgresTarget,
    sync: SyncSettings,
    schema: Schema,
) -> Iterator[MaterializeResult | AssetCheckResult]:
    """The selected tables synced by the engine, each one's materialization and checks
    yielded as soon as it is committed; fails at the end if a table or a check did not run."""
    selected = {k.path[-1] for k in context.selected_asset_keys}
    described = {**d1.run_metadata(), "target": postgres.describe()}
    failed: list[str] = []
    content = ContentCheck(d1.run_copy()["path"], schema, config.slices)

    def drift_checked(drift: Drift) -> None:
        if drift.skipped:
            context.log.info(f"D1 tables not migrated (internal): {', '.join(drift.skipped)}")
        described["d1_internal_tables_skipped"] = MetadataValue.json(drift.skipped)

    with (
        d1.snapshot() as snapshot,
        postgres.connect() as conn,
        postgres.connect() as check_conn,
        closing(CheckRunner(check_conn, context.selected_asset_check_keys, content)) as checks,
    ):
        for outcome in sync_tables(
            conn,
            snapshot,
            schema,
            sync.shadow_path,
            incremental=config.mode == "incremental",
            run_id=context.run.run_id,
            selected=selected,
            skip_tables=tuple(d1.skip_tables),
            on_drift_checked=drift_checked,
        ):
            table, result = outcome.table, outcome.result
            if outcome.status is Status.UNSELECTED:  # its checks may be selected alone
                checks.settled(table, snapshot.count(table) if checks.wants(table) else None)
                continue
            if result is None:
                failed.append(table.name)
                checks.failed(table)
                context.log.error(f"{table.name}: not synced ({outcome.error})")
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
        yield from checks.finished(wait=True)
    for error in checks.errors:
        context.log.error(f"a check could not run: {error}")
    problems = []
    if failed:
        problems.append(f"{len(failed)} table(s) not synced: {', '.join(sorted(failed))}")
    if checks.errors:
        problems.append(f"{len(checks.errors)} check(s) could not run")
    if problems:
        raise Failure("; ".join(problems), allow_retries=False)


def _target_gone(context: AssetExecutionContext, schema: Schema, cause: str) -> Failure:
    """A retryable failure naming the cause and the selected tables that no attempt of this run
    synced: a retry runs the whole step again, but what an earlier attempt committed stays
    committed, so once retries run out this one message says what is left to do."""
    records = context.instance.get_records_for_run(
        context.run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
    ).records
    synced = {r.asset_key.path[-1] for r in records if r.asset_key is not None}
    selected = {k.path[-1] for k in context.selected_asset_keys}
    unsynced = [t.name for t in load_order(schema) if t.name in selected and t.name not in synced]
    return Failure(
        description=unsynced_message(cause, unsynced),
        metadata={"unsynced_tables": MetadataValue.json(unsynced)},
    )


def build_assets(schema: Schema) -> list[AssetsDefinition | AssetSpec]:
    return [source_asset(t) for t in schema.tables] + [build_table_assets(schema)]
