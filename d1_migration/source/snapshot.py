"""Reading D1 (a SQLite file) into Arrow record batches.

Each target column is selected as the projections its kind declares (spec/kinds.py): the storage
class of a value the kind does not accept, a value that is homogeneous for the kind, and the
kind's extras.

A whole table is read by ADBC's SQLite driver, which builds the Arrow arrays in C: 2 to 4 times
faster than Python's ``sqlite3`` handing over a tuple per row (benchmarks/source_read.py), and it
leaves the GIL to the conversions. ADBC opens a connection of its own, so it reads the snapshot's
state only while the snapshot's read lock keeps every writer from committing: that holds in
rollback-journal mode (a D1 export, a copied file), not in WAL mode, where a reader sees what was
committed when *it* began. A WAL file, and a read of chosen rowids (their temp table lives on the
snapshot's connection), take ``sqlite3``. The driver infers each column's type from the values it
meets, so the query starts with one row of typed zeros that fixes every type and is dropped.

ADBC's read leaves out the storage classes: typeof() and its comparisons, per value, were 35%
of SQLite's work (every table of a 2M-row file: 5.4 s with them, 3.5 s without). A value is read
exactly when its class is one the kind accepts (``Projection.classes``), so a row that has as
many values as non-NULL source values (one ``IS NOT NULL`` each, counted by SQLite) holds no
wrong class; the classes of the other rows, which are bad data and rare, are read again by
their rowids.
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import hashlib
import json
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import adbc_driver_sqlite.dbapi
import pyarrow as pa
import pyarrow.compute as pc

from d1_migration.spec.kinds import WRONG_CLASS
from d1_migration.spec.model import Column, Table, q

ROWID = "_rowid"
VALUES = "_values"  # ADBC's read without classes: a row's count of non-NULL source values


def source_expr(table: Table, column: Column) -> str:
    return column.source_sql or f"{q(table.name)}.{q(column.source_name or column.name)}"


def column_projections(table: Table, column: Column) -> list[tuple[str, str, pa.DataType]]:
    """(alias, SQL, Arrow type) of each value a converter reads: ``<name>__wrong_class``,
    ``__value`` and the kind's extras."""
    x = source_expr(table, column)
    return [
        (f"{column.name}__{p.suffix}", p.sql.format(x=x), p.arrow) for p in column.kind.projections
    ]


CHOSEN_ROWS = "temp.d1m_chosen_rows"  # filled by Snapshot.choose
SLICE = "temp.d1m_slice"  # the rowid ranges of Snapshot.slice_rows


@dataclass(frozen=True)
class Blocks:
    """Every ``count``-th block of ``size`` consecutive rowids (``rowid // size``), from block
    ``index``: the rows of a content check's slice (verify/content.py)."""

    index: int
    count: int
    size: int


def _projections(table: Table, classes: bool) -> list[tuple[str, str, pa.DataType]]:
    """(alias, SQL, Arrow type) of the batch query's columns; without ``classes``, VALUES
    instead of the wrong_class projections (see the module's docstring)."""
    out = [(ROWID, f"{q(table.name)}.rowid", pa.int64())]
    for column in table.source_columns:
        out += [p for p in column_projections(table, column) if classes or not _is_class(p[0])]
    if not classes:
        present = (f"({source_expr(table, c)} IS NOT NULL)" for c in table.source_columns)
        out.append((VALUES, " + ".join(present) or "0", pa.int64()))
    return out


def _is_class(alias: str) -> bool:
    """Whether a batch column is a wrong_class projection."""
    return alias.endswith(f"__{WRONG_CLASS}")


def select_sql(
    table: Table, chosen: bool = False, where: str | None = None, classes: bool = True
) -> str:
    """The batch query; ``chosen`` limits it to the rowids in CHOSEN_ROWS, ``where`` to the
    rows it holds for."""
    cols = ",\n  ".join(f"{sql} AS {q(alias)}" for alias, sql, _ in _projections(table, classes))
    if chosen:
        where = f"{q(table.name)}.rowid IN (SELECT id FROM {CHOSEN_ROWS})"
    where = f"\nWHERE {where}" if where else ""
    return f"SELECT\n  {cols}\nFROM {q(table.name)}{where}\nORDER BY {q(table.name)}.rowid"


