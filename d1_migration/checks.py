"""Asset checks: the map's verification queries, per table, plus wallet vs ledger.

The table checks are ``check_specs`` of the table step (assets.py), not a step of their own:
each table's checks run as soon as the table is committed, on a second connection in a worker
thread, while the next tables load. A table's state is final once it is committed (only its
parents' deletes cascade into it, and parents load first), so checking it early sees what a
check after the whole run would see; on two cores the checks then cost almost nothing extra.
Each check still shows on its own asset in the UI and can be run alone.
"""

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    MetadataValue,
    multi_asset_check,
)

from d1_migration.drift import schema_drift
from d1_migration.keys import source_key, target_key
from d1_migration.resources import D1Source
from d1_migration.source.snapshot import SqliteSource
from d1_migration.spec.model import Schema, Table, q
from d1_migration.target.ddl import BOOKKEEPING_SCHEMA
from d1_migration.verify import last_verified_whole, next_slice, record, verify_table

SCHEMA_MATCHES = "schema_matches_spec"
ROW_PARITY = "row_parity"
ORPHANED_FKS = "no_orphaned_fks"
QUARANTINE = "quarantine"
MATCHES_D1 = "matches_d1"
WALLET = "wallet_matches_ledger"
WALLET_TABLES = ("user_wallet", "points_ledger")
SAMPLE = 20


def row_parity(conn: psycopg.Connection, table: Table, source_rows: int) -> AssetCheckResult:
    """Every source row is in the target or in quarantine: source = target + quarantined.
    ``source_rows`` is counted in the snapshot the table was loaded from."""
    target = conn.execute(f"SELECT count(*) FROM {q(table.name)}").fetchone()[0]
    quarantined = conn.execute(
        f"SELECT count(*) FROM {BOOKKEEPING_SCHEMA}.rejected_rows "
        "WHERE source_table = %s AND resolved_at IS NULL",
        [table.name],
    ).fetchone()[0]
    return AssetCheckResult(
        check_name=ROW_PARITY,
        asset_key=target_key(table.name),
        passed=source_rows == target + quarantined,
        metadata={
            "source_rows": source_rows,
            "target_rows": target,
            "quarantined_rows": quarantined,
            "unaccounted_rows": source_rows - target - quarantined,
        },
    )


def orphaned_fks(conn: psycopg.Connection, table: Table) -> AssetCheckResult:
    """The map's LEFT JOIN query, for every FK of the table."""
    pk = q(table.primary_key[0])
    counts: dict[str, int] = {}
    samples: dict[str, list[str]] = {}
    for column in table.foreign_keys:
        parent, parent_column = column.parent
        rows = conn.execute(
            f"""SELECT c.{pk}::text FROM {q(table.name)} c
                LEFT JOIN {q(parent)} p ON c.{q(column.name)} = p.{q(parent_column)}
                WHERE c.{q(column.name)} IS NOT NULL AND p.{q(parent_column)} IS NULL"""
        ).fetchall()
        counts[f"{column.name} -> {parent}.{parent_column}"] = len(rows)
        if rows:
            samples[column.name] = [r[0] for r in rows[:SAMPLE]]
    return AssetCheckResult(
        check_name=ORPHANED_FKS,
        asset_key=target_key(table.name),
        passed=not any(counts.values()),
        metadata={
            "orphans_by_fk": MetadataValue.json(counts),
            "sample_orphan_pks": MetadataValue.json(samples),
        },
    )


def quarantine_summary(conn: psycopg.Connection, table: Table) -> AssetCheckResult:
    """Rows held back from the target, by reason; a warning, not a failure of the copy."""
    rows = conn.execute(
        f"""SELECT reason_code, count(*), (array_agg(source_pk ORDER BY source_pk))[1:5]
            FROM {BOOKKEEPING_SCHEMA}.rejected_rows
            WHERE source_table = %s AND resolved_at IS NULL GROUP BY reason_code ORDER BY 1""",
        [table.name],
    ).fetchall()
    total = sum(r[1] for r in rows)
    return AssetCheckResult(
        check_name=QUARANTINE,
        asset_key=target_key(table.name),
        passed=total == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "quarantined_rows": total,
            "by_reason": MetadataValue.json({r[0]: r[1] for r in rows}),
            "sample_source_pks": MetadataValue.json({r[0]: r[2] for r in rows}),
            "inspect_with": MetadataValue.md(
                f"`SELECT * FROM {BOOKKEEPING_SCHEMA}.rejected_rows WHERE source_table = "
                f"'{table.name}' AND resolved_at IS NULL`"
            ),
        },
    )


