"""What each check computes: the map's verification queries per table (row parity, orphaned
FKs, quarantine), the content comparison with D1 (matches_d1) and wallet vs ledger, as
functions of a Postgres connection returning Dagster check results. The asset checks
(defs/asset_checks.py) and the cutover gate (cutover.py) both call them.
"""

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    MetadataValue,
)

from d1_migration.defs.keys import target_key
from d1_migration.source.snapshot import SqliteSource
from d1_migration.spec.model import Schema, Table, q
from d1_migration.target.ddl import BOOKKEEPING_SCHEMA
from d1_migration.verify.content import last_verified_whole, next_slice, record, verify_table

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
    """Rows held back from the target, by reason, with the first of them as a Markdown table
    (what the UI shows); a warning, not a failure of the copy."""
    rows = conn.execute(
        f"""SELECT reason_code, count(*), (array_agg(source_pk ORDER BY source_pk))[1:5]
            FROM {BOOKKEEPING_SCHEMA}.rejected_rows
            WHERE source_table = %s AND resolved_at IS NULL GROUP BY reason_code ORDER BY 1""",
        [table.name],
    ).fetchall()
    total = sum(r[1] for r in rows)
    metadata = {
        "quarantined_rows": total,
        "by_reason": MetadataValue.json({r[0]: r[1] for r in rows}),
        "sample_source_pks": MetadataValue.json({r[0]: r[2] for r in rows}),
    }
    if total:
        metadata["rows"] = MetadataValue.md(quarantine_markdown(conn, table, total))
    metadata["inspect_with"] = MetadataValue.md(f"`{_open_rows_sql(table)}`")
    return AssetCheckResult(
        check_name=QUARANTINE,
        asset_key=target_key(table.name),
        passed=total == 0,
        severity=AssetCheckSeverity.WARN,
        description=None
        if total == 0
        else f"{total} row(s) held back: "
        + ", ".join(f"{r[1]} {r[0]}" for r in sorted(rows, key=lambda r: -r[1])),
        metadata=metadata,
    )


QUARANTINE_ROWS_SHOWN = 50
EXCERPT_CHARS = 80


def _open_rows_sql(table: Table) -> str:
    return (
        f"SELECT * FROM {BOOKKEEPING_SCHEMA}.rejected_rows WHERE source_table = "
        f"'{table.name}' AND resolved_at IS NULL"
    )


def raw_excerpt(table: Table, column_name: str | None, raw_row: dict) -> str:
    """The D1 value a quarantine entry is about (the whole raw row when it names no column),
    as at most EXCERPT_CHARS characters. raw_row holds secret columns only as
    ``{"$sha256": ...}`` (source/snapshot.py), so a raw session token cannot appear."""
    names = {c.name: c.source_name for c in table.columns}
    source = names.get(column_name) if column_name else None
    if source and source in raw_row:
        value = raw_row[source]
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    else:
        text = json.dumps(raw_row, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def _cell(text: object) -> str:
    """Text safe inside a Markdown table cell: one line, no column break, no code span."""
    flat = " ".join(str(text).split())
    return flat.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`") or " "


def quarantine_markdown(conn: psycopg.Connection, table: Table, total: int) -> str:
    """The open quarantine entries of ``table`` (the first QUARANTINE_ROWS_SHOWN by D1 key) as
    a Markdown table: Postgres key, D1 key, column, reason code, reason, the raw value."""
    shown = conn.execute(
        f"""SELECT target_pk, source_pk, column_name, reason_code, reason, raw_row
            FROM {BOOKKEEPING_SCHEMA}.rejected_rows
            WHERE source_table = %s AND resolved_at IS NULL
            ORDER BY source_pk LIMIT %s""",
        [table.name, QUARANTINE_ROWS_SHOWN],
    ).fetchall()
    pk = ", ".join(table.primary_key)
    lines = [
        f"| {pk} (Postgres) | D1 {', '.join(table.source_pk)} | column | reason code | reason "
        "| raw value |",
        "|---|---|---|---|---|---|",
    ]
    for target_pk, source_pk, column, code, reason, raw_row in shown:
        cells = (
            target_pk or "(none)",
            source_pk,
            column or "(row)",
            code,
            reason,
            raw_excerpt(table, column, raw_row),
        )
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if total > len(shown):
        lines.append("")
        lines.append(f"… and {total - len(shown)} more: `{_open_rows_sql(table)}`")
    return "\n".join(lines)


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