def batch_schema(table: Table, classes: bool = True) -> pa.Schema:
    """The Arrow schema of select_sql's rows."""
    return pa.schema([pa.field(alias, arrow) for alias, _, arrow in _projections(table, classes)])


def source_pk_text(keys: list, rowid: int) -> str:
    """How a source row is named in quarantine and sync state: its key text, a JSON array for a
    composite key, or ``rowid:N`` when the key is not text (SQLite allows a NULL key)."""
    if len(keys) > 1:
        return json.dumps(keys, ensure_ascii=False)
    return keys[0] if isinstance(keys[0], str) else f"rowid:{rowid}"


@dataclass(frozen=True)
class RawRow:
    source_pk: str
    values: dict  # JSON-ready, every original value recoverable exactly


def _json_value(value: object, storage: str, secret: bool) -> object:
    """Encode a SQLite value for raw_row JSONB without losing or inventing anything."""
    if value is None:
        return None
    if secret:
        data = value if isinstance(value, bytes) else str(value).encode()
        return {"$sha256": hashlib.sha256(data).hexdigest()}
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$real": repr(value)}
    if storage == "blob":
        return {"$blob_hex": value.hex()}
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return {"$text_base64": base64.b64encode(value).decode(), "$note": "not valid UTF-8"}
    if "\x00" in text:
        return {"$text_base64": base64.b64encode(value).decode(), "$note": "contains NUL"}
    return text


# The typed zero of the first row of an ADBC read, by the Arrow type of the projection; the
# driver's type for it (text arrives as a string array, viewed as the bytes it holds).
_TYPED_ZERO = {pa.int8(): "0", pa.int64(): "0", pa.float64(): "0.0", pa.binary(): "''"}


