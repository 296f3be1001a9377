"""The shadow: a local SQLite copy of every D1 row as it was last loaded into Postgres.

Change detection compares the source with it inside SQLite, value by value (``IS NOT`` tells
an integer 1 from the text '1'), so a re-sync finds inserts, updates and deletes in any table
without trusting timestamps and without bringing unchanged rows into Python. The shadow is
written only after Postgres committed the table, from the same source snapshot; if the process
dies in between, the next sync re-applies those rows, which changes nothing.

A shadow belongs to one target database: its file is named after the target's sync token, so
a new or rebuilt target starts with no shadow, which makes its first sync a full one.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from d1_migration.ddl import q
from d1_migration.source import CHOSEN_ROWS, Snapshot, source_pk_text
from d1_migration.spec import Table

ALIAS = "shadow"


@dataclass
class Changes:
    """Rows to process for one table, found by comparing the source with the shadow."""

    rowids: list[int] = field(default_factory=list)  # new or changed, by source rowid
    source_pks: list[str] = field(default_factory=list)  # their keys (source_pk_text)
    deleted: list[list] = field(default_factory=list)  # key values of rows gone from D1


class Shadow:
    """The shadow database, attached to a snapshot's connection."""

    def __init__(self, snapshot: Snapshot, path: Path) -> None:
        self.snapshot = snapshot
        self.conn: sqlite3.Connection = snapshot.connection
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn.execute(f"ATTACH DATABASE ? AS {ALIAS}", [f"{path.resolve().as_uri()}?mode=rwc"])
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {ALIAS}._meta (table_name TEXT PRIMARY KEY, "
            "columns TEXT NOT NULL)"
        )

    def _columns(self, table: Table) -> list[str]:
        rows = self.conn.execute(f"PRAGMA main.table_info({q(table.name)})")
        return [r[1].decode() for r in rows]

    def usable(self, table: Table) -> bool:
        """Whether a shadow of ``table`` exists, taken with the columns D1 has now."""
        row = self.conn.execute(
            f"SELECT columns FROM {ALIAS}._meta WHERE table_name = ?", [table.name]
        ).fetchone()
        return row is not None and row[0].decode() == json.dumps(self._columns(table))

    def changes(self, table: Table) -> Changes:
        cols, pk = self._columns(table), table.source_pk
        on = " AND ".join(f"s.{q(k)} = m.{q(k)}" for k in pk)
        differs = " OR ".join(f"m.{q(c)} IS NOT s.{q(c)}" for c in cols)
        changes = Changes()
        cursor = self.conn.execute(
            f"""SELECT m.rowid, {", ".join(f"m.{q(k)}" for k in pk)}
                FROM main.{q(table.name)} m LEFT JOIN {ALIAS}.{q(table.name)} s ON {on}
                WHERE s.rowid IS NULL OR {differs}"""
        )
        for rowid, *keys in cursor:
            changes.rowids.append(rowid)
            changes.source_pks.append(source_pk_text(_decoded(keys), rowid))
        gone = self.conn.execute(
            f"""SELECT {", ".join(f"s.{q(k)}" for k in pk)} FROM {ALIAS}.{q(table.name)} s
                WHERE NOT EXISTS (SELECT 1 FROM main.{q(table.name)} m WHERE {on})"""
        )
        changes.deleted = [_decoded(list(keys)) for keys in gone]
        return changes

    def rowids_of(self, table: Table, source_pks: list[str]) -> list[int]:
        """Current rowids of rows named by source_pk_text (quarantined rows to retry)."""
        rowids = []
        for source_pk in source_pks:
            if source_pk.startswith("rowid:"):
                rowids.append(int(source_pk[6:]))
                continue
            keys = json.loads(source_pk) if len(table.source_pk) > 1 else [source_pk]
            where = " AND ".join(f"{q(k)} = ?" for k in table.source_pk)
            found = self.conn.execute(
                f"SELECT rowid FROM main.{q(table.name)} WHERE {where}", keys
            ).fetchone()
            if found:
                rowids.append(found[0])
        return rowids

    def replace_all(self, table: Table) -> None:
        """After a full load: the shadow becomes the whole source table."""
        cols = self._columns(table)
        quoted = ", ".join(map(q, cols))
        self.conn.execute(f"DROP TABLE IF EXISTS {ALIAS}.{q(table.name)}")
        self.conn.execute(f"CREATE TABLE {ALIAS}.{q(table.name)} ({quoted})")  # no affinity
        self.conn.execute(
            f"CREATE UNIQUE INDEX {ALIAS}.{q(table.name + '__key')} ON {q(table.name)} "
            f"({', '.join(map(q, table.source_pk))})"
        )
        self.conn.execute(
            f"INSERT INTO {ALIAS}.{q(table.name)} SELECT {quoted} FROM main.{q(table.name)} "
            f"WHERE {' AND '.join(f'{q(k)} IS NOT NULL' for k in table.source_pk)}"
        )
        self.conn.execute(
            f"INSERT OR REPLACE INTO {ALIAS}._meta VALUES (?, ?)",
            [table.name, json.dumps(cols)],
        )

    def apply(self, table: Table, rowids: list[int], deleted: list[list]) -> None:
        """After an incremental load: record the processed rows as they are in the snapshot."""
        quoted = ", ".join(map(q, self._columns(table)))
        where = " AND ".join(f"{q(k)} = ?" for k in table.source_pk)
        self.conn.executemany(f"DELETE FROM {ALIAS}.{q(table.name)} WHERE {where}", deleted)
        self.snapshot.choose(rowids)
        self.conn.execute(
            f"""INSERT OR REPLACE INTO {ALIAS}.{q(table.name)} SELECT {quoted}
                FROM main.{q(table.name)} WHERE rowid IN (SELECT id FROM {CHOSEN_ROWS})
                AND {" AND ".join(f"{q(k)} IS NOT NULL" for k in table.source_pk)}"""
        )

    def commit(self) -> None:
        """Persist the shadow; this ends the snapshot's read transaction, so start a new one."""
        self.conn.execute("COMMIT")
        self.conn.execute("BEGIN")


def _decoded(keys: list) -> list:
    return [k.decode() if isinstance(k, bytes) else k for k in keys]
