"""The table checks as Dagster sees them: their specs on each ``pg/`` asset, the runner that
runs them beside the loads, and the drift checks of the ``d1/`` source assets.

The table checks are ``check_specs`` of the table step (assets.py), not a step of their own:
each table's checks run as soon as the table is committed, on a second connection in a worker
thread, while the next tables load. A table's state is final once it is committed (only its
parents' deletes cascade into it, and parents load first), so checking it early sees what a
check after the whole run would see; on two cores the checks then cost almost nothing extra.
Each check still shows on its own asset in the UI and can be run alone. What each check
computes lives in verify/checks.py.
"""

import queue
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    MetadataValue,
    multi_asset_check,
)

from d1_migration.defs.keys import source_key, target_key
from d1_migration.defs.resources import D1Source
from d1_migration.spec.model import Schema, Table
from d1_migration.verify.checks import (
    MATCHES_D1,
    ORPHANED_FKS,
    QUARANTINE,
    ROW_PARITY,
    SCHEMA_MATCHES,
    WALLET,
    WALLET_TABLES,
    ContentCheck,
    table_check_results,
    wallet_drift,
)
from d1_migration.verify.drift import Drift, schema_drift


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
    loaded by this run), in worker threads, one per connection of ``conns``. Results come back
    in the order the checks started; a table that failed to sync gets none.

    Two connections, not one: a re-sync's loads take seconds and its checks (matches_d1
    converting D1 again) the rest, one table after another; with two, the two cores share
    them (Postgres's side of one check beside the client's side of another)."""

    def __init__(
        self,
        conns: list[psycopg.Connection],
        selected: set[AssetCheckKey],
        content: ContentCheck,
    ) -> None:
        self._selected, self._content = selected, content
        self._idle: queue.SimpleQueue[psycopg.Connection] = queue.SimpleQueue()
        for conn in conns:
            self._idle.put(conn)
        self._worker = ThreadPoolExecutor(max_workers=len(conns), thread_name_prefix="d1m-checks")
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
                self._started.append(self._worker.submit(self._run, pending.run))

    def _run(
        self, run: Callable[[psycopg.Connection], Iterator[AssetCheckResult]]
    ) -> list[AssetCheckResult]:
        conn = self._idle.get()  # as many connections as workers: one is always free
        try:
            return list(run(conn))
        finally:
            self._idle.put(conn)

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


SOURCE_CHECK_DESCRIPTION = "D1's columns and declared types are the ones the spec reads"


def _source_check_metadata(table: Table, drift: Drift) -> dict:
    unknown = [p for p in drift.problems if p.startswith("unknown table")]
    return {
        "problems": MetadataValue.json(drift.by_table.get(table.name, [])),
        "unknown_tables_in_d1": MetadataValue.json(unknown),
        "skipped_internal_tables": MetadataValue.json(drift.skipped),
    }


def source_check_evaluations(tables: Iterable[Table], drift: Drift) -> list[AssetCheckEvaluation]:
    """The ``schema_matches_spec`` results of the D1 sources of ``tables``, from the drift check
    the table step makes before any data moves: logged by that step, so that every sync (
    Materialize all, the jobs, the schedule) leaves each source's check run, although the UI's
    Materialize all selects only the checks of the ``pg/`` assets it materializes."""
    return [
        AssetCheckEvaluation(
            asset_key=source_key(table.name),
            check_name=SCHEMA_MATCHES,
            passed=not drift.by_table.get(table.name),
            metadata=_source_check_metadata(table, drift),
            severity=AssetCheckSeverity.ERROR,
            description=None
            if not drift.by_table.get(table.name)
            else "; ".join(drift.by_table[table.name]),
        )
        for table in tables
    ]


def build_source_checks(schema: Schema) -> AssetChecksDefinition:
    """Schema drift on each D1 source asset, to run from the UI on its own. (The table step
    checks the same before any data moves, however the run was started, and records these
    checks' results: source_check_evaluations.)"""
    specs = [
        AssetCheckSpec(
            SCHEMA_MATCHES,
            asset=source_key(t.name),
            blocking=True,
            description=SOURCE_CHECK_DESCRIPTION,
        )
        for t in schema.tables
    ]

    @multi_asset_check(specs=specs, can_subset=True, name="source_schema_checks")
    def source_schema_checks(
        context: AssetCheckExecutionContext, d1: D1Source
    ) -> Iterator[AssetCheckResult]:
        with d1.snapshot() as snapshot:
            drift = schema_drift(snapshot, schema, tuple(d1.skip_tables))
        for table in schema.tables:
            key = source_key(table.name)
            if AssetCheckKey(key, SCHEMA_MATCHES) not in context.selected_asset_check_keys:
                continue
            problems = drift.by_table.get(table.name, [])
            yield AssetCheckResult(
                asset_key=key,
                check_name=SCHEMA_MATCHES,
                passed=not problems,
                description="; ".join(problems) or None,
                metadata=_source_check_metadata(table, drift),
            )

    return source_schema_checks