@dataclass(frozen=True)
class ContentCheck:
    """How ``matches_d1`` verifies: against which D1 file, and in how many rotating slices
    (1: the whole table every time; the cutover gate and full rebuilds use 1)."""

    source_path: Path
    schema: Schema
    slices: int = 1

    def result(self, conn: psycopg.Connection, table: Table) -> AssetCheckResult:
        """Reads D1 in a snapshot of its own (this runs beside the loads, in another thread)."""
        part = next_slice(conn, table.name, self.slices)
        with SqliteSource(self.source_path).snapshot() as snapshot:
            found = verify_table(conn, snapshot, table, self.schema, part)
        record(conn, found, self.slices)
        return AssetCheckResult(
            check_name=MATCHES_D1,
            asset_key=target_key(table.name),
            passed=found.passed,
            description=None
            if found.passed
            else f"{found.differences} difference(s) from a fresh migration of D1 ({found.part})",
            metadata={
                "verified": str(found.part),
                "compared_d1_rows": found.compared_rows,
                "missing_in_postgres": found.missing,
                "extra_in_postgres": found.extra,
                "differing_rows": found.differing,
                "quarantine_differences": found.quarantine_differences,
                "id_map_differences": found.id_map_differences,
                "differences": MetadataValue.json(found.samples),
                "last_verified_whole_at": last_verified_whole(conn, table.name, self.slices)
                or "not yet",
                "seconds": found.seconds,
            },
        )


def table_check_results(
    conn: psycopg.Connection,
    table: Table,
    source_rows: int,
    content: ContentCheck | None,
    wanted: Callable[[str], bool] = lambda name: True,
) -> Iterator[AssetCheckResult]:
    """A table's checks (those ``wanted`` by name): for the asset checks and the cutover gate."""
    if wanted(ROW_PARITY):
        yield row_parity(conn, table, source_rows)
    if table.foreign_keys and wanted(ORPHANED_FKS):
        yield orphaned_fks(conn, table)
    if wanted(QUARANTINE):
        yield quarantine_summary(conn, table)
    if content is not None and wanted(MATCHES_D1):
        yield content.result(conn, table)


def check_specs(schema: Schema) -> list[AssetCheckSpec]:
    specs = []
    for table in schema.tables:
        key = target_key(table.name)
        specs.append(
            AssetCheckSpec(
                ROW_PARITY, asset=key, description="D1 rows = Postgres rows + quarantined rows"
            )
        )
        if table.foreign_keys:
            specs.append(
                AssetCheckSpec(
                    ORPHANED_FKS, asset=key, description="No FK value without its parent row"
                )
            )
        specs.append(
            AssetCheckSpec(
                QUARANTINE, asset=key, description="Rows held back in d1_migration.rejected_rows"
            )
        )
        specs.append(
            AssetCheckSpec(
                MATCHES_D1,
                asset=key,
                description="Every row, value and quarantine entry equals what a fresh "
                "migration of D1 gives (a rotating slice per sync; whole at cutover and in "
                "full_rebuild)",
            )
        )
    specs.append(
        AssetCheckSpec(
            WALLET,
            asset=target_key(WALLET_TABLES[0]),
            additional_deps=[target_key(WALLET_TABLES[1])],
            description="Each wallet's coins and xp equal the sum of its user's ledger rows "
            "(the map's consistency query).",
        )
    )
    return specs


@dataclass
class _Pending:
    waits_for: set[str]  # tables not yet settled
    run: Callable[[psycopg.Connection], Iterator[AssetCheckResult]]


