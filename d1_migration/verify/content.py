"""The content check: does Postgres hold exactly what a fresh migration of D1 would put there?

D1's rows are converted again by the project's own transforms and judged by the same rules as
a load (TableLoad: staging, CHECK, UNIQUE, FK, derived values) into a temporary stage, inside a
transaction that is always rolled back, so the target is never written. The stage is then
compared with the target row by row (a FULL JOIN on the primary key, every column with
IS DISTINCT FROM), the expected quarantine with the open entries of d1_migration.rejected_rows
(reason, column and raw values), and the expected id maps with d1_migration.id_map and
ref_map. Nothing here reads the shadow: a stale shadow, a row edited by hand in Postgres or
a lost write all show up as differences.

A whole-table verification proves the table. A *slice* (every ``count``-th block of ``size``
consecutive D1 rowids, from block ``index``: contiguous rowid ranges, so reading a slice costs its
own rows, not a scan of the table) proves the slice's rows and the target rows at their keys; the
rows a slice's rows can reach are judged with them, as an incremental load would (rows sharing a
UNIQUE value, rows referring to them through the table's own FKs). A target row that no D1 row
accounts for is found by a whole-table verification, or by row_parity's count when it is not
balanced by a missing row, which its slice then finds. Slices rotate (the one verified longest ago
goes next), so every row is verified within ``count`` syncs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import psycopg

from d1_migration.source.snapshot import ROWID, Blocks, Snapshot
from d1_migration.spec.model import Schema, Table, q
from d1_migration.target.ddl import BOOKKEEPING_SCHEMA
from d1_migration.target.load import BATCH_ROWS, ID_MAP, REF_MAP, REJECTED, NeedsFullLoad, TableLoad
from d1_migration.transforms import SOURCE_ID, SOURCE_TEXT

VERIFIED = f"{BOOKKEEPING_SCHEMA}.verified_slices"
SAMPLE = 20
SLICE_BLOCK = 64  # consecutive rowids a slice takes at a time: a few leaf pages of D1


@dataclass(frozen=True)
class Slice(Blocks):
    """Every ``count``-th block of ``size`` consecutive D1 rowids, starting at block
    ``index``; count 1 is the whole table."""

    index: int = 0
    count: int = 1
    size: int = SLICE_BLOCK

    @property
    def whole(self) -> bool:
        return self.count == 1

    def __str__(self) -> str:
        return "whole table" if self.whole else f"slice {self.index + 1} of {self.count}"


WHOLE = Slice()


@dataclass
class Verification:
    table: str
    part: Slice
    compared_rows: int = 0  # D1 rows converted and judged
    missing: int = 0  # rows a fresh migration puts in Postgres that Postgres lacks
    extra: int = 0  # rows in Postgres that a fresh migration would not put there
    differing: int = 0  # same key, another value in some column
    quarantine_differences: int = 0
    id_map_differences: int = 0  # d1_migration.id_map and ref_map entries
    samples: list[dict] = field(default_factory=list)  # the first differences, capped
    seconds: float = 0.0

    @property
    def differences(self) -> int:
        return (
            self.missing
            + self.extra
            + self.differing
            + self.quarantine_differences
            + self.id_map_differences
        )

    @property
    def passed(self) -> bool:
        return self.differences == 0


def verify_table(
    conn: psycopg.Connection, snapshot: Snapshot, table: Table, schema: Schema, part: Slice = WHOLE
) -> Verification:
    """Compare ``table`` in Postgres with a fresh migration of ``snapshot`` (or of a slice of
    it). Writes nothing; a slice whose reach cannot be settled is verified whole instead."""
    started = time.perf_counter()
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL jit = off")
        if not part.whole:
            try:
                with conn.transaction():  # a savepoint: a wider reach discards the attempt
                    found = _Comparison(conn, snapshot, table, schema, part).run()
            except NeedsFullLoad:
                part = WHOLE
        if part.whole:
            found = _Comparison(conn, snapshot, table, schema, part).run()
    found.seconds = round(time.perf_counter() - started, 3)
    return found


class _Comparison:
    def __init__(
        self,
        conn: psycopg.Connection,
        snapshot: Snapshot,
        table: Table,
        schema: Schema,
        part: Slice,
    ) -> None:
        self.conn, self.snapshot, self.table, self.part = conn, snapshot, table, part
        self.load = TableLoad(conn, table, schema, scoped=not part.whole)
        self.found = Verification(table.name, part)

    def run(self) -> Verification:
        load = self.load
        load.create_stage()
        if self.part.whole:
            load.stage_rows(self.snapshot, BATCH_ROWS)
        else:
            part = self.part
            load.scope_pks = self.snapshot.slice_rows(
                self.table, part.index, part.count, part.size
            )[1]
            load.stage_rows(self.snapshot, BATCH_ROWS, part)
            load.widen_scope(self.snapshot, BATCH_ROWS)
        self.found.compared_rows = load.considered
        load.apply_rules()
        self._rows()
        self._quarantine()
        self._id_map()
        self._ref_map()
        return self.found

    def _sample(self, **difference: object) -> None:
        if len(self.found.samples) < SAMPLE:
            self.found.samples.append(difference)

    def _rows(self) -> None:
        table, load = self.table, self.load
        pk = table.primary_key
        cols = [c.name for c in load.columns]
        target = f"(SELECT * FROM {q(table.name)} t WHERE {self._target_in_scope('t')})"
        key_text = (
            f"coalesce(s.{q(pk[0])}, t.{q(pk[0])})::text"
            if len(pk) == 1
            else "json_build_array("
            + ", ".join(f"coalesce(s.{q(k)}, t.{q(k)})" for k in pk)
            + ")::text"
        )
        differs = ", ".join(
            f"CASE WHEN s.{q(c)} IS DISTINCT FROM t.{q(c)} THEN '{c}' END" for c in cols
        )
        on = " AND ".join(f"s.{q(k)} = t.{q(k)}" for k in pk)
        source_id = f"s.{SOURCE_ID}" if load.maps_ids else "NULL::text"
        rows = self.conn.execute(
            f"""SELECT CASE WHEN t.{q(pk[0])} IS NULL THEN 'missing'
                            WHEN s.{q(pk[0])} IS NULL THEN 'extra' ELSE 'differs' END,
                       {key_text}, s.{ROWID}, {source_id},
                       array_remove(ARRAY[{differs}], NULL)
                FROM {load.stage} s FULL JOIN {target} t ON {on}
                WHERE s.{q(pk[0])} IS NULL OR t.{q(pk[0])} IS NULL
                   OR ({", ".join(f"s.{q(c)}" for c in cols)})
                      IS DISTINCT FROM ({", ".join(f"t.{q(c)}" for c in cols)})"""
        )
        for problem, key, rowid, original, columns in rows:
            if problem == "missing":
                self.found.missing += 1
            elif problem == "extra":
                self.found.extra += 1
            else:
                self.found.differing += 1
            sample = {"problem": problem, "pk": key}
            if original:
                sample["d1_id"] = original
            if rowid is not None:
                sample["d1_rowid"] = rowid
            if problem == "differs":
                sample["columns"] = columns
            self._sample(**sample)

    def _target_in_scope(self, alias: str) -> str:
        """Target rows this comparison covers: all, or those at the keys of the slice."""
        if self.part.whole:
            return "true"
        touched = self.load.touched
        same = " AND ".join(f"k.{q(c)} = {alias}.{q(c)}" for c in self.table.primary_key)
        return f"EXISTS (SELECT 1 FROM {touched} k WHERE {same})"

    def _quarantine(self) -> None:
        load = self.load
        raw = self.snapshot.raw_rows(self.table, [r.rowid for r in load.rejects])
        expected = {
            raw[r.rowid].source_pk: (r.code, r.column, r.reason, raw[r.rowid].values)
            for r in load.rejects
        }
        in_scope = "" if self.part.whole else f"AND source_pk IN ({_listed('%s')})"
        params: list = [self.table.name]
        if not self.part.whole:
            params.append(_keys(load.scope_pks | set(expected)))
        actual = {
            row[0]: tuple(row[1:])
            for row in self.conn.execute(
                f"""SELECT source_pk, reason_code, column_name, reason, raw_row FROM {REJECTED}
                    WHERE source_table = %s AND resolved_at IS NULL {in_scope}""",
                params,
            )
        }
        for source_pk in sorted(expected.keys() | actual.keys()):
            want, have = expected.get(source_pk), actual.get(source_pk)
            if want == have:
                continue
            self.found.quarantine_differences += 1
            if have is None:
                problem = "not quarantined"
            elif want is None:
                problem = "quarantined, but a fresh migration would not"
            else:
                fields = ("reason_code", "column_name", "reason", "raw_row")
                problem = "quarantine entry differs in " + ", ".join(
                    f for f, a, b in zip(fields, want, have, strict=True) if a != b
                )
            self._sample(problem=problem, d1_pk=source_pk)

    def _id_map(self) -> None:
        load = self.load
        if not load.maps_ids:
            return
        pk = q(self.table.primary_key[0])
        recorded = f"SELECT source_id AS k, target_id FROM {ID_MAP} WHERE source_table = %(t)s"
        if not self.part.whole:
            recorded += (
                f" AND (source_id IN ({_listed('%(scope)s')}) "
                f"OR target_id IN (SELECT {pk} FROM {load.stage}))"
            )
        differing = self._differing(
            f"SELECT {SOURCE_ID} AS k, {pk} FROM {load.stage} WHERE {SOURCE_ID} IS NOT NULL",
            recorded,
            {"t": self.table.name, "scope": _keys(load.scope_pks)},
        )
        self.found.id_map_differences += len(differing)
        for source_id in differing[:SAMPLE]:
            self._sample(problem="id_map entry differs", d1_id=source_id)

    def _ref_map(self) -> None:
        """The D1 text of remapped unlinked ids (d1_migration.ref_map), per target row."""
        load, pk = self.load, q(self.table.primary_key[0])
        for column in self.table.unlinked_ids:
            text = q(SOURCE_TEXT + column.name)
            recorded = (
                f"SELECT target_pk AS k, source_text, target_id FROM {REF_MAP} "
                "WHERE source_table = %(t)s AND column_name = %(c)s"
            )
            if not self.part.whole:
                recorded += f" AND target_pk IN (SELECT {pk}::text FROM {load.touched})"
            differing = self._differing(
                f"SELECT {pk}::text AS k, {text}, {q(column.name)} FROM {load.stage} "
                f"WHERE {text} IS NOT NULL",
                recorded,
                {"t": self.table.name, "c": column.name},
            )
            self.found.id_map_differences += len(differing)
            for target_pk in differing[:SAMPLE]:
                self._sample(problem=f"ref_map entry of {column.name} differs", pk=target_pk)

    def _differing(self, expected: str, recorded: str, params: dict) -> list[str]:
        """The keys (column ``k``) whose row differs between the ``expected`` and the
        ``recorded`` SELECT, or that only one of them has."""
        rows = self.conn.execute(
            f"""SELECT coalesce(e.k, m.k) FROM ({expected}) e FULL JOIN ({recorded}) m
                ON e.k = m.k WHERE e IS DISTINCT FROM m""",
            params,
        )
        return [key for (key,) in rows]


def _keys(keys: set[str]) -> str:
    """A slice's source keys as one JSON array (see _listed)."""
    return json.dumps(list(keys), ensure_ascii=False)


