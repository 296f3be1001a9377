"""What a target holds and what Dagster recorded about it, read without running anything:
the CLI's ``status``, ``quarantine`` and ``report`` and the ``migration_report`` asset.

From Postgres: each table's rows now, its last sync (``d1_migration.sync_state``: when and in
which mode), the open quarantine (``rejected_rows``) and the wallets that drift from their
ledger. From Dagster's storage: each ``pg/`` table's last materialization (D1's row count at
that sync, what it inserted, updated and deleted, how long it took), the latest outcome of
each of its checks, and past materializations for the charts over time.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from dagster import AssetCheckKey, DagsterInstance, EventLogEntry, RunsFilter

from d1_migration.defs.asset_checks import check_specs
from d1_migration.defs.keys import target_key
from d1_migration.spec.model import Schema, Table, q
from d1_migration.target.ddl import BOOKKEEPING_SCHEMA, SYNC_STATE
from d1_migration.verify.checks import wallet_drift

HISTORY = 50  # past materializations per table read for the charts
EXCERPT = 40  # characters of a raw value shown


@dataclass
class CheckState:
    name: str
    status: str  # passed, failed, not run, running
    severity: str = ""  # ERROR or WARN, for an outcome
    at: datetime | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == "failed"


@dataclass
class TableState:
    name: str
    section: str
    exists: bool = False  # the target has the table
    target_rows: int | None = None
    quarantined: int = 0  # open entries
    synced_at: datetime | None = None  # d1_migration.sync_state
    mode: str | None = None
    materialization: dict = field(default_factory=dict)  # the last one's metadata
    materialized_at: datetime | None = None
    run_id: str | None = None
    checks: dict[str, CheckState] = field(default_factory=dict)

    @property
    def source_rows(self) -> int | None:
        """D1's rows at the table's last sync, as its materialization recorded them."""
        return self.materialization.get("source_rows")

    @property
    def parity(self) -> bool | None:
        """D1 rows = Postgres rows + open quarantine (None: not known yet)."""
        if self.source_rows is None or self.target_rows is None:
            return None
        return self.source_rows == self.target_rows + self.quarantined


@dataclass(frozen=True)
class Quarantined:
    table: str
    source_pk: str
    target_pk: str | None
    column: str | None
    code: str
    reason: str
    raw_value: str | None  # the column's value in D1, as raw_row holds it (secrets hashed)
    raw_row: dict
    first_seen_at: datetime
    last_seen_at: datetime
    run_id: str | None

    @property
    def excerpt(self) -> str:
        return excerpt(self.raw_value)


@dataclass(frozen=True)
class RunPoint:
    """One Dagster run that synced tables: when, how long, what it did."""

    run_id: str
    started: datetime
    seconds: float  # the run, start to end (or the tables' own seconds when unknown)
    table_seconds: float  # the tables' own sync time, summed
    tables: int
    mode: str  # full when any table was synced in full
    status: str


@dataclass
class TargetState:
    tables: list[TableState]
    bookkeeping: bool  # the target was synced at least once (d1_migration schema exists)
    quarantine: dict[tuple[str, str], int] = field(default_factory=dict)  # (table, code) -> rows
    examples: dict[tuple[str, str], Quarantined] = field(default_factory=dict)
    drifted_wallets: list[dict] = field(default_factory=list)
    history: list[RunPoint] = field(default_factory=list)
    table_history: dict[str, list[tuple[datetime, dict]]] = field(default_factory=dict)
    read_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def table(self, name: str) -> TableState:
        return next(t for t in self.tables if t.name == name)

    @property
    def failed_checks(self) -> list[tuple[str, CheckState]]:
        return [(t.name, c) for t in self.tables for c in t.checks.values() if c.failed]

    def failed_by_severity(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for _, check in self.failed_checks:
            counts[check.severity] += 1
        return dict(sorted(counts.items(), key=lambda kv: kv[0] != "ERROR"))

    @property
    def quarantined_rows(self) -> int:
        return sum(self.quarantine.values())


def excerpt(value: str | None, width: int = EXCERPT) -> str:
    if value is None:
        return "NULL"
    text = value.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= width else text[: width - 1] + "…"


def _raw_value(table: Table | None, column: str | None, raw_row: dict) -> str | None:
    """The D1 value of the column a quarantine entry names (raw_row is keyed by D1's names)."""
    if column is None:
        return None
    key = column
    if table is not None:
        spec = next((c for c in table.columns if c.name == column), None)
        if spec is not None and spec.source_name:
            key = spec.source_name
    value = raw_row.get(key, raw_row.get(column))
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _has_bookkeeping(conn: psycopg.Connection) -> bool:
    found = conn.execute("SELECT to_regclass(%s)", [f"{BOOKKEEPING_SCHEMA}.sync_state"])
    return found.fetchone()[0] is not None


def open_quarantine(
    conn: psycopg.Connection,
    schema: Schema,
    table: str | None = None,
    reason: str | None = None,
) -> list[Quarantined]:
    """Open quarantine entries (all, or one table's, or one reason code's), table by table."""
    if not _has_bookkeeping(conn):
        return []
    where, params = ["resolved_at IS NULL"], []
    if table:
        where.append("source_table = %s")
        params.append(table)
    if reason:
        where.append("reason_code = %s")
        params.append(reason)
    rows = conn.execute(
        f"""SELECT source_table, source_pk, target_pk, column_name, reason_code, reason,
                   raw_row, first_seen_at, last_seen_at, run_id
            FROM {BOOKKEEPING_SCHEMA}.rejected_rows WHERE {" AND ".join(where)}
            ORDER BY source_table, reason_code, source_pk""",
        params,
    ).fetchall()
    specs = {t.name: t for t in schema.tables}
    return [
        Quarantined(
            table=r[0],
            source_pk=r[1],
            target_pk=r[2],
            column=r[3],
            code=r[4],
            reason=r[5],
            raw_value=_raw_value(specs.get(r[0]), r[3], r[6]),
            raw_row=r[6],
            first_seen_at=r[7],
            last_seen_at=r[8],
            run_id=r[9],
        )
        for r in rows
    ]


def _from_postgres(conn: psycopg.Connection, schema: Schema, state: TargetState) -> None:
    names = [t.name for t in state.tables]
    existing = {
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
            "AND c.relname = ANY(%s)",
            [names],
        )
    }
    for table in state.tables:
        if table.name in existing:
            table.exists = True
            count = conn.execute(f"SELECT count(*) FROM {q(table.name)}").fetchone()[0]
            table.target_rows = count
    if not state.bookkeeping:
        return
    synced = {
        r[0]: (r[1], r[2])
        for r in conn.execute(f"SELECT table_name, mode, synced_at FROM {SYNC_STATE}")
    }
    for table in state.tables:
        if table.name in synced:
            table.mode, table.synced_at = synced[table.name]
    entries = open_quarantine(conn, schema)
    for entry in entries:
        key = (entry.table, entry.code)
        state.quarantine[key] = state.quarantine.get(key, 0) + 1
        state.examples.setdefault(key, entry)
    per_table: dict[str, int] = defaultdict(int)
    for (table_name, _), rows in state.quarantine.items():
        per_table[table_name] += rows
    for table in state.tables:
        table.quarantined = per_table.get(table.name, 0)
    if {"user_wallet", "points_ledger"} <= existing:
        state.drifted_wallets = list(wallet_drift(conn).metadata["details"].value)