class CheckRunner:
    """Runs the selected checks of each table once the table is settled (committed, or not
    loaded by this run), one at a time on ``conn`` in a worker thread. Results come back in
    the order the checks started; a table that failed to sync gets none."""

    def __init__(
        self, conn: psycopg.Connection, selected: set[AssetCheckKey], content: ContentCheck
    ) -> None:
        self._conn, self._selected, self._content = conn, selected, content
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="d1m-checks")
        self._started: list[Future] = []
        self._pending: list[_Pending] = []
        self.errors: list[str] = []
        if AssetCheckKey(target_key(WALLET_TABLES[0]), WALLET) in selected:
            self._pending.append(_Pending(set(WALLET_TABLES), lambda c: iter([wallet_drift(c)])))

    def wants(self, table: Table) -> bool:
        """Whether any check of ``table`` is selected (then settled() needs its source rows)."""
        return any(k.asset_key == target_key(table.name) for k in self._selected)

    def settled(self, table: Table, source_rows: int | None) -> None:
        """``table`` will not change any more in this run; ``source_rows`` (D1's count, in the
        snapshot it was loaded from) is needed only if wants(table)."""
        names = {k.name for k in self._selected if k.asset_key == target_key(table.name)}
        if names:
            self._pending.append(
                _Pending(
                    {table.name},
                    lambda c: table_check_results(
                        c, table, source_rows, self._content, names.__contains__
                    ),
                )
            )
        for pending in list(self._pending):
            pending.waits_for.discard(table.name)
            if not pending.waits_for:
                self._pending.remove(pending)
                self._started.append(
                    self._worker.submit(lambda run=pending.run: list(run(self._conn)))
                )

    def failed(self, table: Table) -> None:
        """``table`` did not sync: its checks, and those reading it, do not run."""
        self._pending = [p for p in self._pending if table.name not in p.waits_for]

    def finished(self, wait: bool = False) -> Iterator[AssetCheckResult]:
        """Results of the checks done so far (all of them with ``wait``), oldest first. A check
        that raised is kept in ``errors``: the tables still load, and the step fails at the end."""
        while self._started and (wait or self._started[0].done()):
            try:
                yield from self._started.pop(0).result()
            except Exception as error:  # reported by the step (see errors)
                self.errors.append(f"{type(error).__name__}: {error}")

    def close(self) -> None:
        self._worker.shutdown(cancel_futures=True)


def build_source_checks(schema: Schema) -> AssetChecksDefinition:
    """Schema drift on each D1 source asset, to run from the UI on its own. (The load step
    checks the same before any data moves, however the run was started.)"""
    specs = [
        AssetCheckSpec(
            SCHEMA_MATCHES,
            asset=source_key(t.name),
            blocking=True,
            description="D1's columns and declared types are the ones the spec reads",
        )
        for t in schema.tables
    ]

    @multi_asset_check(specs=specs, can_subset=True, name="source_schema_checks")
    def source_schema_checks(
        context: AssetCheckExecutionContext, d1: D1Source
    ) -> Iterator[AssetCheckResult]:
        with d1.snapshot() as snapshot:
            drift = schema_drift(snapshot, schema, tuple(d1.skip_tables))
        unknown = [p for p in drift.problems if p.startswith("unknown table")]
        for table in schema.tables:
            key = source_key(table.name)
            if AssetCheckKey(key, SCHEMA_MATCHES) not in context.selected_asset_check_keys:
                continue
            problems = drift.by_table.get(table.name, [])
            yield AssetCheckResult(
                asset_key=key,
                check_name=SCHEMA_MATCHES,
                passed=not problems,
                metadata={
                    "problems": MetadataValue.json(problems),
                    "unknown_tables_in_d1": MetadataValue.json(unknown),
                    "skipped_internal_tables": MetadataValue.json(drift.skipped),
                },
            )

    return source_schema_checks


WALLET_QUERY = """
SELECT w.user_id, m.source_id, w.coins, COALESCE(SUM(l.coins), 0), w.xp, COALESCE(SUM(l.xp), 0)
FROM user_wallet w
LEFT JOIN points_ledger l ON w.user_id = l.user_id
LEFT JOIN d1_migration.id_map m ON m.source_table = 'users' AND m.target_id = w.user_id
GROUP BY w.user_id, m.source_id, w.coins, w.xp
HAVING w.coins != COALESCE(SUM(l.coins), 0) OR w.xp != COALESCE(SUM(l.xp), 0)
ORDER BY w.user_id
"""


def wallet_drift(conn: psycopg.Connection) -> AssetCheckResult:
    rows = conn.execute(WALLET_QUERY).fetchall()
    drifted = [
        {
            "user_id": str(r[0]),
            "d1_user_id": r[1] or str(r[0]),
            "wallet_coins": r[2],
            "ledger_coins": r[3],
            "wallet_xp": r[4],
            "ledger_xp": r[5],
        }
        for r in rows
    ]
    return AssetCheckResult(
        asset_key=target_key("user_wallet"),
        check_name=WALLET,
        passed=not drifted,
        metadata={
            "mismatching_users": len(drifted),
            "mismatching_user_ids": MetadataValue.json([d["user_id"] for d in drifted]),
            "details": MetadataValue.json(drifted[:200]),
        },
    )
