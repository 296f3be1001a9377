"""The shadow: a local SQLite copy of every D1 row as it was last loaded into Postgres.

Change detection compares the source with it inside SQLite, value by value (``IS NOT`` tells
an integer 1 from the text '1'), so a re-sync finds inserts, updates and deletes in any table
without trusting timestamps and without bringing unchanged rows into Python. Shadow rows sit at
their source rowid, so the comparison is an integer-key join; a derived column (``source_sql``)
is kept as the value it gave, so a change in the row it reads counts as a change. A secret
column (``secret=True`` in the spec: the session token) is kept only as a SHA-256 digest of its
type and value, which tells every change as well as the value would.

Only the rows that can differ are compared. With the shadow, the hash and rowid range of each
of the source's leaf pages is recorded (Snapshot.leaf_pages). A page that hashes as one
recorded holds the very rows the shadow has for its range, so a differing row sits either on
a page that is new since then (an insert or update, or the page of a delete) or in the range of
a recorded page that is gone (a delete). Only those ranges are compared; a table with no new
and no vanished page is not read at all. A table whose derived column reads another table has
no page map (that value can change while its own pages do not) and is compared whole.

A table's shadow changes only after Postgres committed the table, from the same source snapshot
(a full load's copy is made beside the load, in a table of its own, and swapped in after the
commit: Shadow.stage), so it can be behind Postgres: the process died in between, or the write
failed. A shadow that is behind would hide a change that is undone in D1 afterwards (the shadow
already equals D1, Postgres does not), so each table's generation, which Postgres bumps in the
table's own transaction (target/load.py), is recorded beside its rows; a shadow recorded at
another generation is not trusted and the table gets a full pass. That makes a lost shadow
commit harmless, so it is written without waiting for the disk (WAL, synchronous=NORMAL): a
crash can lose its last commits, never corrupt it. The snapshot's connection folds the log
into the file once a run (checkpoint()), not during the table commits; the staged copies'
connection folds what it can after each copy, in its own thread.

A shadow belongs to one target database: its file is named after the target's sync token, so
a new or rebuilt target starts with no shadow, which makes its first sync a full one.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from d1_migration.private_files import private_dir, private_file
from d1_migration.source.snapshot import CHOSEN_ROWS, Snapshot, SqliteSource, source_pk_text
from d1_migration.spec.model import Table, q

ALIAS = "shadow"
TABLES = f"{ALIAS}._tables"  # per table: the column layout of its shadow
GENERATIONS = f"{ALIAS}._generations"  # per table: the Postgres generation its rows are of
PAGES = f"{ALIAS}._pages"  # per table: its source's leaf pages (hash, rowid range) when recorded
PAGE = struct.Struct("<16sqq")
SCOPE = "temp.d1m_scope"  # the rowid ranges a comparison reads
Ranges = dict[bytes, tuple[int, int]]  # leaf page hash -> (first, last) rowid on it
DIGEST = "d1m_digest"  # SQL function: _digest
STAGED_SUFFIX = "~staged"  # a table's next shadow, copied while Postgres loads it (stage())


@dataclass
class Changes:
    """Rows to process for one table, found by comparing the source with the shadow."""

    rowids: list[int] = field(default_factory=list)  # new or changed, by source rowid
    source_pks: list[str] = field(default_factory=list)  # their keys (source_pk_text)
    deleted: list[list] = field(default_factory=list)  # key values of rows gone from D1
    deleted_pks: list[str] = field(default_factory=list)  # their source_pk_text
    stale: list[int] = field(default_factory=list)  # shadow rowids no longer holding their row

    def __bool__(self) -> bool:
        return bool(self.rowids or self.stale)


def shadow_file_in(directory: Path) -> Callable[[psycopg.Connection], Path]:
    """The shadow file of the target ``conn`` is connected to, in ``directory``: one per
    target database, named by its sync token (which the bookkeeping schema creates: ensure
    the schema first), so a new or rebuilt target starts with no shadow."""

    def shadow_file(conn: psycopg.Connection) -> Path:
        token = conn.execute("SELECT token FROM d1_migration.sync_token").fetchone()[0]
        return directory / f"shadow-{token}.sqlite"

    return shadow_file


class Shadow:
    """The shadow database, attached to a snapshot's connection."""

    def __init__(self, snapshot: Snapshot, path: Path) -> None:
        self.snapshot = snapshot
        self.conn: sqlite3.Connection = snapshot.connection
        private_dir(path.parent)
        private_file(path)  # before SQLite creates it, and its -wal and -shm, with its mode
        if self.conn.in_transaction:  # no journal mode or safety level is set inside one
            self.conn.execute("COMMIT")
        self.conn.execute(f"ATTACH DATABASE ? AS {ALIAS}", [f"{path.resolve().as_uri()}?mode=rwc"])
        self.conn.execute(f"PRAGMA {ALIAS}.journal_mode = WAL")  # see the module docstring
        self.conn.execute(f"PRAGMA {ALIAS}.synchronous = NORMAL")
        self.conn.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoint() does it, once a run
        self.conn.create_function(DIGEST, 2, _digest, deterministic=True)
        self.conn.execute("BEGIN")
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLES} (table_name TEXT PRIMARY KEY, "
            "layout TEXT NOT NULL)"
        )
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {PAGES} (table_name TEXT PRIMARY KEY, pages BLOB NOT NULL)"
        )
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {GENERATIONS} (table_name TEXT PRIMARY KEY, "
            "generation INTEGER NOT NULL)"
        )
        self._ahead: dict[str, Future] = {}  # see prefetch()
        self._worker: ThreadPoolExecutor | None = None
        self._pages_now: dict[str, Ranges | None] = {}  # per read transaction, like:
        self._pages_recorded: dict[str, Ranges | None] = {}
        self._projections: dict[str, list[tuple[str, str]]] = {}
        self._path = path
        self._staged: dict[str, tuple[Future, tuple]] = {}  # see stage()
        self._stager: ThreadPoolExecutor | None = None
        for (name,) in self.conn.execute(
            f"SELECT name FROM {ALIAS}.sqlite_master WHERE type = 'table' AND name LIKE ?",
            ["%" + STAGED_SUFFIX],
        ).fetchall():  # a run that ended before swapping them in
            self.conn.execute(f"DROP TABLE {ALIAS}.{q(name.decode())}")
        self._end("COMMIT")  # no write may wait here: the stager writes the shadow too

    def _projection(self, table: Table) -> list[tuple[str, str]]:
        """(shadow column, source SQL) pairs: every D1 column, then each derived value. A
        secret column (a session token) is kept only as its digest, which is all change
        detection needs: the shadow must not be one more file holding the raw secrets."""
        if table.name not in self._projections:
            secret = {c.source_name for c in table.columns if c.secret}
            names = self.snapshot.columns(table.name)
            pairs = [
                (f"{name}__sha256", _digest_sql(f"{q(table.name)}.{q(name)}"))
                if name in secret
                else (name, f"{q(table.name)}.{q(name)}")
                for name in names
            ]
            pairs += [(f"{c.name}__derived", c.source_sql) for c in table.columns if c.source_sql]
            self._projections[table.name] = pairs
        return self._projections[table.name]

    def _layout(self, table: Table) -> str:
        return json.dumps(self._projection(table))

    def _recorded_pages(self, table: Table) -> Ranges | None:
        if table.name not in self._pages_recorded:
            row = self.conn.execute(
                f"SELECT pages FROM {PAGES} WHERE table_name = ?", [table.name]
            ).fetchone()
            self._pages_recorded[table.name] = (
                None if row is None else {h: (a, b) for h, a, b in PAGE.iter_unpack(row[0])}
            )
        return self._pages_recorded[table.name]

    def prefetch(self, tables: Sequence[Table]) -> None:
        """List and hash the leaf pages of ``tables`` ahead, in this order, in a worker thread
        with a connection of its own: hashing then overlaps the loading of earlier tables
        (SQLite and hashlib release the GIL). A result is used only if the snapshot reads the
        same version of the file as the worker did (Snapshot.version)."""
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="d1m-pages")
        for table in tables:
            if not any(c.source_sql for c in table.columns):
                self._ahead[table.name] = self._worker.submit(
                    _pages_ahead, self.snapshot.path, table
                )

    def _leaf_pages(self, table: Table) -> dict[bytes, int] | None:
        ahead = self._ahead.pop(table.name, None)
        if ahead is not None:
            version, pages = ahead.result()
            if version == self.snapshot.version():
                return pages
        return self.snapshot.leaf_pages(table)

    def _current_pages(self, table: Table) -> Ranges | None:
        """The source's leaf pages now, with their rowid ranges (taken from the recorded map
        for pages seen before, read from the page otherwise). None when the table has a
        derived column or the snapshot cannot list pages."""
        if table.name not in self._pages_now:
            reads_others = any(c.source_sql for c in table.columns)
            pages = None if reads_others else self._leaf_pages(table)
            if pages is not None:
                known = self._recorded_pages(table) or {}
                new = [h for h in pages if h not in known]
                ranges = self.snapshot.rowid_ranges([pages[h] for h in new])
                pages = {h: known[h] for h in pages if h in known} | dict(
                    zip(new, ranges, strict=True)
                )
            self._pages_now[table.name] = pages
        return self._pages_now[table.name]

    def _scope(self, table: Table) -> list[tuple[int, int]] | None:
        """Disjoint rowid ranges that hold every row which may differ from the shadow (see
        the module's docstring); None when every row must be compared."""
        now, recorded = self._current_pages(table), self._recorded_pages(table)
        if now is None or recorded is None:
            return None
        ranges = sorted(
            [recorded[h] for h in recorded.keys() - now.keys()]
            + [now[h] for h in now.keys() - recorded.keys()]
        )
        merged: list[tuple[int, int]] = []
        for first, last in ranges:
            if first > last:  # a page with no rows
                continue
            if merged and first <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
            else:
                merged.append((first, last))
        return merged

    def usable(self, table: Table) -> bool:
        """Whether a shadow of ``table`` exists, taken with the columns D1 has now."""
        row = self.conn.execute(
            f"SELECT layout FROM {TABLES} WHERE table_name = ?", [table.name]
        ).fetchone()
        return row is not None and row[0].decode() == self._layout(table)

    def generation(self, table: Table) -> int | None:
        """The Postgres generation of ``table`` the shadow's rows are of (None: unknown)."""
        row = self.conn.execute(
            f"SELECT generation FROM {GENERATIONS} WHERE table_name = ?", [table.name]
        ).fetchone()
        return None if row is None else row[0]

    def changes(self, table: Table) -> Changes:
        changes = Changes()
        scope = self._scope(table)
        if scope == []:
            return changes
        if scope is not None:
            self.conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {SCOPE[5:]} (lo INTEGER, hi INTEGER)"
            )
            self.conn.execute(f"DELETE FROM {SCOPE}")
            self.conn.executemany(f"INSERT INTO {SCOPE} VALUES (?, ?)", scope)

        within = "" if scope is None else f"{SCOPE} r CROSS JOIN "  # ranges, then their rows

        def where(rowid: str) -> str:
            return "" if scope is None else f"{rowid} BETWEEN r.lo AND r.hi AND "

        name, pk = q(table.name), table.source_pk
        keys = ", ".join(f"{name}.{q(k)}" for k in pk)
        differs = " OR ".join(f"({sql}) IS NOT s.{q(col)}" for col, sql in self._projection(table))
        for rowid, *key in self.conn.execute(
            f"""SELECT {name}.rowid, {keys} FROM {within}main.{name}
                LEFT JOIN {ALIAS}.{name} s ON s._rowid = {name}.rowid
                WHERE {where(f"{name}.rowid")}(s._rowid IS NULL OR {differs})"""
        ):
            changes.rowids.append(rowid)
            changes.source_pks.append(source_pk_text(_decoded(key), rowid))
        # Shadow rows whose rowid is gone or holds another key now; the key may live on at a
        # new rowid (then it was found above), else the row was deleted.
        same_key = " AND ".join(f"m.{q(k)} IS s.{q(k)}" for k in pk)
        key_exists = " AND ".join(f"e.{q(k)} = s.{q(k)}" for k in pk)
        for rowid, present, *key in self.conn.execute(
            f"""SELECT s._rowid, EXISTS (SELECT 1 FROM main.{name} e WHERE {key_exists}),
                       {", ".join(f"s.{q(k)}" for k in pk)}
                FROM {within}{ALIAS}.{name} s
                LEFT JOIN main.{name} m ON m.rowid = s._rowid
                WHERE {where("s._rowid")}(m.rowid IS NULL OR NOT ({same_key}))"""
        ):
            changes.stale.append(rowid)
            if not present:
                changes.deleted.append(_decoded(key))
                changes.deleted_pks.append(source_pk_text(changes.deleted[-1], rowid))
        return changes

    def _copy_rows(self, table: Table, where: str = "") -> None:
        self.conn.execute(
            _copy_sql(f"{ALIAS}.{q(table.name)}", table, self._projection(table), where)
        )

    def _record(self, table: Table, generation: int) -> None:
        """Record the layout, the generation and the page map: call once the shadow equals
        the snapshot that Postgres committed as ``generation``."""
        self.conn.execute(
            f"INSERT OR REPLACE INTO {TABLES} (table_name, layout) VALUES (?, ?)",
            [table.name, self._layout(table)],
        )
        self.conn.execute(
            f"INSERT OR REPLACE INTO {GENERATIONS} (table_name, generation) VALUES (?, ?)",
            [table.name, generation],
        )
        pages = self._current_pages(table)
        if pages is None:
            self.conn.execute(f"DELETE FROM {PAGES} WHERE table_name = ?", [table.name])
        elif pages != self._recorded_pages(table):
            blob = b"".join(PAGE.pack(h, first, last) for h, (first, last) in pages.items())
            self.conn.execute(f"INSERT OR REPLACE INTO {PAGES} VALUES (?, ?)", [table.name, blob])

    def stage(self, table: Table) -> None:
        """Copy ``table`` whole into a table of its own in the shadow now, on a connection of
        its own in a worker thread, while Postgres loads it; replace_all() then swaps it in.
        SQLite's copy (1.5 s of a 2M-row first sync) so overlaps Postgres's work instead of
        following it. Only when a second connection reads this very snapshot (not in WAL
        mode: Snapshot.arrow_reads); else replace_all() copies on this connection, as before."""
        if not self.snapshot.arrow_reads():
            return
        if self._stager is None:
            self._stager = ThreadPoolExecutor(max_workers=1, thread_name_prefix="d1m-shadow")
        # This connection makes the table: a table another connection created can stay unknown
        # to this one's schema cache (the rename in replace_all then found no such table).
        projection = self._projection(table)
        self.conn.execute(f"DROP TABLE IF EXISTS {_staged(table.name)}")
        self.conn.execute(_create_sql(_staged(table.name), projection))
        self._end("COMMIT")  # the stager writes next: no lock of ours may keep it waiting
        version = self.snapshot.version()
        self._staged[table.name] = (
            self._stager.submit(_stage, self.snapshot.path, self._path, table, projection, version),
            version,
        )

    def replace_all(self, table: Table, generation: int) -> None:
        """After a full load: the shadow becomes the whole source table."""
        name = q(table.name)
        staged = self._staged.pop(table.name, None)
        if staged is None:
            self.conn.execute(f"DROP TABLE IF EXISTS {ALIAS}.{name}")
            self.conn.execute(_create_sql(f"{ALIAS}.{name}", self._projection(table)))
            self._copy_rows(table)
        else:
            future, version = staged
            future.result()
            # This read transaction began before the stager's commit: SQLite would refuse it
            # a write. A new one must still read the version the stager copied.
            self._end("COMMIT")
            if self.snapshot.version() != version:
                raise sqlite3.OperationalError(f"{table.name}: D1 changed while it was copied")
            self.conn.execute(f"DROP TABLE IF EXISTS {ALIAS}.{name}")
            self.conn.execute(f"ALTER TABLE {_staged(table.name)} RENAME TO {name}")
        self._record(table, generation)

    def apply(self, table: Table, rowids: list[int], stale: list[int], generation: int) -> None:
        """After an incremental load: record the processed rows as they are in the snapshot."""
        self.conn.executemany(
            f"DELETE FROM {ALIAS}.{q(table.name)} WHERE _rowid = ?", ((r,) for r in stale)
        )
        if rowids:
            self.snapshot.choose(rowids)
            self._copy_rows(table, f"WHERE rowid IN (SELECT id FROM {CHOSEN_ROWS})")
        self._record(table, generation)

    def commit(self) -> None:
        """Persist the shadow; this ends the snapshot's read transaction, so start a new one."""
        self._end("COMMIT")

    def checkpoint(self) -> None:
        """Commit, and fold the write-ahead log into the shadow file; once a run, when the
        tables are done (the log holds every page the run wrote until then)."""
        if self._worker is not None:
            self._worker.shutdown(cancel_futures=True)
            self._ahead.clear()
        if self._stager is not None:
            self._stager.shutdown()
            self._stager = None
        self._end("COMMIT")
        for name in self._staged:  # of tables that failed: no shadow of theirs changes
            self.conn.execute(f"DROP TABLE IF EXISTS {_staged(name)}")
        self._staged.clear()
        self._end("COMMIT")
        self.conn.execute("COMMIT")  # a checkpoint waits for open transactions, ours included
        self.conn.execute(f"PRAGMA {ALIAS}.wal_checkpoint(TRUNCATE)")
        self.conn.execute("BEGIN")

    def rollback(self) -> None:
        """Forget what a failed table wrote to the shadow since the last commit."""
        self._end("ROLLBACK")

    def _end(self, statement: str) -> None:
        if self.conn.in_transaction:
            self.conn.execute(statement)
        self.conn.execute("BEGIN")
        self._pages_now.clear()  # the new read transaction may see a newer source
        self._pages_recorded.clear()
        self._projections.clear()


