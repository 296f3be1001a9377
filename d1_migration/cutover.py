"""The cutover gate: may Postgres take over from D1 now?

Ready means: a final sync brought Postgres up to date, a second sync right after found nothing
to do (so D1 is quiet: nobody is still writing to it), and every check passes, the quarantine
check included (at cutover a quarantined row is a row the app would lose).
"""

from dataclasses import dataclass, field

import psycopg
from dagster import AssetCheckResult, Failure, MetadataValue, OpExecutionContext, job, op

from d1_migration.checks import ROW_PARITY, table_check_results, wallet_drift
from d1_migration.ddl import BOOKKEEPING_SCHEMA, ensure_schema
from d1_migration.load import TableResult, sync_all
from d1_migration.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.shadow import Shadow
from d1_migration.spec import Schema
from d1_migration.target_lock import TARGET_POOL, holder_name, target_lock


@dataclass
class Verdict:
    ready: bool
    reasons: list[str]
    tables: dict[str, dict] = field(default_factory=dict)

    def render(self) -> str:
        lines = [f"{'table':28} {'D1':>9} {'Postgres':>9} {'quarantined':>11} {'final sync':>10}"]
        for name, row in sorted(self.tables.items()):
            lines.append(
                f"{name:28} {row['source_rows']:>9} {row['target_rows']:>9} "
                f"{row['quarantined']:>11} {row['final_sync_changes']:>10}"
            )
        verdict = "READY for cutover" if self.ready else "NOT READY for cutover"
        lines += ["", verdict] + [f"  - {reason}" for reason in self.reasons]
        return "\n".join(lines)


def _open_quarantine(conn: psycopg.Connection) -> set[tuple]:
    return set(
        conn.execute(
            f"SELECT source_table, source_pk, reason FROM {BOOKKEEPING_SCHEMA}.rejected_rows "
            "WHERE resolved_at IS NULL"
        ).fetchall()
    )


def _changes(result: TableResult) -> int:
    return result.inserted + result.updated + result.deleted


def _checks(conn: psycopg.Connection, synced: dict[str, TableResult], schema: Schema) -> list:
    results: list[AssetCheckResult] = [wallet_drift(conn)]
    for table in schema.tables:
        results += table_check_results(conn, table, synced[table.name].source_rows)
    return results


def cutover_check(
    d1: D1Source,
    postgres: PostgresTarget,
    sync: SyncSettings,
    schema: Schema,
    run_id: str | None = None,
) -> Verdict:
    reasons: list[str] = []
    with (
        target_lock(postgres.resolved_url(), holder_name(run_id), sync.lock_timeout_seconds),
        postgres.connect() as conn,
    ):
        ensure_schema(conn, schema)
        with d1.snapshot() as snapshot:
            shadow = Shadow(snapshot, sync.shadow_path(conn))
            final = sync_all(conn, snapshot, schema, shadow, incremental=True, run_id=run_id)
        quarantine_before = _open_quarantine(conn)
        d1.refresh()  # the second sync must see D1 as it is now (a live source is re-copied)
        with d1.snapshot() as snapshot:
            shadow = Shadow(snapshot, sync.shadow_path(conn))
            quiet = sync_all(conn, snapshot, schema, shadow, incremental=True, run_id=run_id)
        results = _checks(conn, quiet, schema)
        busy = {name: _changes(r) for name, r in quiet.items() if _changes(r)}
        if busy:
            reasons.append(f"D1 is still changing: a second sync changed {busy}")
        if _open_quarantine(conn) != quarantine_before:
            reasons.append("D1 is still changing: the quarantine changed on a second sync")

        for result in results:
            if not result.passed:
                detail = {
                    k: v.value if hasattr(v, "value") else v
                    for k, v in result.metadata.items()
                    if k not in ("details", "inspect_with")
                }
                reasons.append(f"{result.asset_key.to_user_string()} {result.check_name}: {detail}")
        parity = {r.asset_key.path[-1]: r.metadata for r in results if r.check_name == ROW_PARITY}
        tables = {
            name: {
                "source_rows": r.source_rows,
                "target_rows": parity[name]["target_rows"].value,
                "quarantined": parity[name]["quarantined_rows"].value,
                "final_sync_changes": _changes(final[name]),
            }
            for name, r in quiet.items()
        }
    return Verdict(ready=not reasons, reasons=reasons, tables=tables)


def build_cutover_job(schema: Schema):
    @op(
        name="final_sync_and_checks",
        pool=TARGET_POOL,
        description="Final sync, a second sync that must change nothing, every check blocking.",
    )
    def cutover_gate(
        context: OpExecutionContext, d1: D1Source, postgres: PostgresTarget, sync: SyncSettings
    ) -> bool:
        verdict = cutover_check(d1, postgres, sync, schema, run_id=context.run.run_id)
        context.log.info(verdict.render())
        metadata = {
            "ready": verdict.ready,
            "reasons": MetadataValue.json(verdict.reasons),
            "tables": MetadataValue.json(verdict.tables),
        }
        if not verdict.ready:
            raise Failure(
                description="NOT READY for cutover: " + "; ".join(verdict.reasons[:5]),
                metadata=metadata,
            )
        context.add_output_metadata(metadata)
        return True

    @job(name="cutover_gate", description="May Postgres take over from D1 now? (see README)")
    def cutover_gate_job() -> None:
        cutover_gate()

    return cutover_gate_job
