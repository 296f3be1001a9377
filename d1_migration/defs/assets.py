"""One Dagster asset per D1 table, built from the table spec.

Each ``pg/<table>`` asset depends on ``d1/<table>`` (the source, an external asset) and on the
``pg/`` assets of its FK parents; one subsettable multi-asset step loads the selected tables,
parents before children.
"""

import logging
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import psycopg
from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetExecutionContext,
    AssetObservation,
    AssetsDefinition,
    AssetSpec,
    Backoff,
    BetaWarning,
    Config,
    DagsterEventType,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    ObserveResult,
    RetryPolicy,
    multi_asset,
    multi_observable_source_asset,
)
from pydantic import Field

from d1_migration.defs.asset_checks import CheckRunner, check_specs, source_check_evaluations
from d1_migration.defs.keys import source_key, table_of, target_key
from d1_migration.defs.resources import (
    D1Source,
    NotConfigured,
    PostgresTarget,
    SyncSettings,
    require_source,
)
from d1_migration.defs.table_metadata import (
    COLUMN_LINEAGE,
    COLUMN_SCHEMA,
    ROW_COUNT,
    TABLE_NAME,
    column_lineage,
    source_column_schema,
    target_column_schema,
)
from d1_migration.source.snapshot import Snapshot
from d1_migration.spec.model import Schema, Table, q
from d1_migration.sync.apart import sync_tables_apart
from d1_migration.sync.engine import (
    Outcome,
    SchemaDrift,
    Status,
    TargetLost,
    target_lost,
    unsynced_message,
)
from d1_migration.sync.target_lock import TARGET_POOL, TargetBusy, holder_name, target_lock
from d1_migration.target.connection import TargetError, TargetUnreachable
from d1_migration.target.ddl import BOOKKEEPING_SCHEMA, load_order
from d1_migration.target.evolve import EvolutionRefused
from d1_migration.target.load import TableResult
from d1_migration.verify.checks import ContentCheck
from d1_migration.verify.drift import Drift

log = logging.getLogger(__name__)

TABLE_STEP = "migrate_tables"  # the op that jobs configure (ops.migrate_tables.config)

# Only a lost or unreachable target is retried (every other failure is Failure(allow_retries=
# False)): the whole step again, where the tables already synced are incremental no-ops. Waits
# of about 2, 6 and 14 s (each +-2 s, so that runs do not all come back at once) see a server
# through a restart.
TARGET_RETRY = RetryPolicy(
    max_retries=3, delay=2, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)


OBSERVE_STEP = "observe_d1"


def source_asset(table: Table) -> AssetSpec:
    return AssetSpec(
        key=source_key(table.name),
        group_name=table.section,
        description=f"D1 table `{table.name}` (read only). Observed on every sync: its rows "
        "in the snapshot synced, and where it was read from.",
        kinds={"cloudflare", "sqlite"},
        metadata={COLUMN_SCHEMA: source_column_schema(table)},
    )


def source_observation(d1: D1Source, table: Table, rows: int | None) -> dict:
    """What an observation of a D1 table records: its rows in the snapshot read, where it was
    read from (a file, or d1://<account>/<database>: never a token) and the Time Travel
    bookmark of a live copy."""
    source = d1.source()
    metadata: dict = {
        ROW_COUNT: rows,
        "d1_source": MetadataValue.text(source)
        if source.startswith("d1://")
        else MetadataValue.path(os.path.abspath(source)),
        "d1_table": table.name,
    }
    if rows is None:  # the drift check names it; nothing to count
        del metadata[ROW_COUNT]
        metadata["missing_in_d1"] = True
    metadata.update(d1.run_metadata())
    return metadata


