"""Loading one table: stage, quarantine what Postgres would refuse, merge, all in one transaction.

Converted batches are COPYed (CSV written by Arrow) into a temporary staging table. The rules
that need the whole table or other tables (CHECK constraints, UNIQUE keys, FKs) are evaluated
there, in SQL generated from the same spec as the DDL, and failing rows move to quarantine.
The survivors are merged into the target: rows gone from D1 are deleted, new rows inserted,
changed rows updated. A merge rather than TRUNCATE + reload, because TRUNCATE/DELETE of a parent
would cascade through its children; and a merge makes a re-run on the same source a no-op.

An incremental load runs the same steps on a scope: the rows the shadow (sync/shadow.py) finds new,
changed or deleted, plus the rows in quarantine when the table or an ancestor changed since the
table's last sync. Its result must equal a full load's, so rows the changes can reach join the
scope (rows sharing a UNIQUE value with a scoped row, rows referring to one through the table's
own FKs), and where that cannot be done (a key held by a target row with no source row) the load
falls back to a full one.

Rows an ancestor's sync removed from Postgres reach descendants through ON DELETE CASCADE and
SET NULL, outside the descendants' scopes. Where D1 cascaded too, each descendant's shadow
comparison sees those rows as deleted; the rest (a parent quarantined now, or deleted in D1
without D1 cascading) must be judged again, so before a scoped merge deletes rows it records
which rows of which tables Postgres's ON DELETE is about to change (record_cascade: the same
closure Postgres follows, found through the FK columns), and each of those tables takes them
into its next scope. Only a removal that was not recorded (a full pass removed rows) sends the
descendants through a full pass.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg.types.json import Jsonb

from d1_migration.source.snapshot import ROWID, Blocks, Snapshot, source_pk_text
from d1_migration.spec.model import Column, Kind, Schema, Table, q
from d1_migration.sync.shadow import Changes, Shadow
from d1_migration.target.binary import BinaryRows
from d1_migration.target.ddl import BOOKKEEPING_SCHEMA, SYNC_STATE, create_index_sql, load_order
from d1_migration.transforms import SOURCE_ID, SOURCE_TEXT, Reject, convert_batch, uuid_for

if TYPE_CHECKING:
    from d1_migration.target.first_load import Prefetch

BATCH_ROWS = 50_000
REJECTED = f"{BOOKKEEPING_SCHEMA}.rejected_rows"
ID_MAP = f"{BOOKKEEPING_SCHEMA}.id_map"
REF_MAP = f"{BOOKKEEPING_SCHEMA}.ref_map"
CASCADED = f"{BOOKKEEPING_SCHEMA}.cascaded_rows"  # see record_cascade
ON_DELETE_ACTIONS = ("CASCADE", "SET NULL")  # what ON DELETE does to other rows


@dataclass
class TableResult:
    table: str
    source_rows: int
    quarantined: int
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    remapped_ids: int = 0
    mode: str = "full"
    considered: int = 0  # source rows converted (all of them in a full load)
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)
    shadow_note: str = ""  # the shadow was behind Postgres, or could not record this sync


def _csv(rows: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pacsv.write_csv(rows, sink, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return sink.getvalue().to_pybytes()


class TableLoad:
    """The load of one table inside one open transaction."""

    def __init__(
        self, conn: psycopg.Connection, table: Table, schema: Schema, scoped: bool = False
    ) -> None:
        self.conn, self.table, self.schema, self.scoped = conn, table, schema, scoped
        self.stage = q(f"_stage_{table.name}")
        self.touched = q(f"_touched_{table.name}")
        self.columns = [c for c in table.columns if not c.added]
        self.rejects: list[Reject] = []
        self.considered = 0
        self.scope_pks: set[str] = set()  # source rows a scoped load covers (source_pk_text)
        self.maps_ids = table.column(table.primary_key[0]).kind is Kind.ID
        self.cascade_recorded = False  # a scoped merge's removals were followed (record_cascade)
        bookkeeping = [SOURCE_ID] if self.maps_ids else []
        bookkeeping += [SOURCE_TEXT + c.name for c in table.unlinked_ids]
        self.binary = BinaryRows.of(self.columns, [ROWID, *bookkeeping])

    def create_stage(self) -> None:
        cols = [f"{q(c.name)} {c.pg_type}" for c in self.columns]
        cols += [f"{ROWID} BIGINT"] + ([f"{SOURCE_ID} TEXT"] if self.maps_ids else [])
        cols += [f"{q(SOURCE_TEXT + c.name)} TEXT" for c in self.table.unlinked_ids]
        self.conn.execute(f"CREATE TEMP TABLE {self.stage} ({', '.join(cols)}) ON COMMIT DROP")
        if self.scoped:  # target rows this load replaces (see _settle_touched)
            keys = [f"{q(k)} {self.table.column(k).pg_type}" for k in self.table.primary_key]
            self.conn.execute(
                f"CREATE TEMP TABLE {self.touched} ({', '.join(keys)}, _src TEXT) ON COMMIT DROP"
            )

    def stage_rows(
        self, snapshot: Snapshot, batch_rows: int, rowids: list[int] | Blocks | None = None
    ) -> None:
        """Convert and stage the table, or only ``rowids`` of it. The temporary tables are
        analyzed afterwards: without statistics Postgres plans a scoped load's few staged rows
        as a thousand and hash-joins them against the whole target. Only the columns the
        stage is joined or grouped on (_joined_columns) are analyzed: a rule's filter on another
        column scans the stage whatever its statistics say, and those columns (text, JSON)
        cost most of an ANALYZE."""
        for batch in snapshot.batches(self.table, batch_rows, rowids):
            converted = convert_batch(self.table, batch, self.schema)
            self.considered += batch.num_rows
            self.rejects += converted.rejects
            if converted.good.num_rows:
                self.copy(converted.good)
            if self.scoped:
                keys = converted.keys
                if SOURCE_ID in keys.column_names:
                    keys = keys.rename_columns([*self.table.primary_key, "_src"])
                self._copy_into(self.touched, keys)
        self.conn.execute(f"ANALYZE {self.stage} ({', '.join(self._joined_columns())})")
        if self.scoped:
            self._settle_touched()

    def _joined_columns(self) -> list[str]:
        """The stage's columns that the rules, the merge and the content check join, group
        or filter it on: keys, UNIQUE columns, FK columns and the bookkeeping columns."""
        table = self.table
        names = [*table.primary_key, *(c for key in table.unique_keys for c in key)]
        names += [c.name for c in table.foreign_keys]
        names += [parent for _, parent in self._self_references()]
        joined = [q(n) for n in dict.fromkeys(names)] + [ROWID]
        joined += [SOURCE_ID] if self.maps_ids else []
        return joined + [q(SOURCE_TEXT + c.name) for c in table.unlinked_ids]

    def _settle_touched(self) -> None:
        """Keep only the touched keys whose target row came from the same source row (a
        remapped id may be another source row's), so that "same row" is key equality, which
        Postgres answers from the target's primary key."""
        if self.maps_ids:
            self.conn.execute(
                f"DELETE FROM {self.touched} k WHERE {self._identity('k')} IS DISTINCT FROM k._src"
            )
        self.conn.execute(f"ANALYZE {self.touched}")

    def touch_deleted(self, deleted: list[list]) -> None:
        """Rows gone from D1: their target rows go too (if they are the same source row)."""
        if self.maps_ids:
            rows = [(uuid_for(key[0]), key[0]) for key in deleted if isinstance(key[0], str)]
            cols = f"{q(self.table.primary_key[0])}, _src"
        else:
            rows = [tuple(key) for key in deleted]
            cols = ", ".join(map(q, self.table.primary_key))
        with self.conn.cursor().copy(f"COPY {self.touched} ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def _copy_into(self, relation: str, rows: pa.Table) -> None:
        names = ", ".join(q(n) for n in rows.column_names)
        with self.conn.cursor().copy(f"COPY {relation} ({names}) FROM STDIN (FORMAT csv)") as cp:
            cp.write(_csv(rows))

    def _identity(self, alias: str) -> str:
        """SQL for the source id a target row came from (scoped loads of id tables)."""
        pk = q(self.table.primary_key[0])
        return (
            f"coalesce((SELECT m.source_id FROM {ID_MAP} m WHERE m.source_table = "
            f"'{self.table.name}' AND m.target_id = {alias}.{pk}), {alias}.{pk}::text)"
        )

    def _same_row(self, target: str, touched: str) -> str:
        return " AND ".join(f"{target}.{q(k)} = {touched}.{q(k)}" for k in self.table.primary_key)

    def _untouched(self, alias: str) -> str:
        return f"NOT EXISTS (SELECT 1 FROM {self.touched} k WHERE {self._same_row(alias, 'k')})"

    def _source_pks(self, alias: str, sql: str) -> set[str]:
        """The source rows (source_pk_text) of the target rows ``alias`` that ``sql`` selects."""
        pk = ", ".join(f"{alias}.{q(k)}" for k in self.table.primary_key)
        select = self._identity(alias) if self.maps_ids else pk
        return {source_pk_text(list(row), 0) for row in self.conn.execute(f"SELECT {select} {sql}")}

    def collisions(self) -> set[str]:
        """Source rows outside the scope whose target row shares a key value with a staged row;
        they must join the scope so that UNIQUE and PK rules see every contender. On the
        primary key, t's key is s's: asking whether s's is touched lets Postgres drop the
        staged rows whose target row is in the scope (nearly all) before it reaches the
        target, rather than scanning the target to join all of them."""
        found: set[str] = set()
        for cols in self.table.unique_keys:
            on = " AND ".join(f"t.{q(c)} = s.{q(c)}" for c in cols)
            outside = self._untouched("s" if cols == self.table.primary_key else "t")
            found |= self._source_pks(
                "t", f"FROM {q(self.table.name)} t JOIN {self.stage} s ON {on} WHERE {outside}"
            )
        return found

    def _self_references(self) -> list[tuple[str, str]]:
        """(FK column, referenced column) pairs of the table's FKs to itself."""
        return [
            (c.name, c.parent[1]) for c in self.table.foreign_keys if c.parent[0] == self.table.name
        ]

    def index_self_references(self) -> list[str]:
        """Index the table's own FK columns for this transaction where the spec does not
        (calendar_events.parent_event_id, as the map has it): otherwise every row the merge
        deletes makes Postgres scan the whole table for rows its ON DELETE reaches, and so does
        each step of descendants(). Returns the indexes, for drop_indexes before commit."""
        indexed = {index.expr.split(",")[0].strip() for index in self.table.indexes}
        made = []
        for column, _ in self._self_references():
            if column not in indexed:
                made.append(q(f"_d1m_{self.table.name}_{column}"))
                self.conn.execute(f"CREATE INDEX {made[-1]} ON {q(self.table.name)} ({q(column)})")
        return made

    def drop_indexes(self, names: list[str]) -> None:
        for name in names:
            self.conn.execute(f"DROP INDEX {name}")

    def descendants(self) -> set[str]:
        """Source rows outside the scope whose target row refers, through the table's own FKs
        and at any depth, to a row of the scope: removing that row from Postgres would cascade
        into them, so they join the scope and are judged again beside it."""
        target, found = q(self.table.name), set()
        for column, referenced in self._self_references():
            fk, ref = q(column), q(referenced)
            found |= self._source_pks(
                "c",
                f"""FROM {target} c JOIN (
                      WITH RECURSIVE hit(v) AS (
                          SELECT t.{ref} FROM {target} t JOIN {self.touched} k
                            ON {self._same_row("t", "k")}
                        UNION
                          SELECT c.{ref} FROM {target} c JOIN hit h ON c.{fk} = h.v
                      ) SELECT v FROM hit) h ON c.{fk} = h.v
                    WHERE {self._untouched("c")}""",
            )
        return found

    def copy(self, rows: pa.Table) -> None:
        """COPY a batch (binary where it encodes: target/binary.py); if Postgres refuses it,
        find and quarantine the refused rows one by one."""
        names = ", ".join(q(n) for n in rows.column_names)
        statement = f"COPY {self.stage} ({names}) FROM STDIN (FORMAT csv)"
        data = self.binary.encode(rows) if self.binary else None
        if data is None:
            whole, data = statement, _csv(rows)
        else:
            names = ", ".join(q(n) for n in self.binary.names)
            whole = f"COPY {self.stage} ({names}) FROM STDIN (FORMAT binary)"
        try:
            with self.conn.transaction(), self.conn.cursor().copy(whole) as copy:
                copy.write(data)
        except psycopg.DataError:
            for i in range(rows.num_rows):
                row = rows.slice(i, 1)
                try:
                    with self.conn.transaction(), self.conn.cursor().copy(statement) as copy:
                        copy.write(_csv(row))
                except psycopg.DataError as error:
                    rowid = row[ROWID][0].as_py()
                    diag = error.diag
                    message = "; ".join(
                        m for m in (diag.message_primary or str(error), diag.message_detail) if m
                    )
                    self.rejects.append(
                        Reject(
                            rowid, None, "postgres_rejected", f"Postgres refused the row: {message}"
                        )
                    )

    def _delete_returning(self, sql: str, params: list | None = None) -> list[tuple]:
        return self.conn.execute(sql, params).fetchall()

    def widen_scope(self, snapshot: Snapshot, batch_rows: int) -> list[int]:
        """Stage the source rows outside the scope that the staged rows can reach (see
        collisions() and descendants()), until none is left; returns their rowids. Raises
        NeedsFullLoad where a target row has no source row: only a full load can tell."""
        added: list[int] = []
        for _ in range(5):
            outside = (self.collisions() | self.descendants()) - self.scope_pks
            if not outside:
                return added
            more = snapshot.rowids_of(self.table, sorted(outside))
            if len(more) != len(outside):
                raise NeedsFullLoad
            self.scope_pks |= outside
            self.stage_rows(snapshot, batch_rows, more)
            added += more
        raise NeedsFullLoad

    def apply_rules(self) -> None:
        """Move the staged rows Postgres would refuse, or the map forbids, to the rejects: the
        table's CHECKs, then its UNIQUE keys, then FKs, then derived values."""
        self.reject_checks()
        self.reject_duplicates()
        self.reject_orphans()
        self.reject_underived()

    def reject_checks(self) -> None:
        pk = q(self.table.primary_key[0])
        checks = [(c.name, c.check) for c in self.table.columns if c.check]
        checks += [(None, expr) for _, expr in self.table.checks]
        for column, expr in checks:
            for rowid, target_pk in self._delete_returning(
                f"DELETE FROM {self.stage} WHERE NOT ({expr}) RETURNING {ROWID}, {pk}::text"
            ):
                self.rejects.append(
                    Reject(
                        rowid,
                        column,
                        "check_violation",
                        f"violates CHECK ({expr}); correct it in D1",
                        target_pk,
                    )
                )

    def reject_duplicates(self) -> None:
        pk = q(self.table.primary_key[0])
        for cols in self.table.unique_keys:
            quoted = ", ".join(map(q, cols))
            not_null = " AND ".join(f"{q(c)} IS NOT NULL" for c in cols)
            rows = self._delete_returning(
                f"""DELETE FROM {self.stage} s USING (
                      SELECT {ROWID}, row_number() OVER w AS n, first_value({ROWID}) OVER w AS kept
                      FROM {self.stage} WHERE {not_null} WINDOW w AS (PARTITION BY {quoted}
                      ORDER BY {ROWID})) d
                    WHERE s.{ROWID} = d.{ROWID} AND d.n > 1
                    RETURNING s.{ROWID}, s.{pk}::text, d.kept"""
            )
            for rowid, target_pk, kept in rows:
                self.rejects.append(
                    Reject(
                        rowid,
                        cols[0],
                        "duplicate_key",
                        f"has the same ({', '.join(cols)}) as D1 rowid {kept}, which was kept; "
                        "merge or delete one of them in D1",
                        target_pk,
                    )
                )

    def reject_orphans(self) -> None:
        """Children whose parent is missing or quarantined; repeats for self-references."""
        pk = q(self.table.primary_key[0])
        while True:
            removed = 0
            for column in self.table.foreign_keys:
                parent_table, parent_column = column.parent
                own = parent_table == self.table.name
                parent_rel = q(parent_table)
                if own:  # the table as it will be: staged rows, and in a scoped load the rest
                    parent_rel = f"(SELECT {q(parent_column)} FROM {self.stage}"
                    if self.scoped:
                        parent_rel += (
                            f" UNION ALL SELECT t.{q(parent_column)} FROM "
                            f"{q(self.table.name)} t WHERE {self._untouched('t')}"
                        )
                    parent_rel += ")"
                rows = self._delete_returning(
                    f"""DELETE FROM {self.stage} s WHERE s.{q(column.name)} IS NOT NULL
                        AND NOT EXISTS (SELECT 1 FROM {parent_rel} p
                                        WHERE p.{q(parent_column)} = s.{q(column.name)})
                        RETURNING s.{ROWID}, s.{pk}::text, s.{q(column.name)}::text"""
                )
                quarantined = self._quarantined_parents(
                    parent_table, parent_column, [r[2] for r in rows]
                )
                for rowid, target_pk, value in rows:
                    if value in quarantined:
                        code, why = "parent_quarantined", "is quarantined"
                    else:
                        code, why = "missing_parent", "does not exist in D1"
                    self.rejects.append(
                        Reject(
                            rowid,
                            column.name,
                            code,
                            f"{column.name} = {value} refers to {parent_table}.{parent_column}, "
                            f"which {why}; fix the parent or this reference in D1",
                            target_pk,
                        )
                    )
                removed += len(rows)
            if not removed:
                return

    def reject_underived(self) -> None:
        """NOT NULL columns derived from a related row that gave no value, parents being fine."""
        pk = q(self.table.primary_key[0])
        for column in self.table.columns:
            if not column.source_sql or column.nullable:
                continue
            for rowid, target_pk in self._delete_returning(
                f"DELETE FROM {self.stage} WHERE {q(column.name)} IS NULL "
                f"RETURNING {ROWID}, {pk}::text"
            ):
                self.rejects.append(
                    Reject(
                        rowid,
                        column.name,
                        "not_null",
                        f"{column.name} is derived by {column.source_sql}, which gave no value; "
                        "fix the related row in D1",
                        target_pk,
                    )
                )

    def _quarantined_parents(self, parent: str, column: str, values: list[str]) -> set[str]:
        if not values:
            return set()
        parent_table = self.schema.table(parent)
        own = {r.target_pk for r in self.rejects} if parent == self.table.name else set()
        if parent_table.primary_key == (column,):
            sql = (
                f"SELECT target_pk FROM {REJECTED} WHERE source_table = %s "
                "AND resolved_at IS NULL AND target_pk = ANY(%s)"
            )
            params = [parent, values]
        else:
            sql = (
                f"SELECT raw_row ->> %s FROM {REJECTED} WHERE source_table = %s "
                "AND resolved_at IS NULL AND raw_row ->> %s = ANY(%s)"
            )
            source_col = parent_table.column(column).source_name
            params = [source_col, parent, source_col, values]
        return (own & set(values)) | {r[0] for r in self.conn.execute(sql, params)}

    def merge(self) -> tuple[int, int, int]:
        """Make the target equal to the stage. Returns (inserted, updated, deleted)."""
        target = q(self.table.name)
        cols = ", ".join(q(c.name) for c in self.columns)
        if self.conn.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {target})").fetchone()[0]:
            return self._bulk_insert(target, cols), 0, 0
        key = ", ".join(map(q, self.table.primary_key))
        join = " AND ".join(f"s.{q(k)} = t.{q(k)}" for k in self.table.primary_key)
        restaged = f"EXISTS (SELECT 1 FROM {self.stage} s WHERE {join})"
        if self.scoped:  # only rows of the scope leave: gone from D1, or now quarantined
            deleted = self._scoped_delete(target, restaged)
        else:
            deleted = self.conn.execute(f"DELETE FROM {target} t WHERE NOT {restaged}").rowcount
        updates = [q(c.name) for c in self.columns if c.name not in self.table.primary_key]
        if updates:
            assign = ", ".join(f"{n} = EXCLUDED.{n}" for n in updates)
            changed = (
                f"({', '.join(f't.{n}' for n in updates)}) IS DISTINCT FROM "
                f"({', '.join(f'EXCLUDED.{n}' for n in updates)})"
            )
            conflict = f"DO UPDATE SET {assign} WHERE {changed}"
        else:
            conflict = "DO NOTHING"
        inserted, updated = self.conn.execute(
            f"""WITH up AS (INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM {self.stage}
                            ON CONFLICT ({key}) {conflict} RETURNING (xmax = 0) AS fresh)
                SELECT count(*) FILTER (WHERE fresh), count(*) FILTER (WHERE NOT fresh) FROM up"""
        ).fetchone()
        return inserted, updated, deleted

    def _scoped_delete(self, target: str, restaged: str) -> int:
        """Delete the scope's rows that leave the target, having recorded first which rows of
        other tables Postgres's ON DELETE changes with them (record_cascade)."""
        leaving = (
            f"{target} t JOIN {self.touched} k ON {self._same_row('t', 'k')} AND NOT {restaged}"
        )
        self.cascade_recorded = record_cascade(self.conn, self.schema, self.table, leaving)
        return self.conn.execute(
            f"DELETE FROM {target} t USING {self.touched} k "
            f"WHERE {self._same_row('t', 'k')} AND NOT {restaged}"
        ).rowcount

    def _bulk_insert(self, target: str, cols: str) -> int:
        """First load: secondary indexes are rebuilt once rather than maintained row by row
        (a third faster on points_ledger); inside the table's transaction, so still atomic."""
        for index in self.table.indexes:
            self.conn.execute(f"DROP INDEX IF EXISTS {q(index.name)}")
        inserted = self.conn.execute(
            f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {self.stage}"
        ).rowcount
        for statement in create_index_sql(self.table):
            self.conn.execute(statement)
        return inserted

    def record_quarantine(self, snapshot: Snapshot, run_id: str | None) -> None:
        raw = snapshot.raw_rows(self.table, [r.rowid for r in self.rejects])
        rows = [
            (
                self.table.name,
                raw[r.rowid].source_pk,
                r.target_pk,
                r.column,
                r.code,
                r.reason,
                Jsonb(raw[r.rowid].values),
                run_id,
            )
            for r in self.rejects
        ]
        with self.conn.cursor() as cur:
            cur.executemany(
                f"""INSERT INTO {REJECTED} AS r (source_table, source_pk, target_pk, column_name,
                        reason_code, reason, raw_row, run_id)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                    ON CONFLICT (source_table, source_pk) DO UPDATE SET
                        target_pk = EXCLUDED.target_pk, column_name = EXCLUDED.column_name,
                        reason_code = EXCLUDED.reason_code, reason = EXCLUDED.reason,
                        raw_row = EXCLUDED.raw_row, run_id = EXCLUDED.run_id,
                        last_seen_at = now(), resolved_at = NULL,
                        first_seen_at = CASE WHEN r.resolved_at IS NULL THEN r.first_seen_at
                                             ELSE now() END""",
                rows,
            )
        in_scope = "AND source_pk = ANY(%s)" if self.scoped else ""
        self.conn.execute(
            f"""UPDATE {REJECTED} SET resolved_at = now() WHERE source_table = %s
                AND resolved_at IS NULL AND NOT (source_pk = ANY(%s)) {in_scope}""",
            [self.table.name, [row[1] for row in rows]]
            + ([sorted(self.scope_pks)] if self.scoped else []),
        )

    def record_id_map(self) -> int:
        if not self.maps_ids:
            return 0
        pk = q(self.table.primary_key[0])
        if self.scoped:
            self.conn.execute(
                f"""DELETE FROM {ID_MAP} WHERE source_table = %s AND (source_id = ANY(%s)
                    OR target_id IN (SELECT {pk} FROM {self.stage}))""",
                [self.table.name, sorted(self.scope_pks)],
            )
        else:
            self.conn.execute(f"DELETE FROM {ID_MAP} WHERE source_table = %s", [self.table.name])
        return self.conn.execute(
            f"""INSERT INTO {ID_MAP} (source_table, source_id, target_id)
                SELECT %s, {SOURCE_ID}, {pk} FROM {self.stage} WHERE {SOURCE_ID} IS NOT NULL""",
            [self.table.name],
        ).rowcount

    def record_ref_map(self) -> None:
        """The D1 text of every value an unlinked id column remapped, per target row: no
        parent's id_map holds it, and without it the text would be gone for good. A scoped
        load replaces the entries of the rows it touched (every staged row is one)."""
        columns = self.table.unlinked_ids
        if not columns:
            return
        pk = q(self.table.primary_key[0])
        if self.scoped:
            self.conn.execute(
                f"""DELETE FROM {REF_MAP} WHERE source_table = %s
                    AND target_pk IN (SELECT {pk}::text FROM {self.touched})""",
                [self.table.name],
            )
        else:
            self.conn.execute(f"DELETE FROM {REF_MAP} WHERE source_table = %s", [self.table.name])
        for column in columns:
            text = q(SOURCE_TEXT + column.name)
            self.conn.execute(
                f"""INSERT INTO {REF_MAP} (source_table, target_pk, column_name, source_text,
                        target_id)
                    SELECT %s, {pk}::text, %s, {text}, {q(column.name)} FROM {self.stage}
                    WHERE {text} IS NOT NULL""",
                [self.table.name, column.name],
            )


Counts = tuple[int, int, int, int]  # inserted, updated, removed, remapped ids


class NeedsFullLoad(Exception):
    """An incremental load found changes whose effect reaches outside its scope."""


def ancestors(schema: Schema, table: Table) -> set[str]:
    found: set[str] = set()
    todo = list(table.parents)
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo += schema.table(name).parents
    return found


def _on_delete_edges(schema: Schema, parent: str) -> list[tuple[Table, Column]]:
    """The FKs referring to ``parent`` whose ON DELETE changes the referring rows."""
    return [
        (child, column)
        for child in schema.tables
        for column in child.foreign_keys
        if column.parent[0] == parent and (column.on_delete or "").upper() in ON_DELETE_ACTIONS
    ]


def _source_identity(table: Table, alias: str) -> str | None:
    """SQL naming the source row (source_pk_text) of the target row ``alias`` of ``table``:
    its original id, or its text key as it is; None for keys SQL cannot name so (composite)."""
    if len(table.primary_key) != 1:
        return None
    pk = table.column(table.primary_key[0])
    if pk.kind is Kind.ID:
        return (
            f"coalesce((SELECT m.source_id FROM {ID_MAP} m WHERE m.source_table = "
            f"'{table.name}' AND m.target_id = {alias}.{q(pk.name)}), {alias}.{q(pk.name)}::text)"
        )
    return f"{alias}.{q(pk.name)}" if pk.kind is Kind.TEXT else None


def _cascade_closure(schema: Schema, table: Table) -> list[Table]:
    """The tables whose rows a delete from ``table`` can change through ON DELETE, in load
    order (``table`` first)."""
    reached, todo = {table.name}, [table.name]
    while todo:
        for child, _ in _on_delete_edges(schema, todo.pop()):
            if child.name not in reached:
                reached.add(child.name)
                todo.append(child.name)
    return [t for t in load_order(schema) if t.name in reached]


def record_cascade(conn: psycopg.Connection, schema: Schema, table: Table, leaving: str) -> bool:
    """Before rows of ``table`` are deleted (``leaving``: a FROM clause giving them as ``t``),
    record in CASCADED the source rows of every other table that ON DELETE CASCADE or SET NULL
    will then change, at any depth, for those tables' next syncs (_incremental_load). This
    follows the FKs as Postgres will, on the target's values before the delete, one join on
    the FK column per FK. Returns False, recording nothing, where a reached table's key cannot
    name its source row: the tables below then need a full pass."""
    closure = _cascade_closure(schema, table)
    if any(_source_identity(t, "c") is None for t in closure[1:]):
        return False
    refs = {t.name: {c.parent[1] for _, c in _on_delete_edges(schema, t.name)} for t in closure}
    if not refs[table.name]:
        return True  # no ON DELETE refers to it

    def columns(t: Table) -> list[str]:  # what a table's leaving rows are kept as
        return sorted({*t.primary_key, *refs[t.name]})

    gone: dict[str, str] = {}  # table -> temporary table of its rows that leave

    def create(t: Table, select: str) -> int:
        gone[t.name] = q(f"_d1m_gone_{t.name}")
        conn.execute(f"DROP TABLE IF EXISTS {gone[t.name]}")
        return conn.execute(f"CREATE TEMP TABLE {gone[t.name]} ON COMMIT DROP AS {select}").rowcount

    if not conn.execute(f"SELECT EXISTS (SELECT 1 FROM {leaving})").fetchone()[0]:
        return True  # most scoped merges remove nothing: no temporary table for them
    cols = ", ".join(f"t.{q(c)}" for c in columns(table))
    create(table, f"SELECT DISTINCT {cols} FROM {leaving}")
    grown = {table.name}  # tables with leaving rows not followed yet
    for parent in closure:  # load order: a table's parents are done before it
        while parent.name in grown:  # again when a self-reference adds rows
            grown.discard(parent.name)
            conn.execute(f"ANALYZE {gone[parent.name]}")
            for child, column in _on_delete_edges(schema, parent.name):
                hit = (
                    f"FROM {q(child.name)} c WHERE c.{q(column.name)} IN "
                    f"(SELECT {q(column.parent[1])} FROM {gone[parent.name]})"
                )
                if child.name != table.name:  # the table's own scope holds its own rows
                    conn.execute(
                        f"""INSERT INTO {CASCADED} (table_name, source_pk)
                            SELECT %s, {_source_identity(child, "c")} {hit}
                            ON CONFLICT DO NOTHING""",
                        [child.name],
                    )
                if column.on_delete.upper() != "CASCADE" or not refs[child.name]:
                    continue  # SET NULL keeps the row; nothing refers to a deleted one
                keep = ", ".join(f"c.{q(c)}" for c in columns(child))
                if child.name not in gone:
                    create(child, f"SELECT {keep} FROM {q(child.name)} c WHERE false")
                new = " AND ".join(f"g.{q(k)} = c.{q(k)}" for k in child.primary_key)
                added = conn.execute(
                    f"""INSERT INTO {gone[child.name]} SELECT DISTINCT {keep} {hit}
                        AND NOT EXISTS (SELECT 1 FROM {gone[child.name]} g WHERE {new})"""
                ).rowcount
                if added:
                    grown.add(child.name)
    return True


@dataclass(frozen=True)
class Upstream:
    """What the table's ancestors did since the table last synced."""

    removed_rows: bool  # Postgres may have cascaded into this table outside any scope
    changed: bool  # rows or quarantine changed: this table's quarantined rows may now pass


def _upstream(conn: psycopg.Connection, schema: Schema, table: Table) -> Upstream:
    row = conn.execute(
        f"""SELECT (SELECT max(removed_at) FROM {SYNC_STATE} WHERE table_name = ANY(%(a)s))
                     > s.synced_at,
                   (SELECT max(changed_at) FROM {SYNC_STATE} WHERE table_name = ANY(%(a)s))
                     > s.synced_at
            FROM {SYNC_STATE} s WHERE s.table_name = %(t)s""",
        {"a": sorted(ancestors(schema, table)), "t": table.name},
    ).fetchone()
    if row is None:  # never synced into this target
        return Upstream(removed_rows=True, changed=True)
    return Upstream(removed_rows=bool(row[0]), changed=bool(row[1]))


def _lag(conn: psycopg.Connection, shadow: Shadow, table: Table) -> str:
    """Why the shadow cannot be trusted for ``table`` ('' when it can): it is not of the
    generation Postgres holds, so it may hide a change that Postgres has and D1 undid."""
    row = conn.execute(
        f"SELECT generation FROM {SYNC_STATE} WHERE table_name = %s", [table.name]
    ).fetchone()
    ours, theirs = (None if row is None else row[0]), shadow.generation(table)
    if ours == theirs:
        return ""
    return (
        f"{table.name}: the shadow was behind Postgres (it records generation {theirs}, "
        f"Postgres holds {ours}: a sync ended between Postgres's commit and the shadow's), "
        "so the table was synced in full"
    )


def _finish(load: TableLoad, snapshot: Snapshot, run_id: str | None) -> Counts:
    load.apply_rules()
    inserted, updated, removed = load.merge()
    load.record_quarantine(snapshot, run_id)
    load.record_ref_map()
    return inserted, updated, removed, load.record_id_map()


def _full_load(
    conn: psycopg.Connection,
    snapshot: Snapshot,
    table: Table,
    schema: Schema,
    run_id: str | None,
    batch_rows: int,
    prefetch: Prefetch | None,
) -> tuple[TableLoad, Counts]:
    from d1_migration.target.first_load import first_load  # it builds on TableLoad

    if (fast := first_load(conn, snapshot, table, schema, batch_rows, prefetch)) is not None:
        fast[0].record_quarantine(snapshot, run_id)
        return fast
    load = TableLoad(conn, table, schema)
    load.create_stage()
    load.stage_rows(snapshot, batch_rows)
    return load, _finish(load, snapshot, run_id)


def _cascaded(
    conn: psycopg.Connection, snapshot: Snapshot, table: Table, changes: Changes
) -> tuple[list[str], list[int]]:
    """The source rows of ``table`` whose target rows an ancestor's ON DELETE changed since
    the table's last sync (record_cascade), and the rowids of those D1 still has. Raises
    NeedsFullLoad for one that D1 lacks and the shadow does not see deleted: its key did not
    name its source row."""
    pks = [
        r[0]
        for r in conn.execute(
            f"SELECT source_pk FROM {CASCADED} WHERE table_name = %s", [table.name]
        )
    ]
    rowids, deleted = [], set(changes.deleted_pks)
    for pk in pks:
        found = snapshot.rowids_of(table, [pk])
        if not found and pk not in deleted:
            raise NeedsFullLoad
        rowids += found
    return pks, rowids


def _incremental_load(
    conn: psycopg.Connection,
    snapshot: Snapshot,
    shadow: Shadow,
    table: Table,
    schema: Schema,
    run_id: str | None,
    batch_rows: int,
    upstream_changed: bool,
) -> tuple[TableLoad, Counts, list[int], Changes]:
    changes = shadow.changes(table)
    cascaded, cascaded_rowids = _cascaded(conn, snapshot, table, changes)
    retry = []
    if changes or upstream_changed or cascaded:  # else each quarantined row fails as it did
        retry = [
            r[0]
            for r in conn.execute(
                f"SELECT source_pk FROM {REJECTED} WHERE source_table = %s AND resolved_at IS NULL",
                [table.name],
            )
        ]
    load = TableLoad(conn, table, schema, scoped=True)
    rowids = sorted(
        set(changes.rowids) | set(snapshot.rowids_of(table, retry)) | set(cascaded_rowids)
    )
    if not rowids and not changes.deleted:
        return load, (0, 0, 0, 0), [], changes
    # A scope is small and the target's pages are cached: probing its indexes beats scanning it,
    # which the default cost model (spinning disks) does not see.
    conn.execute("SET LOCAL random_page_cost = 1.1")
    conn.execute("SET LOCAL jit = off")  # compiling costs ~150 ms a query, more than a scope
    load.create_stage()
    temporary_indexes = load.index_self_references()
    load.scope_pks = {*changes.source_pks, *retry, *changes.deleted_pks, *cascaded}
    load.touch_deleted(changes.deleted)
    load.stage_rows(snapshot, batch_rows, rowids)
    rowids += load.widen_scope(snapshot, batch_rows)
    counts = _finish(load, snapshot, run_id)
    load.drop_indexes(temporary_indexes)
    return load, counts, rowids, changes


def migrate_table(
    conn: psycopg.Connection,
    snapshot: Snapshot,
    table: Table,
    schema: Schema,
    run_id: str | None = None,
    batch_rows: int = BATCH_ROWS,
    shadow: Shadow | None = None,
    incremental: bool = False,
    prefetch: Prefetch | None = None,
) -> TableResult:
    """Bring one target table in line with the source snapshot, atomically.

    With a ``shadow``, an ``incremental`` load processes only what changed when that is
    provably enough, and the shadow is brought up to date after Postgres commits. A first
    load reads the next table ahead through ``prefetch`` (first_load.Prefetch).
    """
    started = time.perf_counter()
    mode, changes, note = "full", Changes(), ""
    with conn.transaction():  # its caller holds the target (target_lock): one sync at a time
        if incremental and shadow is not None and shadow.usable(table):
            note = _lag(conn, shadow, table)
            upstream = _upstream(conn, schema, table)
            if not note and not upstream.removed_rows:
                try:
                    with conn.transaction():  # a savepoint: falling back discards the attempt
                        load, counts, rowids, changes = _incremental_load(
                            conn,
                            snapshot,
                            shadow,
                            table,
                            schema,
                            run_id,
                            batch_rows,
                            upstream.changed,
                        )
                    mode = "incremental"
                except NeedsFullLoad:
                    pass
        if mode == "full":
            if shadow is not None:
                shadow.stage(table)
            load, counts = _full_load(conn, snapshot, table, schema, run_id, batch_rows, prefetch)
        inserted, updated, removed, remapped = counts
        # Descendants read these: removed rows may have cascaded into them; any change here
        # may change which of their quarantined rows pass. The clock, not the transaction
        # start, so that a descendant whose sync began before this commit looks again. The
        # generation tells the shadow, written after this commit, whether it caught up.
        changed = mode == "full" or load.considered > 0 or bool(changes.deleted)
        # What an ancestor's ON DELETE did here is judged now (both modes judge those rows).
        conn.execute(f"DELETE FROM {CASCADED} WHERE table_name = %s", [table.name])
        # A removal whose cascade was recorded reaches the descendants through CASCADED.
        uncovered = removed > 0 and not load.cascade_recorded
        generation = conn.execute(
            f"""INSERT INTO {SYNC_STATE} AS s (table_name, mode, synced_at, removed_at,
                    changed_at, generation)
                VALUES (%(t)s, %(m)s, now(), CASE WHEN %(r)s THEN clock_timestamp() END,
                    CASE WHEN %(c)s THEN clock_timestamp() END, 1)
                ON CONFLICT (table_name) DO UPDATE SET mode = %(m)s, synced_at = now(),
                    removed_at = coalesce(EXCLUDED.removed_at, s.removed_at),
                    changed_at = coalesce(EXCLUDED.changed_at, s.changed_at),
                    generation = s.generation + 1
                RETURNING generation""",
            {"t": table.name, "m": mode, "r": uncovered, "c": changed},
        ).fetchone()[0]
        # Before the shadow's commit ends this snapshot, and before Postgres's: whatever fails
        # after that commit is the shadow's alone, and said so.
        source_rows = snapshot.count(table)
    if shadow is not None:
        try:
            if mode == "full":
                shadow.replace_all(table, generation)
            else:
                shadow.apply(table, rowids, changes.stale, generation)
            shadow.commit()
        except sqlite3.Error as error:  # Postgres has it: the next sync sees the lag
            shadow.rollback()
            note += "; " * bool(note) + (
                f"{table.name}: synced in Postgres, but the shadow could not record it "
                f"({error}); the table's next sync is a full pass"
            )
    return TableResult(
        table=table.name,
        source_rows=source_rows,
        quarantined=len(load.rejects),
        inserted=inserted,
        updated=updated,
        deleted=removed,
        remapped_ids=remapped,
        mode=mode,
        considered=load.considered,
        seconds=round(time.perf_counter() - started, 3),
        reasons=dict(Counter(r.code for r in load.rejects)),
        shadow_note=note,
    )