def _listed(param: str) -> str:
    """SQL for the keys of the _keys() ``param``: as a text[] parameter, psycopg encodes (in
    Python) a list of a slice's size more slowly than the comparisons that read it run."""
    return f"SELECT json_array_elements_text({param}::json)"


# -- which slice next, and when a table was last verified whole -----------------------------


def next_slice(conn: psycopg.Connection, table: str, count: int) -> Slice:
    """The slice verified longest ago (never verified first)."""
    if count <= 1:
        return WHOLE
    index = conn.execute(
        f"""SELECT n FROM generate_series(0, %(c)s - 1) n LEFT JOIN {VERIFIED} v
              ON v.table_name = %(t)s AND v.slices = %(c)s AND v.slice = n
            ORDER BY v.verified_at NULLS FIRST, n LIMIT 1""",
        {"t": table, "c": count},
    ).fetchone()[0]
    return Slice(index, count)


def record(conn: psycopg.Connection, found: Verification, count: int) -> None:
    """Remember the verification (a whole-table one counts for every slice of ``count``)."""
    indexes = range(max(count, 1)) if found.part.whole else [found.part.index]
    with conn.cursor() as cur:
        cur.executemany(
            f"""INSERT INTO {VERIFIED} (table_name, slices, slice, verified_at, passed)
                VALUES (%s, %s, %s, now(), %s) ON CONFLICT (table_name, slices, slice)
                DO UPDATE SET verified_at = now(), passed = EXCLUDED.passed""",
            [(found.table, max(count, 1), i, found.passed) for i in indexes],
        )


def last_verified_whole(conn: psycopg.Connection, table: str, count: int) -> str | None:
    """Since when every row of ``table`` has been verified and found equal: the oldest of the
    latest verifications of its ``count`` slices, if each of them passed; else None."""
    row = conn.execute(
        f"""SELECT CASE WHEN count(*) = %(c)s AND bool_and(passed) THEN min(verified_at) END
            FROM {VERIFIED} WHERE table_name = %(t)s AND slices = %(c)s""",
        {"t": table, "c": max(count, 1)},
    ).fetchone()[0]
    return row.isoformat() if row is not None else None
