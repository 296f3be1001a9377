"""The sync engine: the one loop that brings a target up to date, for every entry point.

The table step of Materialize all and of the `migrate`/`full_rebuild` jobs and the `resync`
schedule (defs/assets.py, in a process of its own: sync/apart.py), the cutover gate
(verify/cutover.py) and the CLI all sync through ``sync_tables``, so a guard added here holds
everywhere: D1's schema is compared with the spec before anything is written, tables load
parents first, and a table that fails is left as it was (one transaction) while its
descendants are skipped and the others go on. A lost
connection to the target is the exception: nothing more can be written on it, so the sync
stops at once with one TargetLost naming the cause and the tables left unsynced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import psycopg

from d1_migration.source.snapshot import Snapshot
from d1_migration.spec.model import Schema, Table
from d1_migration.sync.shadow import Shadow
from d1_migration.sync.target_lock import holder_name, target_lock
from d1_migration.target.ddl import ensure_schema, load_order
from d1_migration.target.first_load import Prefetch
from d1_migration.target.load import TableResult, ancestors, migrate_table
from d1_migration.verify.drift import Drift, schema_drift

log = logging.getLogger(__name__)


class SchemaDrift(Exception):
    """D1's tables or columns differ from the spec: nothing was written."""

    def __init__(self, drift: Drift) -> None:
        super().__init__(
            "D1's schema differs from the table spec; nothing was loaded:\n"
            + "\n".join(f"- {problem}" for problem in drift.problems)
        )
        self.drift = drift

    def __reduce__(self):  # pickled as what it was made of (sync/apart.py)
        return SchemaDrift, (self.drift,)


def unsynced_message(cause: str, unsynced: Sequence[str]) -> str:
    """One line for a sync cut short: why, and what is left to do (what was committed stays).
    The cause holds no password: psycopg's errors on an open connection do not quote the URL,
    and connect_target's are redacted."""
    reason = " ".join(cause.split())
    return f"{reason}; {len(unsynced)} table(s) left unsynced: {', '.join(unsynced) or 'none'}"


class TargetLost(Exception):
    """The connection to the target broke mid-sync (a server restart or shutdown, a network
    failure). Transient, unlike every other failure: the tables committed before stay
    committed, and a sync started once the server is back does the rest."""

    def __init__(self, cause: str, unsynced: Sequence[str]) -> None:
        super().__init__(unsynced_message(cause, unsynced))
        self.cause = cause
        self.unsynced = list(unsynced)

    def __reduce__(self):  # pickled as what it was made of (sync/apart.py)
        return TargetLost, (self.cause, self.unsynced)


def target_lost(
    conn: psycopg.Connection, error: Exception, unsynced: Sequence[str]
) -> TargetLost | None:
    """TargetLost when ``error`` ended ``conn``: psycopg then marks it closed (and broken); a
    server shutting down says so first (AdminShutdown, CrashShutdown), sometimes before the
    socket is seen closed. The connection is closed here in either case: it is of no more use,
    and the ``with`` that opened it must not COMMIT on it (mid-pipeline, an executemany, that
    COMMIT fails with "cannot exit pipeline mode while busy" and hides the TargetLost)."""
    shutdown = isinstance(error, (psycopg.errors.AdminShutdown, psycopg.errors.CrashShutdown))
    if not (conn.closed or shutdown):
        return None
    conn.close()
    return TargetLost(f"Lost the connection to the target: {error}", unsynced)


class Status(StrEnum):
    SYNCED = "synced"
    FAILED = "failed"  # the table is unchanged (its transaction rolled back)
    SKIPPED = "skipped"  # not attempted: an ancestor table failed
    UNSELECTED = "unselected"  # not part of this sync


@dataclass(frozen=True)
class Outcome:
    """What the sync did with one table, in load order."""

    table: Table
    status: Status
    result: TableResult | None = None
    error: str | None = None