def build_source_assets(schema: Schema) -> AssetsDefinition:
    """The D1 tables as observable source assets: the graph shows each as observed (when, and
    its row count) rather than as never materialized. The table step reports an observation of
    each table it syncs; "Observe" in the UI runs this op alone."""

    with warnings.catch_warnings():  # beta in Dagster 1.13: not the operator's concern
        warnings.simplefilter("ignore", BetaWarning)

        @multi_observable_source_asset(
            specs=[source_asset(t) for t in schema.tables],
            name=OBSERVE_STEP,
            description="Count each selected D1 table's rows (for a d1:// source this copies "
            "the live database through the API first, as a sync does).",
            can_subset=True,
            required_resource_keys={"d1"},
        )
        def observe_d1(context) -> Iterator[ObserveResult]:
            d1: D1Source = context.resources.d1
            selected = {table_of(k) for k in context.selected_asset_keys}
            with d1.snapshot() as snapshot:
                names = set(snapshot.table_names())
                for table in schema.tables:
                    if table.name in selected:
                        rows = snapshot.count(table) if table.name in names else None
                        yield ObserveResult(
                            asset_key=source_key(table.name),
                            metadata=source_observation(d1, table, rows),
                        )

    return observe_d1


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


def table_spec(table: Table, schema: Schema) -> AssetSpec:
    return AssetSpec(
        key=target_key(table.name),
        group_name=table.section,
        deps=[source_key(table.name), *(target_key(p) for p in table.parents)],
        description=_description(table),
        kinds={"postgres"},
        skippable=True,
        metadata={COLUMN_SCHEMA: target_column_schema(table, schema)},
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
        specs=[table_spec(t, schema) for t in schema.tables],
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
    ) -> Iterator[MaterializeResult | AssetCheckResult | AssetObservation | AssetCheckEvaluation]:
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


SUMMARY_TAG_PREFIX = "d1_migration/"


@dataclass
class StepSummary:
    """What one attempt of the table step did: the run's tags (``d1_migration/...``) and one
    block in its log, so that a run says what happened without filtering its event log."""

    tables_synced: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    quarantined: int = 0  # open quarantine entries of the tables synced
    quarantined_this_run: int = 0
    not_synced: list[str] = field(default_factory=list)
    checks_run: int = 0
    checks_failed: Counter = field(default_factory=Counter)  # by severity: ERROR, WARN
    failed_check_names: list[str] = field(default_factory=list)

    def table(self, result: TableResult, quarantined: int) -> None:
        self.tables_synced += 1
        self.inserted += result.inserted
        self.updated += result.updated
        self.deleted += result.deleted
        self.quarantined += quarantined
        self.quarantined_this_run += result.quarantined

    def counted(self, results: Iterable[AssetCheckResult]) -> Iterator[AssetCheckResult]:
        for result in results:
            self.check(result.asset_key, result.check_name, result.passed, result.severity)
            yield result

    def check(self, key, name: str, passed: bool, severity) -> None:
        self.checks_run += 1
        if not passed:
            self.checks_failed[severity.value] += 1
            self.failed_check_names.append(f"{key.to_user_string()} {name} ({severity.value})")

    def tags(self) -> dict[str, str]:
        counts = {
            "tables_synced": self.tables_synced,
            "tables_not_synced": len(self.not_synced),
            "rows_inserted": self.inserted,
            "rows_updated": self.updated,
            "rows_deleted": self.deleted,
            "rows_quarantined": self.quarantined,
            "checks_run": self.checks_run,
            "checks_failed_error": self.checks_failed["ERROR"],
            "checks_failed_warn": self.checks_failed["WARN"],
        }
        return {SUMMARY_TAG_PREFIX + k: str(v) for k, v in counts.items()}

    def render(self) -> str:
        lines = [
            "Sync summary",
            f"  tables synced:     {self.tables_synced}"
            + (
                f" ({len(self.not_synced)} not synced: {', '.join(self.not_synced)})"
                if self.not_synced
                else ""
            ),
            f"  rows inserted:     {self.inserted}",
            f"  rows updated:      {self.updated}",
            f"  rows deleted:      {self.deleted}",
            f"  rows quarantined:  {self.quarantined} open in d1_migration.rejected_rows "
            f"({self.quarantined_this_run} seen by this run)",
            f"  checks:            {self.checks_run} run, {self.checks_failed['ERROR']} failed, "
            f"{self.checks_failed['WARN']} warning(s)",
        ]
        lines += [f"    - {name}" for name in self.failed_check_names[:40]]
        if len(self.failed_check_names) > 40:
            lines.append(f"    ... and {len(self.failed_check_names) - 40} more")
        return "\n".join(lines)


