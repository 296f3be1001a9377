"""Asset checks: the map's verification queries, per table, plus wallet vs ledger.

The per-table checks live in one subsettable ``@multi_asset_check`` so that 66 tables cost one
step rather than ~200 (step overhead dominates on a small machine); each check still shows on
its own asset in the UI and can be run alone.
"""

from collections.abc import Callable, Iterator

import psycopg
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    MetadataValue,
    asset_check,
    multi_asset_check,
)

from d1_migration.assets import source_key, target_key
from d1_migration.ddl import BOOKKEEPING_SCHEMA, q
from d1_migration.drift import schema_drift
from d1_migration.resources import D1Source, PostgresTarget
from d1_migration.source import Snapshot
from d1_migration.spec import Schema, Table

SCHEMA_MATCHES = "schema_matches_spec"
ROW_PARITY = "row_parity"
ORPHANED_FKS = "no_orphaned_fks"
QUARANTINE = "quarantine"
SAMPLE = 20


def row_parity(conn: psycopg.Connection, snapshot: Snapshot, table: Table) -> AssetCheckResult:
    """Every source row is in the target or in quarantine: source = target + quarantined."""
    source = snapshot.count(table)
    target = conn.execute(f"SELECT count(*) FROM {q(table.name)}").fetchone()[0]
    quarantined = conn.execute(
        f"SELECT count(*) FROM {BOOKKEEPING_SCHEMA}.rejected_rows "
        "WHERE source_table = %s AND resolved_at IS NULL",
        [table.name],
    ).fetchone()[0]
    return AssetCheckResult(
        check_name=ROW_PARITY,
        asset_key=target_key(table.name),
        passed=source == target + quarantined,
        metadata={
            "source_rows": source,
            "target_rows": target,
            "quarantined_rows": quarantined,
            "unaccounted_rows": source - target - quarantined,
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


def table_check_results(
    conn: psycopg.Connection,
    snapshot: Snapshot,
    table: Table,
    wanted: Callable[[str], bool] = lambda name: True,
) -> Iterator[AssetCheckResult]:
    """A table's checks (those ``wanted`` by name): for the asset checks and the cutover gate."""
    if wanted(ROW_PARITY):
        yield row_parity(conn, snapshot, table)
    if table.foreign_keys and wanted(ORPHANED_FKS):
        yield orphaned_fks(conn, table)
    if wanted(QUARANTINE):
        yield quarantine_summary(conn, table)


def _specs(schema: Schema) -> list[AssetCheckSpec]:
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
    return specs


def build_table_checks(schema: Schema) -> AssetChecksDefinition:
    @multi_asset_check(specs=_specs(schema), can_subset=True, name="table_checks")
    def table_checks(
        context: AssetCheckExecutionContext, d1: D1Source, postgres: PostgresTarget
    ) -> Iterator[AssetCheckResult]:
        selected = context.selected_asset_check_keys
        with postgres.connect() as conn, d1.snapshot() as snapshot:
            for table in schema.tables:
                key = target_key(table.name)
                yield from table_check_results(
                    conn,
                    snapshot,
                    table,
                    lambda name, key=key: AssetCheckKey(key, name) in selected,
                )

    return table_checks


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


@asset_check(
    asset=target_key("user_wallet"),
    additional_deps=[target_key("points_ledger")],
    name="wallet_matches_ledger",
    description="Each wallet's coins and xp equal the sum of its user's ledger rows (the map's "
    "consistency query).",
)
def wallet_matches_ledger(postgres: PostgresTarget) -> AssetCheckResult:
    with postgres.connect() as conn:
        return wallet_drift(conn)


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
        check_name="wallet_matches_ledger",
        passed=not drifted,
        metadata={
            "mismatching_users": len(drifted),
            "mismatching_user_ids": MetadataValue.json([d["user_id"] for d in drifted]),
            "details": MetadataValue.json(drifted[:200]),
        },
    )