class Snapshot:
    """One consistent read of the source: everything read through it sees the same state."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path
        stat = os.stat(path)  # the file the connection has just opened, for _file()
        self._file_id = (stat.st_dev, stat.st_ino)
        self._locked: tuple[int, int, bytes] | None = None  # version() under the read lock
        self._arrow: adbc_driver_sqlite.dbapi.Connection | None = None

    def close(self) -> None:
        if self._arrow is not None:
            self._arrow.close()
            self._arrow = None
        self._conn.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """For the shadow, which attaches to this connection to compare within SQLite."""
        return self._conn

    def table_names(self) -> list[str]:
        rows = self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return [r[0].decode() for r in rows]

    def columns(self, table: str) -> dict[str, str]:
        """The columns D1 declares for ``table``, in order, with their declared types."""
        rows = self._conn.execute(f"PRAGMA main.table_info({q(table)})")
        return {r[1].decode(): r[2].decode().upper() for r in rows}

    def count(self, table: Table) -> int:
        return self._conn.execute(f"SELECT count(*) FROM {q(table.name)}").fetchone()[0]

    def leaf_pages(self, table: Table) -> dict[bytes, int] | None:
        """The table's leaf pages, as a hash of each page's bytes (and of its rows' overflow
        pages) mapped to its page number. A page whose hash a re-sync has seen before holds the
        same rows with the same values (sync/shadow.py builds on that). The pages are read from
        the file while this snapshot's read lock keeps writers out, which only holds outside
        WAL mode; None there, or when this SQLite lacks the dbstat table that lists them."""
        if self._conn.execute("PRAGMA main.journal_mode").fetchone()[0].lower() == b"wal":
            return None
        try:
            listed = self._conn.execute(
                "SELECT pageno, pagetype, path FROM dbstat WHERE schema = 'main' AND name = ?",
                [table.name],
            ).fetchall()
        except sqlite3.OperationalError:  # no such table: dbstat
            return None
        leaves = sorted(pageno for pageno, kind, _ in listed if kind == b"leaf")
        overflow: dict[bytes, list[int]] = {}  # leaf path -> overflow pages of its rows
        for pageno, kind, path in listed:
            if kind == b"overflow":  # path: the leaf's path, cell number, "+", overflow number
                overflow.setdefault(path[: path.rindex(b"/") + 1], []).append(pageno)
        spilling = {p: path for p, kind, path in listed if kind == b"leaf" and path in overflow}
        size = self._page_size()
        hashes: dict[bytes, int] = {}
        with self._file() as fd:
            for first, count in _runs(leaves):  # one read per run of adjacent pages
                run = memoryview(os.pread(fd, count * size, (first - 1) * size))
                for i in range(count):
                    digest = hashlib.sha256(run[i * size : (i + 1) * size])
                    for extra in overflow.get(spilling.get(first + i), ()):
                        digest.update(os.pread(fd, size, (extra - 1) * size))
                    hashes[digest.digest()[:16]] = first + i
        return hashes

    def rowid_ranges(self, pagenos: list[int]) -> list[tuple[int, int]]:
        """(first, last) rowid of each table leaf page; (1, 0) for a page with no rows."""
        size = self._page_size()
        with self._file() as fd:
            return [_leaf_rowids(os.pread(fd, size, (p - 1) * size), p == 1) for p in pagenos]

    def version(self) -> tuple[int, int, bytes]:
        """Which file this snapshot reads and in which state: its device and inode, and the
        file change counter of its header, read under the read lock (SQLite bumps it on every
        commit outside WAL mode). Two snapshots of the same version read the same pages."""
        self._conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # take the lock
        with self._file() as fd:
            return (*self._file_id, os.pread(fd, 4, 24))

    @property
    def path(self) -> Path:
        return self._path

    def _page_size(self) -> int:
        return self._conn.execute("PRAGMA main.page_size").fetchone()[0]

    @contextmanager
    def _file(self) -> Iterator[int]:
        """The file, opened for reading pages beside SQLite; it must still be the one SQLite
        has open (a file replaced under the same name would give another file's pages)."""
        fd = os.open(self._path, os.O_RDONLY)
        try:
            stat = os.fstat(fd)
            if (stat.st_dev, stat.st_ino) != self._file_id:
                raise RuntimeError(f"{self._path} was replaced while being read; sync again")
            yield fd
        finally:
            os.close(fd)

    def choose(self, rowids: Iterable[int]) -> None:
        """Put ``rowids`` in CHOSEN_ROWS, for queries that read only those rows."""
        self._conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS d1m_chosen_rows (id INTEGER PRIMARY KEY)"
        )
        self._conn.execute(f"DELETE FROM {CHOSEN_ROWS}")
        self._conn.executemany(
            f"INSERT OR IGNORE INTO {CHOSEN_ROWS} VALUES (?)", ((r,) for r in rowids)
        )

    def rowids_of(self, table: Table, source_pks: list[str]) -> list[int]:
        """Current rowids of rows named by source_pk_text (quarantined rows to retry)."""
        rowids = []
        for source_pk in source_pks:
            if source_pk.startswith("rowid:"):
                rowids.append(int(source_pk[6:]))
                continue
            keys = json.loads(source_pk) if len(table.source_pk) > 1 else [source_pk]
            where = " AND ".join(f"{q(k)} = ?" for k in table.source_pk)
            found = self._conn.execute(
                f"SELECT rowid FROM main.{q(table.name)} WHERE {where}", keys
            ).fetchone()
            if found:
                rowids.append(found[0])
        return rowids

    def slice_rows(
        self, table: Table, index: int, count: int, block: int = 1
    ) -> tuple[list[int], set[str]]:
        """Rowids and keys (source_pk_text) of the rows in every ``count``-th block of
        ``block`` consecutive rowids (rowid // block), from block ``index``: a slice of the
        table that the next slices complete (verify/content.py). Blocks of many rows are read
        as rowid ranges, so a slice costs its own rows rather than a scan of the table."""
        name, keys = q(table.name), ", ".join(q(k) for k in table.source_pk)
        rowids, pks = [], set()

        def add(rowid: int, key: list) -> None:
            rowids.append(rowid)
            pks.add(source_pk_text([k.decode() if isinstance(k, bytes) else k for k in key], rowid))

        low, high = self._conn.execute(f"SELECT min(rowid), max(rowid) FROM main.{name}").fetchone()
        if low is None:
            return rowids, pks
        first = low // block + (index - low // block) % count  # the slice's first block
        blocks = range(first, high // block + 1, count)
        if block == 1:
            for rowid, *key in self._conn.execute(
                f"SELECT rowid, {keys} FROM main.{name} "
                "WHERE ((rowid % ?) + ?) % ? = ? ORDER BY rowid",
                [count, count, count, index],
            ):
                add(rowid, key)
            return rowids, pks
        if len(blocks) > 100_000:  # sparse rowids: one scan beats that many ranges
            for rowid, *key in self._conn.execute(
                f"SELECT rowid, {keys} FROM main.{name} ORDER BY rowid"
            ):
                if (rowid // block) % count == index:
                    add(rowid, key)
            return rowids, pks
        self._conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {SLICE[5:]} (lo INTEGER, hi INTEGER)")
        self._conn.execute(f"DELETE FROM {SLICE}")
        self._conn.executemany(
            f"INSERT INTO {SLICE} VALUES (?, ?)",
            ((b * block, b * block + block - 1) for b in blocks),
        )
        for rowid, *key in self._conn.execute(
            f"SELECT t.rowid, {', '.join(f't.{q(k)}' for k in table.source_pk)} FROM {SLICE} r "
            f"CROSS JOIN main.{name} t WHERE t.rowid BETWEEN r.lo AND r.hi ORDER BY t.rowid"
        ):
            add(rowid, key)
        return rowids, pks

    def batches(
        self, table: Table, batch_rows: int, rowids: Sequence[int] | Blocks | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The table (or only ``rowids`` of it) as Arrow batches of at most ``batch_rows``."""
        if isinstance(rowids, Blocks):
            return self._block_batches(table, batch_rows, rowids)
        if rowids is None and self.arrow_reads():
            return self.arrow_batches(table, batch_rows)
        return self.sqlite_batches(table, batch_rows, rowids)

    def _block_batches(
        self, table: Table, batch_rows: int, blocks: Blocks
    ) -> Iterator[pa.RecordBatch]:
        """The rows of ``blocks``: read by ADBC with the blocks as a condition on the rowid
        (SQLite passes over the other rows without evaluating their projections), rather
        than one by one by sqlite3 (a 2M-row database's tenth: 7.5 s of a content check's
        13.3 s); by sqlite3 when ADBC cannot see the snapshot."""
        if not self.arrow_reads():
            rowids = self.slice_rows(table, blocks.index, blocks.count, blocks.size)[0]
            return self.sqlite_batches(table, batch_rows, rowids)
        name = q(table.name)
        low = self._conn.execute(f"SELECT min(rowid) FROM main.{name}").fetchone()[0]
        if low is None:
            return iter(())
        # rowid // size as SQLite's integer division (which truncates) gives it for rowids of
        # any sign: counted from the first block, both terms are >= 0
        first = low // blocks.size
        block = f"({name}.rowid - {first * blocks.size}) / {blocks.size} + {first % blocks.count}"
        return self.arrow_batches(
            table, batch_rows, where=f"({block}) % {blocks.count} = {blocks.index}"
        )

    def sqlite_batches(
        self, table: Table, batch_rows: int, rowids: Sequence[int] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """batches() through Python's sqlite3, on the snapshot's own connection."""
        schema = batch_schema(table)
        if rowids is not None:
            self.choose(rowids)
        cursor = self._conn.execute(select_sql(table, chosen=rowids is not None))
        while rows := cursor.fetchmany(batch_rows):
            columns = list(zip(*rows, strict=True))
            yield pa.RecordBatch.from_arrays(
                [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)],
                schema=schema,
            )

    def arrow_reads(self) -> bool:
        """Whether a second connection sees this snapshot: not in WAL mode, with the read lock
        held (version() takes it, and keeps the state it reads for arrow_batches to confirm)."""
        if self._locked is None:
            if self._conn.execute("PRAGMA main.journal_mode").fetchone()[0].lower() == b"wal":
                return False
            self._locked = self.version()
        if self._arrow is None:
            uri = f"{self._path.resolve().as_uri()}?mode=ro"
            self._arrow = adbc_driver_sqlite.dbapi.connect(uri, autocommit=True)
        return True

    def arrow_batches(
        self, table: Table, batch_rows: int, where: str | None = None
    ) -> Iterator[pa.RecordBatch]:
        """batches() of the whole table (or of the rows ``where`` holds for) through ADBC, in
        rowid order, typed as sqlite3's; only while arrow_reads() holds."""
        if not self.arrow_reads():
            raise RuntimeError(f"{self._path}: a second connection would not see this snapshot")
        schema, read = batch_schema(table), batch_schema(table, classes=False)
        last = None  # the previous batch's last rowid
        query = select_sql(table, where=where, classes=False)
        with closing(self._adbc_batches(query, read, batch_rows)) as batches:
            for batch in batches:
                rowid = batch[ROWID]
                ordered = pc.all(pc.greater(rowid[1:], rowid[:-1])).as_py() is not False
                if not ordered or (last is not None and rowid[0].as_py() <= last):
                    raise RuntimeError(f"{table.name}: SQLite returned rows out of rowid order")
                last = rowid[-1].as_py()
                yield self._with_classes(table, batch, schema)
        if self.version() != self._locked:  # the read lock should make this impossible
            raise RuntimeError(f"{self._path} changed while {table.name} was read; sync again")

    def _adbc_batches(
        self, query: str, schema: pa.Schema, batch_rows: int, parameters: Sequence | None = None
    ) -> Iterator[pa.RecordBatch]:
        """``query``'s rows through ADBC as ``schema`` (see the module's docstring)."""
        zeros = ", ".join(f"{_TYPED_ZERO[f.type]} AS {q(f.name)}" for f in schema)
        cursor = self._arrow.cursor()
        try:
            cursor.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(batch_rows)})
            cursor.execute(f"SELECT {zeros} UNION ALL SELECT * FROM ({query})", parameters)
            for i, batch in enumerate(cursor.fetch_record_batch()):
                if i == 0:
                    batch = batch.slice(1)  # the typed zeros
                if batch.num_rows:
                    arrays = [_typed(a, f) for a, f in zip(batch.columns, schema, strict=True)]
                    yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        finally:
            cursor.close()

    def _with_classes(
        self, table: Table, batch: pa.RecordBatch, schema: pa.Schema
    ) -> pa.RecordBatch:
        """A batch read without the wrong_class projections, as ``schema`` with them: NULL in
        each row that has a value for every non-NULL source value, read by rowid for the
        others (see the module's docstring)."""
        n = batch.num_rows
        counts = [
            pc.cast(pc.is_valid(batch[f"{c.name}__value"]), pa.int64())
            for c in table.source_columns
        ]
        short = pc.not_equal(functools.reduce(pc.add, counts), batch[VALUES])
        none = pa.nulls(n, pa.int8())
        found: dict[str, pa.Array] = {}
        if pc.any(short).as_py():
            rowids = batch[ROWID].filter(short)
            wanted = [p for p in _projections(table, True) if p[0] == ROWID or _is_class(p[0])]
            query = (
                f"SELECT {', '.join(f'{sql} AS {q(alias)}' for alias, sql, _ in wanted)} "
                f"FROM {q(table.name)} WHERE {q(table.name)}.rowid IN "
                "(SELECT value FROM json_each(?)) ORDER BY 1"
            )
            read = pa.schema([pa.field(alias, arrow) for alias, _, arrow in wanted])
            wrong = pa.Table.from_batches(
                self._adbc_batches(query, read, len(rowids), [json.dumps(rowids.to_pylist())]),
                read,
            )
            if not wrong[ROWID].equals(pa.chunked_array([rowids])):
                raise RuntimeError(f"{table.name}: rows changed while they were read")
            found = {
                name: pc.replace_with_mask(none, short, wrong[name].combine_chunks())
                for name in read.names[1:]
            }
        columns = [found.get(f.name, none) if _is_class(f.name) else batch[f.name] for f in schema]
        return pa.RecordBatch.from_arrays(columns, schema=schema)

    def raw_rows(self, table: Table, rowids: Iterable[int]) -> dict[int, RawRow]:
        """Original values of the given rows, for quarantine. Error path only."""
        secret = {c.source_name for c in table.columns if c.secret}
        pk = table.source_pk
        out: dict[int, RawRow] = {}
        names = list(self.columns(table.name))
        typed = ", ".join(f"typeof({q(n)}), {q(n)}" for n in names)
        ids = sorted(set(rowids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            cursor = self._conn.execute(
                f"SELECT rowid, {typed} FROM {q(table.name)} WHERE rowid IN "
                f"({','.join('?' * len(chunk))})",
                chunk,
            )
            for rowid, *pairs in cursor:
                row = {
                    n: _json_value(pairs[2 * i + 1], pairs[2 * i].decode(), n in secret)
                    for i, n in enumerate(names)
                }
                out[rowid] = RawRow(source_pk_text([row.get(k) for k in pk], rowid), row)
        return out


def _typed(array: pa.Array, field: pa.Field) -> pa.Array:
    """An ADBC column as the projection's type: text as its bytes (unvalidated, as sqlite3 with
    ``text_factory=bytes`` gives them: the converters find invalid UTF-8), the class code
    narrowed. Any other difference is a projection that is not homogeneous: a bug, not data."""
    if array.type == field.type:
        return array
    if field.type == pa.binary() and array.type == pa.string():
        return array.view(pa.binary())
    if field.type == pa.int8() and array.type == pa.int64():
        return pc.cast(array, pa.int8())  # safe: fails on a value beyond int8
    raise TypeError(f"{field.name}: SQLite gave {array.type}, expected {field.type}")


def _varint(page: bytes, at: int) -> tuple[int, int]:
    """SQLite's big-endian varint at ``at``: (value, offset after it)."""
    value = 0
    for i in range(8):
        byte = page[at + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    return (value << 8) | page[at + 8], at + 9


def _leaf_rowids(page: bytes, first_page: bool) -> tuple[int, int]:
    """First and last rowid on a table b-tree leaf page (its cells are in rowid order)."""
    header = 100 if first_page else 0  # page 1 starts with the database header
    if page[header] != 0x0D:
        raise ValueError("not a table leaf page")
    cells = int.from_bytes(page[header + 3 : header + 5], "big")
    if not cells:
        return 1, 0

    def rowid(cell: int) -> int:
        at = int.from_bytes(page[header + 8 + 2 * cell : header + 10 + 2 * cell], "big")
        _, at = _varint(page, at)  # payload size
        value = _varint(page, at)[0]
        return value - (1 << 64) if value >= 1 << 63 else value

    return rowid(0), rowid(cells - 1)


def _runs(pages: list[int]) -> Iterator[tuple[int, int]]:
    """(first page, count) for each run of consecutive numbers in sorted ``pages``."""
    start = 0
    for i in range(1, len(pages) + 1):
        if i == len(pages) or pages[i] != pages[i - 1] + 1:
            yield pages[start], i - start
            start = i


class SqliteSource:
    """A D1 database as a SQLite file: a copy of production, or wrangler's local state."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        if not self.path.is_file():
            raise FileNotFoundError(f"D1 source database not found: {self.path}")
        conn = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,  # a load reads ahead in a thread (target/first_load.py)
        )
        conn.text_factory = bytes
        snapshot = Snapshot(conn, self.path)
        try:
            conn.execute("BEGIN")  # a read transaction: one snapshot, even in WAL mode
            yield snapshot
        finally:
            snapshot.close()


# D1's and SQLite's own tables: never app data, and D1 refuses reads of some (_cf_KV).
INTERNAL_TABLES = ("_cf_*", "sqlite_*", "d1_migrations")


def skipped_table(name: str, skip: Iterable[str] = ()) -> bool:
    """Whether a D1 table is left alone: one of D1's own, or matched by ``skip`` (the ``d1``
    resource's ``skip_tables``). The one test every reader of D1's tables applies (verify/drift.py,
    the ``d1://`` copy), so that a table one of them skips is never read by another."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in (*INTERNAL_TABLES, *skip))
