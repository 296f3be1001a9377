"""The cutover gate: may Postgres take over from D1 now?

Ready means: a final sync brought Postgres up to date, a second sync right after found nothing
to do (so D1 is quiet: nobody is still writing to it), and every check passes, the quarantine
check included (at cutover a quarantined row is a row the app would lose), and matches_d1
verifies every table whole. Both syncs go through the engine (engine.py), schema drift,
per-table failures and a lost target included: each makes the verdict NOT READY, never a crash.
"""

from dataclasses import dataclass, field

import psycopg
from dagster import AssetCheckResult

from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings, require_source
from d1_migration.spec.model import Schema
from d1_migration.sync.engine import SchemaDrift, TargetLost, sync_tables
from d1_migration.sync.target_lock import holder_name, target_lock
from d1_migration.target.ddl import BOOKKEEPING_SCHEMA
from d1_migration.target.evolve import EvolutionRefused
from d1_migration.target.load import TableResult
from d1_migration.verify.checks import ROW_PARITY, ContentCheck, table_check_results, wallet_drift


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


def _sync(
    d1: D1Source, postgres: PostgresTarget, sync: SyncSettings, schema: Schema, run_id: str | None
) -> tuple[dict[str, TableResult], list[str]]:
    """One incremental sync through the engine: the synced tables' results, and a reason for
    every table that did not sync (or for each schema difference, when nothing synced; or the one
    reason a lost target gives, naming the tables left unsynced)."""
    results: dict[str, TableResult] = {}
    reasons: list[str] = []
    with d1.snapshot() as snapshot, postgres.connect() as conn:
        try:
            for outcome in sync_tables(
                conn,
                snapshot,
                schema,
                sync.shadow_path,
                incremental=True,
                run_id=run_id,
                skip_tables=tuple(d1.skip_tables),
            ):
                if outcome.result is not None:
                    results[outcome.table.name] = outcome.result
                elif outcome.error is not None:
                    reasons.append(f"pg/{outcome.table.name} was not synced: {outcome.error}")
        except SchemaDrift as drift:
            reasons += [f"schema drift: {problem}" for problem in drift.drift.problems]
        except TargetLost as lost:
            reasons.append(str(lost))
        except EvolutionRefused as refused:
            reasons.append(f"target schema: {refused}")
    return results, reasons


def _failure(result: AssetCheckResult) -> str:
    """A failed check as one readable line: what failed, then its figures."""
    figures = []
    for name, value in result.metadata.items():
        value = getattr(value, "value", value)
        if name in ("details", "inspect_with") or value in ({}, [], 0, None):
            continue
        figures.append(f"{name.replace('_', ' ')}: {_plain(value)}")
    return f"{result.asset_key.to_user_string()} {result.check_name} failed; " + "; ".join(figures)


def _plain(value) -> str:
    """A metadata value as words: no dict or list reprs (a dict of lists included)."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_plain(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return " ".join(map(_plain, value[:10])) + (" ..." if len(value) > 10 else "")
    return str(value)


def cutover_check(
    d1: D1Source,
    postgres: PostgresTarget,
    sync: SyncSettings,
    schema: Schema,
    run_id: str | None = None,
) -> Verdict:
    """The verdict, holding the target from the final sync to the last check (target_lock):
    no other sync may change Postgres between them."""
    require_source(d1, postgres)
    with target_lock(postgres.resolved_url(), holder_name(run_id), sync.lock_timeout_seconds):
        return _verdict(d1, postgres, sync, schema, run_id)


def _verdict(
    d1: D1Source, postgres: PostgresTarget, sync: SyncSettings, schema: Schema, run_id: str | None
) -> Verdict:
    final, reasons = _sync(d1, postgres, sync, schema, run_id)
    if reasons:  # a table that did not sync cannot be checked against D1: stop here
        return Verdict(ready=False, reasons=reasons)
    with postgres.connect() as conn:
        quarantine_before = _open_quarantine(conn)
    d1.refresh()  # the second sync must see D1 as it is now (a live source is re-copied)
    quiet, reasons = _sync(d1, postgres, sync, schema, run_id)
    if reasons:
        return Verdict(ready=False, reasons=reasons)
    content = ContentCheck(d1.run_copy()["path"], schema, slices=1)  # every table, whole
    with postgres.connect() as conn:
        results: list[AssetCheckResult] = [wallet_drift(conn)]
        for table in schema.tables:
            results += table_check_results(conn, table, quiet[table.name].source_rows, content)
        busy = {name: _changes(r) for name, r in quiet.items() if _changes(r)}
        if busy:
            changed = ", ".join(f"{name} ({n} rows)" for name, n in sorted(busy.items()))
            reasons.append(f"D1 is still changing: a second sync changed {changed}")
        if _open_quarantine(conn) != quarantine_before:
            reasons.append("D1 is still changing: the quarantine changed on a second sync")
    reasons += [_failure(result) for result in results if not result.passed]
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