def _staged(table_name: str) -> str:
    """The shadow's staging table of ``table_name``, qualified."""
    return f"{ALIAS}.{q(table_name + STAGED_SUFFIX)}"


def _create_sql(into: str, projection: list[tuple[str, str]]) -> str:
    """A shadow table ``into`` (qualified) for rows of ``projection``, at their source rowid."""
    columns = ", ".join(q(col) for col, _ in projection)  # no type: no affinity
    return f"CREATE TABLE {into} (_rowid INTEGER PRIMARY KEY, {columns})"


def _copy_sql(into: str, table: Table, projection: list[tuple[str, str]], where: str = "") -> str:
    """``table``'s source rows (those ``where`` holds for) into the shadow table ``into``."""
    name = q(table.name)
    return (
        f"INSERT OR REPLACE INTO {into} (_rowid, {', '.join(q(col) for col, _ in projection)}) "
        f"SELECT {name}.rowid, {', '.join(sql for _, sql in projection)} FROM main.{name} {where}"
    )


def _stage(
    source: Path,
    shadow: Path,
    table: Table,
    projection: list[tuple[str, str]],
    version: tuple,
) -> None:
    """Shadow.stage's copy, on a connection of its own: the rows of ``table`` in the source
    snapshot of ``version`` into the shadow's staging table for it (made by Shadow.stage),
    committed."""
    conn = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute(f"ATTACH DATABASE ? AS {ALIAS}", [f"{shadow.resolve().as_uri()}?mode=rw"])
        conn.execute(f"PRAGMA {ALIAS}.synchronous = NORMAL")  # WAL is the file's own setting
        conn.create_function(DIGEST, 2, _digest, deterministic=True)
        conn.execute("BEGIN")
        if Snapshot(conn, source).version() != version:
            raise sqlite3.OperationalError(f"{table.name}: D1 changed before it was copied")
        conn.execute(_copy_sql(_staged(table.name), table, projection))
        conn.execute("COMMIT")
    finally:
        conn.close()


def _pages_ahead(path: Path, table: Table) -> tuple[tuple, dict[bytes, int] | None]:
    with SqliteSource(path).snapshot() as snapshot:
        return snapshot.version(), snapshot.leaf_pages(table)


def _digest_sql(expr: str) -> str:
    """SQL giving the digest of ``expr``'s value; text is passed as its bytes, so that text
    which is not valid UTF-8 reaches _digest as it is."""
    value = f"CASE WHEN typeof({expr}) = 'text' THEN CAST({expr} AS BLOB) ELSE {expr} END"
    return f"{DIGEST}(typeof({expr}), {value})"


def _digest(storage: str, value: bytes | int | float | None) -> bytes | None:
    """SHA-256 of a value and its storage class: equal digests mean equal values of the
    same type, as ``IS NOT`` compares them (the integer 1 is not the text '1')."""
    if value is None:
        return None
    data = value if isinstance(value, bytes) else repr(value).encode()
    return hashlib.sha256(f"{storage}:".encode() + data).digest()


def _decoded(keys: list) -> list:
    return [k.decode() if isinstance(k, bytes) else k for k in keys]