def _check_state(record, instance: DagsterInstance) -> CheckState:
    from dagster._core.storage.asset_check_execution_record import (
        AssetCheckExecutionRecordStatus as Status,
    )

    name = record.key.name
    at = datetime.fromtimestamp(
        record.event.timestamp if record.event else record.create_timestamp, UTC
    )
    if record.status is Status.PLANNED:
        run = instance.get_run_by_id(record.run_id)
        return CheckState(name, "not run" if run is None or run.is_finished else "running", at=at)
    evaluation = record.event.dagster_event.event_specific_data
    return CheckState(
        name,
        "passed" if evaluation.passed else "failed",
        severity=evaluation.severity.value,
        at=at,
        metadata={k: v.value for k, v in evaluation.metadata.items()},
    )


def _materialization(entry: EventLogEntry) -> dict:
    return {k: v.value for k, v in entry.asset_materialization.metadata.items()}


def _from_dagster(instance: DagsterInstance, schema: Schema, state: TargetState) -> None:
    keys = {t.name: target_key(t.name) for t in state.tables}
    latest = instance.get_latest_materialization_events(list(keys.values()))
    for table in state.tables:
        entry = latest.get(keys[table.name])
        if entry is not None:
            table.materialization = _materialization(entry)
            table.materialized_at = datetime.fromtimestamp(entry.timestamp, UTC)
            table.run_id = entry.run_id
    check_keys: list[AssetCheckKey] = [spec.key for spec in check_specs(schema)]
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(check_keys)
    by_table = {t.name: t for t in state.tables}
    for key in check_keys:
        table = by_table.get(key.asset_key.path[-1])
        if table is None:
            continue
        record = records.get(key)
        table.checks[key.name] = (
            _check_state(record, instance) if record else CheckState(key.name, "not run")
        )


def _history(instance: DagsterInstance, state: TargetState) -> None:
    """Past materializations of every table, and the runs that made them."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for table in state.tables:
        result = instance.fetch_materializations(target_key(table.name), limit=HISTORY)
        points = []
        for record in result.records:
            metadata = _materialization(record.event_log_entry)
            runs[record.run_id].append(metadata)
            points.append((datetime.fromtimestamp(record.timestamp, UTC), metadata))
        state.table_history[table.name] = sorted(points, key=lambda p: p[0])
    if not runs:
        return
    records = instance.get_run_records(RunsFilter(run_ids=list(runs)))
    for record in records:
        synced = runs[record.dagster_run.run_id]
        table_seconds = sum(float(m.get("seconds") or 0) for m in synced)
        started = record.start_time or record.create_timestamp.timestamp()
        seconds = (record.end_time - started) if record.end_time and record.start_time else None
        state.history.append(
            RunPoint(
                run_id=record.dagster_run.run_id,
                started=datetime.fromtimestamp(started, UTC),
                seconds=seconds if seconds is not None else table_seconds,
                table_seconds=table_seconds,
                tables=len(synced),
                mode="full" if any(m.get("mode") == "full" for m in synced) else "incremental",
                status=record.dagster_run.status.value,
            )
        )
    state.history.sort(key=lambda p: p.started)


def read_state(
    conn: psycopg.Connection,
    instance: DagsterInstance | None,
    schema: Schema,
    history: bool = False,
) -> TargetState:
    """The target's state; Dagster's part only when an instance is given (``history``: with
    past runs, for the report's charts)."""
    state = TargetState(
        tables=[TableState(t.name, t.section) for t in schema.tables],
        bookkeeping=_has_bookkeeping(conn),
    )
    _from_postgres(conn, schema, state)
    if instance is not None:
        _from_dagster(instance, schema, state)
        if history:
            _history(instance, state)
    return state