def _target_state(conn: psycopg.Connection, table: Table) -> tuple[int, int]:
    """Rows in the Postgres table now, and its open quarantine entries."""
    try:
        return conn.execute(
            f"""SELECT (SELECT count(*) FROM {q(table.name)}),
                       (SELECT count(*) FROM {BOOKKEEPING_SCHEMA}.rejected_rows
                        WHERE source_table = %s AND resolved_at IS NULL)""",
            [table.name],
        ).fetchone()
    except psycopg.Error as error:
        if lost := target_lost(conn, error, []):  # retried like any loss
            raise lost from error
        raise


def _sync_step(
    context: AssetExecutionContext,
    config: SyncConfig,
    d1: D1Source,
    postgres: PostgresTarget,
    sync: SyncSettings,
    schema: Schema,
) -> Iterator[MaterializeResult | AssetCheckResult | AssetObservation | AssetCheckEvaluation]:
    """The selected tables synced by the engine: each one's D1 source observed, its
    materialization and its checks yielded as soon as it is committed, and the D1 sources'
    drift checks reported from the drift check that comes first; the run tagged with a summary
    at the end; fails at the end if a table or a check did not run."""
    selected = {table_of(k) for k in context.selected_asset_keys}
    described = {**d1.run_metadata(), "target": postgres.describe()}
    failed: list[str] = []
    content = ContentCheck(d1.run_copy()["path"], schema, config.slices)
    summary = StepSummary()
    pending: list[AssetCheckEvaluation] = []  # the sources' drift checks, yielded first

    def drift_checked(drift: Drift) -> None:
        if drift.skipped:
            context.log.info(f"D1 tables not migrated (internal): {', '.join(drift.skipped)}")
        described["d1_internal_tables_skipped"] = MetadataValue.json(drift.skipped)
        pending.extend(
            source_check_evaluations([t for t in schema.tables if t.name in selected], drift)
        )

    def source_checks() -> Iterator[AssetCheckEvaluation]:
        while pending:
            evaluation = pending.pop(0)
            summary.check(
                evaluation.asset_key,
                evaluation.check_name,
                evaluation.passed,
                evaluation.severity,
            )
            yield evaluation

    try:
        with (
            d1.snapshot() as snapshot,  # first: it keeps the file as the engine will read it
            sync_tables_apart(  # the engine starts up while the checks' connections open
                postgres.resolved_url(),
                Path(d1.run_copy()["path"]),
                schema,
                sync.resolved_state_dir(),
                incremental=config.mode == "incremental",
                run_id=context.run.run_id,
                selected=selected,
                skip_tables=tuple(d1.skip_tables),
                on_drift_checked=drift_checked,
            ) as outcomes,
            postgres.connect() as conn,
            postgres.connect() as check_conn,
            postgres.connect() as other_check_conn,
            closing(
                CheckRunner(
                    [check_conn, other_check_conn], context.selected_asset_check_keys, content
                )
            ) as checks,
        ):
            database, pg_schema = conn.execute(
                "SELECT current_database(), current_schema()"
            ).fetchone()

            def events(outcome: Outcome, target_gone: bool = False) -> Iterator:
                return _table_events(
                    context,
                    outcome,
                    checks,
                    snapshot,
                    conn,
                    summary,
                    failed,
                    d1,
                    schema,
                    {**described, TABLE_NAME: f"{database}.{pg_schema}.{outcome.table.name}"},
                    target_gone,
                )

            try:
                for outcome in outcomes:
                    yield from source_checks()
                    yield from events(outcome)
            except SchemaDrift:
                yield from source_checks()  # the drifted tables' checks fail before the step
                raise
            except TargetLost:  # the engine runs ahead of the step: what it committed counts
                yield from _committed_ahead(outcomes, events)
                raise
            yield from source_checks()
            yield from summary.counted(checks.finished(wait=True))
    finally:
        summary.not_synced = sorted(failed)
        _report(context, summary)
    for error in checks.errors:
        context.log.error(f"a check could not run: {error}")
    problems = []
    if failed:
        problems.append(f"{len(failed)} table(s) not synced: {', '.join(sorted(failed))}")
    if checks.errors:
        problems.append(f"{len(checks.errors)} check(s) could not run")
    if problems:
        raise Failure("; ".join(problems), allow_retries=False)