def sync_tables(
    conn: psycopg.Connection,
    snapshot: Snapshot,
    schema: Schema,
    shadow_file: Callable[[psycopg.Connection], Path] | None,
    *,
    incremental: bool,
    run_id: str | None = None,
    selected: Collection[str] | None = None,
    skip_tables: tuple[str, ...] = (),
    on_drift_checked: Callable[[Drift], None] | None = None,
) -> Iterator[Outcome]:
    """Sync the ``selected`` tables (all by default) from ``snapshot`` into ``conn``'s database,
    yielding each table's outcome as soon as it is committed, so callers can check a table while
    the next ones load. ``shadow_file`` names the target's shadow (change detection; None: no
    shadow, every table is loaded in full). Raises SchemaDrift before any write, and
    TargetLost as soon as the connection to the target is lost. Holds the target's lock
    (target_lock: one sync of a target at a time, whoever starts it), waiting for it as long
    as it takes; callers that must not wait take it first, with their timeout."""
    drift = schema_drift(snapshot, schema, skip_tables)
    if on_drift_checked is not None:
        on_drift_checked(drift)
    if drift:
        raise SchemaDrift(drift)
    with target_lock(conn, holder_name(run_id)):  # re-entrant: passes through for callers
        # that took it before copying D1 (assets, the gate)
        yield from _sync_locked(conn, snapshot, schema, shadow_file, incremental, run_id, selected)


def _sync_locked(
    conn: psycopg.Connection,
    snapshot: Snapshot,
    schema: Schema,
    shadow_file: Callable[[psycopg.Connection], Path] | None,
    incremental: bool,
    run_id: str | None,
    selected: Collection[str] | None,
) -> Iterator[Outcome]:
    wanted = {t.name for t in schema.tables} if selected is None else set(selected)
    order = load_order(schema)
    unsynced = [t.name for t in order if t.name in wanted]  # in load order, for TargetLost
    try:
        ensure_schema(conn, schema)
        shadow = Shadow(snapshot, shadow_file(conn)) if shadow_file is not None else None
    except Exception as error:
        if lost := target_lost(conn, error, unsynced):
            raise lost from error
        raise
    if shadow is not None and incremental:
        shadow.prefetch([t for t in order if t.name in wanted])
    failed: set[str] = set()
    prefetch = Prefetch(snapshot, schema, [t for t in order if t.name in wanted])
    try:
        for table in order:
            if table.name not in wanted:
                yield Outcome(table, Status.UNSELECTED)
                continue
            if ancestors(schema, table) & failed:
                failed.add(table.name)
                log.error("%s: not synced, an ancestor table failed", table.name)
                yield Outcome(table, Status.SKIPPED, error="an ancestor table failed")
                continue
            try:
                result = migrate_table(
                    conn,
                    snapshot,
                    table,
                    schema,
                    run_id,
                    shadow=shadow,
                    incremental=incremental,
                    prefetch=prefetch,
                )
            except Exception as error:  # the table is unchanged (one transaction); go on
                if shadow is not None:
                    shadow.rollback()
                if lost := target_lost(conn, error, unsynced):
                    log.error("%s", lost)
                    raise lost from error
                failed.add(table.name)
                log.exception("%s: sync failed, the table is unchanged", table.name)
                yield Outcome(table, Status.FAILED, error=f"{type(error).__name__}: {error}")
                continue
            if result.shadow_note:
                log.warning(result.shadow_note)
            unsynced.remove(table.name)
            yield Outcome(table, Status.SYNCED, result)
    finally:
        prefetch.close()  # one not taken (its table failed, or was skipped)
    if shadow is not None:
        shadow.checkpoint()


class SyncFailed(Exception):
    """Some tables did not sync; the message names each with its error."""


def sync_all(
    conn: psycopg.Connection,
    snapshot: Snapshot,
    schema: Schema,
    shadow_file: Callable[[psycopg.Connection], Path] | None,
    *,
    incremental: bool,
    run_id: str | None = None,
    selected: Collection[str] | None = None,
) -> dict[str, TableResult]:
    """Every selected table's result, or SyncFailed naming the tables that did not sync."""
    results: dict[str, TableResult] = {}
    problems: list[str] = []
    for outcome in sync_tables(
        conn,
        snapshot,
        schema,
        shadow_file,
        incremental=incremental,
        run_id=run_id,
        selected=selected,
    ):
        if outcome.result is not None:
            results[outcome.table.name] = outcome.result
        elif outcome.error is not None:
            problems.append(f"{outcome.table.name}: {outcome.error}")
    if problems:
        raise SyncFailed("tables not synced:\n" + "\n".join(problems))
    return results