def _table_events(
    context: AssetExecutionContext,
    outcome: Outcome,
    checks: CheckRunner,
    snapshot: Snapshot,
    conn: psycopg.Connection,
    summary: StepSummary,
    failed: list[str],
    d1: D1Source,
    schema: Schema,
    described: dict,
    target_gone: bool = False,
) -> Iterator[MaterializeResult | AssetCheckResult | AssetObservation]:
    """One table's outcome as Dagster events: its D1 source observed, its materialization (with
    what the catalog shows: row count, table name, column schema and lineage, quarantined
    rows), then whichever checks are done by now; when the target is known to be gone, only
    the first two, without the counts."""
    table, result = outcome.table, outcome.result
    if outcome.status is Status.UNSELECTED:  # its checks may be selected alone
        checks.settled(table, snapshot.count(table) if checks.wants(table) else None)
        return
    if result is None:
        failed.append(table.name)
        checks.failed(table)
        context.log.error(f"{table.name}: not synced ({outcome.error})")
        return
    if result.shadow_note:
        context.log.warning(result.shadow_note)
    if result.quarantined:
        context.log.warning(
            f"{table.name}: {result.quarantined} row(s) quarantined in "
            f"d1_migration.rejected_rows: {result.reasons}"
        )
    gone: TargetLost | None = None
    counts, quarantined = {}, 0
    try:
        if not target_gone:
            rows, quarantined = _target_state(conn, table)
            counts = {ROW_COUNT: rows, "quarantined_rows": quarantined}
    except TargetLost as lost:  # after the table's commit: it is synced, its counts unknown
        gone = lost
    summary.table(result, quarantined)
    yield AssetObservation(
        asset_key=source_key(table.name),
        metadata=source_observation(d1, table, result.source_rows),
    )
    # Yielded even when the target went away: the run's materializations are what a lost
    # target's message counts as synced (_target_gone), and this table's commit stands.
    yield MaterializeResult(
        asset_key=target_key(table.name),
        metadata={
            **_metadata(result),
            **counts,
            COLUMN_SCHEMA: target_column_schema(table, schema),
            COLUMN_LINEAGE: column_lineage(table),
            **described,
        },
    )
    if gone is not None:
        raise gone
    if target_gone:
        return
    checks.settled(table, result.source_rows)
    yield from summary.counted(checks.finished())


def _committed_ahead(
    outcomes: Iterator[Outcome], events: Callable[[Outcome, bool], Iterator]
) -> Iterator:
    """After the step found the target gone: the tables the engine's process committed before
    it found so too, whose outcomes were on their way, recorded as materialized (the lost
    target's message counts the run's materializations as synced, _target_gone)."""
    try:
        for outcome in outcomes:
            if outcome.result is not None:
                yield from events(outcome, True)
    except Exception as error:  # the engine's own news of the loss, most likely
        log.info("the sync engine ended after the target was lost: %s", error)


def _report(context: AssetExecutionContext, summary: StepSummary) -> None:
    """The summary as the run's tags and one block in the step's log."""
    context.log.info(summary.render())
    try:
        context.instance.add_run_tags(context.run.run_id, summary.tags())
    except Exception as error:  # Dagster's own storage: the sync itself is done either way
        context.log.warning(f"Could not tag the run with its summary: {error}")


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


def build_assets(schema: Schema) -> list[AssetsDefinition]:
    return [build_source_assets(schema), build_table_assets(schema)]
