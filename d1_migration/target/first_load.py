"""First load into an empty table: one write. The rules decide in Arrow, the survivors are COPYed
straight into the target.

The staged path (load.py) COPYs every converted row into a temporary table, deletes there what
Postgres would refuse (CHECKs, UNIQUE keys, FKs, derived NOT NULLs) and then INSERTs the rest into
the target: every row is written twice, and Postgres checks each FK once per row through its
trigger. Into an empty table the same decisions can be made on the batches as they stream by,
because SQLite hands them over in rowid order and every rule keeps the lowest rowid:

- CHECK expressions are evaluated on the converted columns (``arrow_check``: comparisons,
  AND/OR/NOT, IS [NOT] NULL, with SQL's three-valued logic); a table with an expression this
  does not read takes the staged path.
- UNIQUE keys (the primary key first): Postgres finds duplicates, in bulk. A key constraint no
  other table's FK depends on is dropped for the load and added again after it (building an
  index from sorted rows: a COPY of points_ledger at 2M rows took 6.3 s with its two key indexes
  in place, 1.2 s + 1.3 s without them and building them after); the others stay in place and
  refuse a duplicate during the COPY. Rows that claim a key (they passed the CHECKs) but a later
  rule rejects are compared with the table afterwards. On any duplicate, the table's load rolls
  back to its savepoint and is done again with the keys decided in Python: a row is a duplicate
  when an earlier surviving row has its key, the keys seen so far kept per key (in a dict, with
  the rowid that was kept). Duplicates are rare, so memory stays at a batch (the dicts of a 10M
  row database's points_ledger would be hundreds of MB), and the usual load keeps no key in
  Python. A table that refers to itself is always decided in Python.
- FKs to other tables: membership in the parent's key set, read from Postgres once per sync
  (parents load first; Prefetch keeps it for the tables after). A table that refers to itself
  COPYs the rows that passed the checks and keys, then runs load.py's orphan loop on them in
  Arrow and deletes the orphans it finds, FK constraints being dropped for the load so that
  nothing cascades.
- NOT NULL columns derived from a related row that gave no value.

FK constraints are dropped before the COPY and added again after it (one validating join each,
rather than a trigger call per row), key constraints as above, secondary indexes rebuilt after
the load, all inside the table's transaction: atomic as before. id_map and ref_map entries are
COPYed after the table's rows, in its savepoint.

The rows of a table go in in one COPY (_CopyStream), so that Postgres stores one batch while
the next is decided and encoded; a batch with an orphan ends it for the query that names the
orphan's reason, and the next batch begins another. A value Postgres itself refuses (a JSON
escape its jsonb does not take) fails that COPY: the table goes back to its savepoint and in
again in a COPY per batch, where the failing batch is rolled back to a savepoint of its own,
its rows are tried one by one into a staging table (TableLoad.copy, as the staged path does),
and the batch is decided again without the refused rows. The one difference from the staged
path: a row that Postgres would refuse *and* that a rule rejects first is quarantined under the
rule's reason (the staged path names Postgres's), since it never reaches Postgres.

Reading SQLite and converting overlap with Postgres ingesting the previous batch: a thread
reads SQLite ahead, another converts what it read, while this one decides and COPYs. They start
before the parents' keys are read and the DDL runs, which is Postgres's work too.
"""

from __future__ import annotations

import functools
import itertools
import queue
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, closing, nullcontext
from dataclasses import dataclass, field

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from d1_migration.source.snapshot import ROWID, Snapshot
from d1_migration.spec.model import Column, Kind, Schema, Table, q
from d1_migration.target.binary import HEADER, TRAILER, BinaryRows
from d1_migration.target.ddl import create_index_sql
from d1_migration.target.load import ID_MAP, REF_MAP, Counts, TableLoad, _csv
from d1_migration.transforms import SOURCE_ID, SOURCE_TEXT, Converted, Reject, convert_batch

# How long the LOCK before a first load's DDL waits before it lets go and tries again
# (FirstLoad._lock_for_ddl); below Postgres's deadlock_timeout (1 s), so it gives way first.
LOCK_WAIT = "200ms"
LOCK_RETRY_SECONDS = 0.05

ENABLED = True  # False: every load takes the staged path (benchmarks and the equivalence test)
READ_AHEAD = 2  # converted batches waiting for Postgres; each is one batch of memory

# Kinds whose Arrow equality is Postgres's equality, and whose Arrow text is Postgres's ::text.
_KEY_KINDS = {Kind.ID, Kind.TEXT, Kind.ENUM, Kind.INTEGER, Kind.BIGINT}
# A TOKEN_HASH is '\\x' and a lower-case hex digest: equal text, equal bytes.
_UNIQUE_KINDS = _KEY_KINDS | {Kind.BOOLEAN, Kind.DATE, Kind.TIMESTAMPTZ, Kind.TOKEN_HASH}


# -- CHECK expressions in Arrow -----------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z_0-9]*)|(>=|<=|<>|!=|=|<|>|\(|\)))")
_COMPARE = {
    "=": pc.equal,
    "<>": pc.not_equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}
Columns = dict[str, pa.Array]
Expr = Callable[[Columns], "pa.Array | pa.Scalar"]


class _Unreadable(ValueError):
    pass


def _tokens(expr: str) -> list[str]:
    out, at = [], 0
    while at < len(expr.rstrip()):
        match = _TOKEN.match(expr, at)
        if not match:
            raise _Unreadable(expr)
        out.append(match.group(match.lastindex))
        at = match.end()
    return out


def arrow_check(expr: str, columns: set[str]) -> Expr | None:
    """The CHECK expression as a function of the converted columns (None: not one this reads).
    Its value is SQL's: NULL where an operand is NULL, so a row fails only where it is false."""
    try:
        tokens = _tokens(expr)
    except _Unreadable:
        return None
    at = 0

    def peek() -> str | None:
        return tokens[at] if at < len(tokens) else None

    def take(expected: str | None = None) -> str:
        nonlocal at
        if at >= len(tokens) or (expected and tokens[at].upper() != expected):
            raise _Unreadable(expr)
        at += 1
        return tokens[at - 1]

    def either() -> Expr:
        left = both()
        while (peek() or "").upper() == "OR":
            take()
            left = _binary(pc.or_kleene, left, both())
        return left

    def both() -> Expr:
        left = negation()
        while (peek() or "").upper() == "AND":
            take()
            left = _binary(pc.and_kleene, left, negation())
        return left

    def negation() -> Expr:
        if (peek() or "").upper() == "NOT":
            take()
            inner = negation()
            return lambda cols: pc.invert(inner(cols))
        return comparison()

    def comparison() -> Expr:
        left = atom()
        op = peek()
        if op in _COMPARE:
            take()
            return _binary(_COMPARE[op], left, atom())
        if (op or "").upper() == "IS":
            take()
            negate = (peek() or "").upper() == "NOT"
            if negate:
                take()
            take("NULL")
            test = pc.is_valid if negate else pc.is_null
            return lambda cols: test(left(cols))
        return left

    def atom() -> Expr:
        token = take()
        word = token.upper()
        if token == "(":
            inner = either()
            take(")")
            return inner
        if token.isdigit():
            value = pa.scalar(int(token))
            return lambda _: value
        if word in ("TRUE", "FALSE"):
            flag = pa.scalar(word == "TRUE")
            return lambda _: flag
        if token in columns:
            return lambda cols: cols[token]
        raise _Unreadable(expr)

    try:
        result = either()
    except _Unreadable:
        return None
    return result if at == len(tokens) else None


def _binary(op: Callable, left: Expr, right: Expr) -> Expr:
    return lambda cols: op(left(cols), right(cols))


# -- the load -----------------------------------------------------------------------------


@dataclass
class _Decision:
    """One batch's verdict: which rows go to Postgres, the rejects, the keys they claim."""

    survivors: pa.Array  # boolean mask over the batch's good rows
    rejects: list[Reject] = field(default_factory=list)
    claimed: list[dict] = field(default_factory=list)  # per unique key: key -> kept rowid
    claimants: pa.Array | None = None  # rows that claim their keys, survivors or not


class _KeysCollide(Exception):
    """Two rows that passed the CHECKs share a key: the load is done again, keys in Python."""


def _reason_rejects(rows: pa.Table, mask: pa.Array, make: Callable[[dict], Reject]) -> list:
    return [make(row) for row in rows.filter(mask).to_pylist()]


def eligible(table: Table) -> bool:
    """Whether every rule of the table can be decided in Arrow (else: the staged path)."""
    names = {c.name for c in table.source_columns}
    key_kinds = [table.column(c).kind for cols in table.unique_keys for c in cols]
    own = [c for c in table.foreign_keys if c.parent[0] == table.name]
    return (
        all(
            arrow_check(expr, names) is not None
            for expr in [c.check for c in table.columns if c.check] + [e for _, e in table.checks]
        )
        and all(k in _UNIQUE_KINDS for k in key_kinds)
        and table.column(table.primary_key[0]).kind in _KEY_KINDS
        and all(c.kind in (Kind.ID, Kind.TEXT) for c in table.foreign_keys)
        and all(c in names for cols in table.unique_keys for c in cols)
        and not (own and any(c.source_sql and not c.nullable for c in table.columns))
    )


class _ReadAhead:
    """``produce``'s items, made READ_AHEAD ahead in a thread from start() or from the moment
    the block is entered (SQLite and Arrow work while Postgres does); its errors are raised to
    the reader, and leaving the block early (or close()) stops the thread."""

    _DONE = object()

    def __init__(self, produce: Callable[[], Generator]) -> None:
        self._produce = produce
        self._out: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="d1m-read-ahead", daemon=True)

    def start(self) -> _ReadAhead:
        if self._thread.ident is None:  # not started yet
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            with closing(self._produce()) as items:
                for item in items:
                    if not self._hand_over(item):
                        return
            self._hand_over(self._DONE)
        except BaseException as error:  # handed to the reader, which raises it
            self._hand_over(error)

    def _hand_over(self, item: object) -> bool:
        """Queue ``item`` unless the reader has left (then False)."""
        while not self._stop.is_set():
            try:
                self._out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __enter__(self) -> Iterator:
        self.start()
        return self._items()

    def _items(self) -> Iterator:
        while (item := self._out.get()) is not self._DONE:
            if isinstance(item, BaseException):
                raise item
            yield item

    def __exit__(self, *exc: object) -> None:
        self.close()


def _converted(
    snapshot: Snapshot, table: Table, schema: Schema, batch_rows: int
) -> Generator[tuple[int, Converted], None, None]:
    """The batches converted, while a thread of their own reads the next ones from SQLite: of
    a read-ahead's time, reading is about half and converting the rest, and side by side they
    took 1.2-2.1 s off a 2M-row table step."""
    with _ReadAhead(functools.partial(snapshot.batches, table, batch_rows)) as batches:
        for batch in batches:
            yield batch.num_rows, convert_batch(table, batch, schema)


def _reading(snapshot: Snapshot, table: Table, schema: Schema, batch_rows: int) -> _ReadAhead:
    """``table``'s rows, read and converted ahead (not started yet)."""
    return _ReadAhead(functools.partial(_converted, snapshot, table, schema, batch_rows))


def read_keys(conn: psycopg.Connection, parent: str, parent_column: str) -> pa.Array:
    """The parent's keys as text, for is_in (which takes duplicates, so no DISTINCT)."""
    sql = (
        f"COPY (SELECT {q(parent_column)}::text FROM {q(parent)} "
        f"WHERE {q(parent_column)} IS NOT NULL) TO STDOUT (FORMAT csv)"
    )
    with conn.cursor().copy(sql) as copy:
        data = b"".join(bytes(chunk) for chunk in copy)
    if not data:
        return pa.array([], pa.string())
    read = pacsv.read_csv(
        pa.py_buffer(data),
        read_options=pacsv.ReadOptions(column_names=["k"]),
        convert_options=pacsv.ConvertOptions(
            column_types={"k": pa.string()}, strings_can_be_null=False
        ),
    )
    return read["k"].combine_chunks()


class Prefetch:
    """What the first loads of one sync (tables in ``order``) fetch for the ones after them.

    The next table's rows, read and converted while this one's keys, FKs and indexes are
    built and it is committed and checked: that is Postgres's work, and without this the
    core that reads SQLite waited through it, table after table. A table's load starts it for
    the table after it, when that one will take the pass too, so memory stays at READ_AHEAD
    batches; a prefetch nobody takes is stopped.

    The parents' key sets, read once and kept while a table still to come refers to them:
    43 tables refer to users.id, whose keys took 4 s to read again for each of them at 2M
    rows. A parent's keys do not change once it is loaded (parents load first, and nothing
    after them writes to them) and are dropped when it loads."""

    def __init__(self, snapshot: Snapshot, schema: Schema, order: list[Table]) -> None:
        self.snapshot, self.schema = snapshot, schema
        self._next = {a.name: b for a, b in itertools.pairwise(order)}
        self._pending: tuple[str, _ReadAhead] | None = None
        self._position = {t.name: i for i, t in enumerate(order)}
        self._last_use: dict[tuple[str, str], int] = {}  # a parent key's last child, in order
        for i, table in enumerate(order):
            for column in table.foreign_keys:
                if column.parent[0] != table.name:
                    self._last_use[column.parent] = i
        self._keys: dict[tuple[str, str], pa.Array] = {}

    def parent_keys(self, conn: psycopg.Connection, table: Table, parent: tuple[str, str]):
        """``parent``'s (table, column) keys for ``table``'s load: kept, or read and kept if a
        later table needs them."""
        if (keys := self._keys.get(parent)) is None:
            keys = read_keys(conn, *parent)
            if self._last_use.get(parent, -1) > self._position.get(table.name, -1):
                self._keys[parent] = keys
        return keys

    def _forget(self, table: Table) -> None:
        """Before ``table`` loads: its own keys are about to change, and no table from here
        on needs those whose last child came before it."""
        here = self._position.get(table.name, -1)
        self._keys = {
            parent: keys
            for parent, keys in self._keys.items()
            if parent[0] != table.name and self._last_use[parent] >= here
        }

    def after(self, conn: psycopg.Connection, table: Table, batch_rows: int) -> None:
        """``table`` has been read: start on the next one (in batches of ``batch_rows``, as
        this one), if a first load will take it."""
        following = self._next.get(table.name)
        if following is None or not self.snapshot.arrow_reads() or not takes_pass(conn, following):
            return
        if self._pending is not None and self._pending[0] == following.name:
            return
        self.close()
        reading = _reading(self.snapshot, following, self.schema, batch_rows)
        self._pending = (following.name, reading.start())

    def take(self, table: Table) -> _ReadAhead | None:
        """``table``'s load begins: the read-ahead started for it, if any (any other is
        stopped)."""
        self._forget(table)
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == table.name:
            return pending[1]
        if pending is not None:
            pending[1].close()
        return None

    def close(self) -> None:
        if self._pending is not None:
            self._pending[1].close()
            self._pending = None


class _CopyStream:
    """One COPY into the target for the rows of many batches: Postgres parses and stores a
    batch while this side decides and encodes the next (a COPY per batch ended with each
    waiting for the other). Binary where BinaryRows encodes a batch, CSV where it cannot; a
    change of format ends one COPY and begins the next. Ending it raises what Postgres
    refused."""

    def __init__(
        self, conn: psycopg.Connection, target: str, names: list[str], binary: BinaryRows | None
    ) -> None:
        self.conn, self.target, self.names, self.binary = conn, target, names, binary
        self._open: tuple[ExitStack, psycopg.Copy, str] | None = None

    def write(self, rows: pa.Table) -> None:
        data = self.binary.tuples(rows) if self.binary else None
        form = "binary" if data is not None else "csv"
        if self._open is not None and self._open[2] != form:
            self.pause()
        if self._open is None:
            stack = ExitStack()
            copy = stack.enter_context(
                self.conn.cursor().copy(
                    f"COPY {self.target} ({', '.join(map(q, self.names))}) FROM STDIN "
                    f"(FORMAT {form})"
                )
            )
            if form == "binary":
                copy.write(HEADER)
            self._open = (stack, copy, form)
        self._open[1].write(data if data is not None else _csv(rows.select(self.names)))

    def pause(self) -> None:
        """End the COPY under way, if any (the next write begins another): the connection
        can run a query again."""
        if self._open is None:
            return
        stack, copy, form = self._open
        self._open = None
        if form == "binary":
            copy.write(TRAILER)
        stack.close()

    def __enter__(self) -> _CopyStream:
        return self

    def __exit__(self, *failure) -> None:
        if self._open is None:
            return
        if failure[0] is None:
            self.pause()
        else:  # the COPY is abandoned: Postgres is told why, the error goes on
            stack, self._open = self._open[0], None
            stack.__exit__(*failure)


class FirstLoad:
    """The load of one empty table in one pass (see the module's docstring)."""

    def __init__(
        self,
        load: TableLoad,
        snapshot: Snapshot,
        batch_rows: int,
        prefetch: Prefetch | None = None,
    ) -> None:
        self.load, self.snapshot, self.batch_rows = load, snapshot, batch_rows
        self.prefetch = prefetch
        self.conn, self.table = load.conn, load.table
        table = self.table
        self.target = q(table.name)
        self.names = [c.name for c in load.columns]
        self.pk = table.primary_key[0]
        source = {c.name for c in table.source_columns}
        self.checks = [(c.name, c.check) for c in table.columns if c.check]
        self.checks += [(None, expr) for _, expr in table.checks]
        self.check_fns = [arrow_check(expr, source) for _, expr in self.checks]
        self.own = [c for c in table.foreign_keys if c.parent[0] == table.name]
        self.dedupe = bool(self.own)  # keys decided in Python (see the module's docstring)
        self.parent_keys: dict[str, pa.Array] = {}
        self.binary = BinaryRows.of(load.columns)
        self.streaming = True  # one COPY for the whole table (see _CopyStream)
        self.stream: _CopyStream | None = None  # that COPY, while the rows go in
        self._restart()

    def _restart(self) -> None:
        """What the rows streamed so far leave behind, cleared (again, for a redo)."""
        self.seen: list[dict] = [{} for _ in self.table.unique_keys]
        self.held: list[pa.Table] = []  # own-FK tables: the COPYed rows' keys, judged at the end
        self.claimants: list[pa.Table] = []  # keys of rows a rule after the keys rejected
        self.copied = self.remapped = 0
        self.maps: list[tuple[str, pa.Table]] = []  # id_map/ref_map entries the COPY holds up
        self.staged = False
        self.load.considered, self.load.rejects = 0, []

    # -- Postgres around the rows --

    def _foreign_keys(self) -> list[tuple[str, str]]:
        """The table's FK constraints as Postgres has them: (name, definition)."""
        return self.conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype = 'f' ORDER BY conname",
            [self.target],
        ).fetchall()

    def _deferrable_keys(self) -> list[tuple[str, str]]:
        """The table's PRIMARY KEY and UNIQUE constraints that no FK depends on (its own are
        dropped by now), as (name, definition): those can be built after the COPY."""
        return self.conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint k "
            "WHERE conrelid = %s::regclass AND contype IN ('p', 'u') AND NOT EXISTS ("
            "  SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.conindid = k.conindid)"
            " ORDER BY contype, conname",
            [self.target],
        ).fetchall()

    def _lock_for_ddl(self) -> None:
        """Take the table and its parents before the FKs are dropped, all in one LOCK that never
        waits long while holding some of them. Dropping and re-adding an FK takes ACCESS
        EXCLUSIVE on the parent as well; meanwhile the checks of tables already settled run on
        another connection (defs/asset_checks.py) and read those parents inside transactions of
        their own. Taking the parents one by one deadlocked with a check that held one and
        waited for another (test_a_wal_database_being_written_..., under load); a LOCK that
        times out is undone by its savepoint, which lets that check finish, and is tried again."""
        tables = sorted({self.table.name, *(c.parent[0] for c in self.table.foreign_keys)})
        statement = f"LOCK TABLE {', '.join(map(q, tables))} IN ACCESS EXCLUSIVE MODE"
        previous = self.conn.execute("SHOW lock_timeout").fetchone()[0]
        while True:
            try:
                with self.conn.transaction():  # a savepoint: a LOCK that timed out holds nothing
                    self.conn.execute("SELECT set_config('lock_timeout', %s, true)", [LOCK_WAIT])
                    self.conn.execute(statement)
                    self.conn.execute("SELECT set_config('lock_timeout', %s, true)", [previous])
                return
            except psycopg.errors.LockNotAvailable:
                time.sleep(LOCK_RETRY_SECONDS)

    def run(self) -> Counts:
        conn, table = self.conn, self.table
        # SQLite and Arrow start on the rows at once; the parents' keys and the DDL below are
        # Postgres's work meanwhile (2.4 s of a 500k-row load, when they came first).
        ahead = self.prefetch.take(table) if self.prefetch is not None else None
        with ahead or self._reading() as converted:
            parents: dict[tuple[str, str], pa.Array] = {}
            for column in table.foreign_keys:
                if column.parent[0] != table.name:
                    if column.parent not in parents:
                        parents[column.parent] = (
                            self.prefetch.parent_keys(conn, table, column.parent)
                            if self.prefetch is not None
                            else read_keys(conn, *column.parent)
                        )
                    self.parent_keys[column.name] = parents[column.parent]
            constraints = self._foreign_keys()
            self._lock_for_ddl()
            for name, _ in constraints:
                conn.execute(f"ALTER TABLE {self.target} DROP CONSTRAINT {q(name)}")
            keys = self._deferrable_keys()
            for name, _ in keys:
                conn.execute(f"ALTER TABLE {self.target} DROP CONSTRAINT {q(name)}")
            for index in table.indexes:
                conn.execute(f"DROP INDEX IF EXISTS {q(index.name)}")
            conn.execute(f"DELETE FROM {ID_MAP} WHERE source_table = %s", [table.name])
            conn.execute(f"DELETE FROM {REF_MAP} WHERE source_table = %s", [table.name])

            done = self._attempt(converted, keys)
        while not done:
            if self.prefetch is not None:  # one reader of the snapshot at a time
                self.prefetch.close()
            self._restart()
            with self._reading() as converted:
                done = self._attempt(converted, keys)
        removed = self._judge_own_references()

        self._add(constraints)
        for statement in create_index_sql(table):
            conn.execute(statement)
        return self.copied - removed, 0, 0, self.remapped

    def _attempt(self, converted: Iterator[tuple[int, Converted]], keys: list) -> bool:
        """The rows into the table, in a savepoint; False when they must go in again: with the
        keys decided in Python (a duplicate), or in a COPY per batch (a value Postgres refused
        in the table's one COPY: which batch held it is known only per batch)."""
        try:
            with self.conn.transaction():
                self._stream(converted)
                self._add(keys)
                if not self.dedupe and self._claims_collide():
                    raise _KeysCollide
            return True
        except (_KeysCollide, psycopg.errors.UniqueViolation):
            if self.dedupe:
                raise  # the keys were decided in Python: Postgres's equality is not Arrow's
            self.dedupe = True
        except psycopg.DataError:
            if not self.streaming:
                raise
            self.streaming = False
        return False

    def _stream(self, converted: Iterator[tuple[int, Converted]]) -> None:
        with (
            _CopyStream(self.conn, self.target, self.names, self.binary)
            if self.streaming
            else nullcontext()
        ) as self.stream:
            for batch_rows, batch in converted:
                self.load.considered += batch_rows
                self.load.rejects += batch.rejects
                if batch.good.num_rows:
                    self._write(batch.good)
        self.stream = None
        for relation, entries in self.maps:
            self._copy_table(relation, entries)
        self.maps = []
        if self.prefetch is not None:  # SQLite is free: on to the next table
            self.prefetch.after(self.conn, self.table, self.batch_rows)

    def _add(self, constraints: list[tuple[str, str]]) -> None:
        for name, definition in constraints:
            self.conn.execute(f"ALTER TABLE {self.target} ADD CONSTRAINT {q(name)} {definition}")

    def _claims_collide(self) -> bool:
        """Whether a row that claimed a key but was rejected after (an orphan, a derived NOT
        NULL) shares that key with a row in the table or with another such row: a row the keys
        in Python would have rejected as a duplicate, or judged the duplicate of."""
        if not self.claimants:
            return False
        rows = pa.concat_tables(self.claimants)
        for names in self.table.unique_keys:
            present = rows.filter(
                functools.reduce(pc.and_, [pc.is_valid(rows[n]) for n in names])
            ).select(list(names))
            if not present.num_rows:
                continue
            if present.group_by(list(names)).aggregate([]).num_rows < present.num_rows:
                return True
            types = [self.table.column(n).pg_type for n in names]
            given = ", ".join(f"%s::{t}[]" for t in types)
            if self.conn.execute(
                f"SELECT EXISTS (SELECT 1 FROM {self.target} WHERE "
                f"({', '.join(map(q, names))}) IN (SELECT * FROM unnest({given})))",
                [present[n].to_pylist() for n in names],
            ).fetchone()[0]:
                return True
        return False

    def _reading(self) -> _ReadAhead:
        return _reading(self.snapshot, self.table, self.load.schema, self.batch_rows)

    def _write(self, good: pa.Table) -> None:
        """Decide one batch and COPY its survivors, into the table's stream (self.stream) or,
        without one, in a COPY of its own; there, on a value Postgres refuses, find the refused
        rows, quarantine them and decide the batch again without them."""
        while True:
            decision = self._decide(good)
            if self.stream is not None:
                self._copy(good, decision.survivors)
            else:
                try:
                    with self.conn.transaction():
                        self._copy(good, decision.survivors)
                except psycopg.DataError:
                    refused = self._refused(good)
                    kept = pc.invert(pc.is_in(good[ROWID], pa.array(refused, pa.int64())))
                    good = good.filter(kept)
                    continue
            if self.dedupe:
                for seen, claimed in zip(self.seen, decision.claimed, strict=True):
                    seen.update(claimed)
            if decision.claimants is not None:
                late = pc.and_(decision.claimants, pc.invert(decision.survivors))
                if pc.any(late).as_py():
                    keys = {n for names in self.table.unique_keys for n in names}
                    self.claimants.append(good.filter(late).select(sorted(keys)))
            self.load.rejects += decision.rejects
            return

    def _refused(self, good: pa.Table) -> list[int]:
        """The rows of ``good`` Postgres refuses, filed as the staged path files them."""
        if not self.staged:
            self.load.create_stage()
            self.staged = True
        before = len(self.load.rejects)
        self.load.copy(good)
        self.conn.execute(f"TRUNCATE {self.load.stage}")
        refused = [r.rowid for r in self.load.rejects[before:]]
        if not refused:  # Postgres refused the batch but none of its rows: not a value's fault
            raise RuntimeError(f"{self.table.name}: Postgres refused a batch but no row of it")
        return refused

    def _copy(self, good: pa.Table, survivors: pa.Array) -> None:
        rows = good.filter(survivors)
        if not rows.num_rows:
            return
        if self.stream is not None:
            self.stream.write(rows)
        else:
            with _CopyStream(self.conn, self.target, self.names, self.binary) as copy:
                copy.write(rows)
        self.copied += rows.num_rows
        if self.own:
            keep = [ROWID, self.pk, *{c.parent[1] for c in self.own}]
            keep += [c.name for c in self.table.foreign_keys]
            self.held.append(rows.select(list(dict.fromkeys(keep))))
        self._map_entries(rows)

    def _map_entries(self, rows: pa.Table) -> None:
        """The id_map and ref_map entries of the COPYed rows, into self.maps (load.py's
        record_* make the same from the staging table); _stream COPYs them once the rows are
        in, inside the table's savepoint like the rows."""
        name = pa.scalar(self.table.name)
        if SOURCE_ID in rows.column_names:
            mapped = rows.filter(pc.is_valid(rows[SOURCE_ID]))
            if mapped.num_rows:
                entries = pa.table(
                    {
                        "source_table": pa.repeat(name, mapped.num_rows),
                        "source_id": mapped[SOURCE_ID],
                        "target_id": mapped[self.pk],
                    }
                )
                self.maps.append((ID_MAP, entries))
                self.remapped += mapped.num_rows
        for column in self.table.unlinked_ids:
            text = SOURCE_TEXT + column.name
            mapped = rows.filter(pc.is_valid(rows[text]))
            if mapped.num_rows:
                entries = pa.table(
                    {
                        "source_table": pa.repeat(name, mapped.num_rows),
                        "target_pk": pc.cast(mapped[self.pk], pa.string()),
                        "column_name": pa.repeat(pa.scalar(column.name), mapped.num_rows),
                        "source_text": mapped[text],
                        "target_id": mapped[column.name],
                    }
                )
                self.maps.append((REF_MAP, entries))

    def _copy_table(self, relation: str, rows: pa.Table) -> None:
        names = ", ".join(map(q, rows.column_names))
        with self.conn.cursor().copy(f"COPY {relation} ({names}) FROM STDIN (FORMAT csv)") as cp:
            cp.write(_csv(rows))

    # -- the rules, in load.py's order: CHECKs, UNIQUE keys, FKs, derived values --

    def _decide(self, good: pa.Table) -> _Decision:
        n = good.num_rows
        alive = pa.repeat(pa.scalar(True), n)
        decision = _Decision(alive)
        cols = {name: good[name].combine_chunks() for name in good.column_names}
        target_pk = pc.cast(cols[self.pk], pa.string())
        basis = pa.table({"rowid": cols[ROWID], "target_pk": target_pk})

        def reject(mask: pa.Array, make: Callable[[dict], Reject]) -> None:
            nonlocal alive
            mask = pc.and_(alive, pc.fill_null(mask, False))
            if pc.any(mask).as_py():
                decision.rejects += _reason_rejects(basis, mask, make)
                alive = pc.and_(alive, pc.invert(mask))

        for (column, expr), check in zip(self.checks, self.check_fns, strict=True):
            reason = f"violates CHECK ({expr}); correct it in D1"
            reject(
                pc.invert(check(cols)),
                lambda r, c=column, why=reason: Reject(
                    r["rowid"], c, "check_violation", why, r["target_pk"]
                ),
            )
        if not self.dedupe:  # Postgres finds duplicates; these rows claim keys
            decision.claimants = alive
        for cols_of_key, seen in zip(self.table.unique_keys, self.seen, strict=True):
            if not self.dedupe:
                break
            dups, claimed = self._duplicates(cols, cols_of_key, alive, seen)
            decision.claimed.append(claimed)
            if dups:
                listed = ", ".join(cols_of_key)
                mask = pc.is_in(cols[ROWID], pa.array(list(dups), pa.int64()))
                reject(
                    mask,
                    lambda r, k=cols_of_key, d=dups, lst=listed: Reject(
                        r["rowid"],
                        k[0],
                        "duplicate_key",
                        f"has the same ({lst}) as D1 rowid {d[r['rowid']]}, which was kept; "
                        "merge or delete one of them in D1",
                        r["target_pk"],
                    ),
                )
        if not self.own:
            for column in self.table.foreign_keys:
                values = cols[column.name]
                orphan = pc.and_(
                    pc.is_valid(values),
                    pc.invert(pc.is_in(values, value_set=self.parent_keys[column.name])),
                )
                orphan = pc.and_(alive, orphan)
                if pc.any(orphan).as_py():
                    decision.rejects += self._orphans(column, basis, values, orphan)
                    alive = pc.and_(alive, pc.invert(orphan))
            for column in self.table.columns:
                if column.source_sql and not column.nullable:
                    why = (
                        f"{column.name} is derived by {column.source_sql}, which gave no value; "
                        "fix the related row in D1"
                    )
                    reject(
                        pc.is_null(cols[column.name]),
                        lambda r, c=column.name, w=why: Reject(
                            r["rowid"], c, "not_null", w, r["target_pk"]
                        ),
                    )
        decision.survivors = alive
        return decision

    def _duplicates(
        self, cols: Columns, names: tuple[str, ...], alive: pa.Array, seen: dict
    ) -> tuple[dict[int, int], dict]:
        """Rows whose key an earlier surviving row holds (rowid -> kept rowid), and the keys
        this batch's survivors claim. Rows with a NULL in the key never collide (SQL)."""
        arrays = []
        for name in names:
            values = cols[name]
            if pa.types.is_timestamp(values.type):
                values = values.cast(pa.int64())
            arrays.append(values)
        present = alive
        for values in arrays:
            present = pc.and_(present, pc.is_valid(values))
        rowids = pc.filter(cols[ROWID], present).to_pylist()
        lists = [pc.filter(values, present).to_pylist() for values in arrays]
        keys = lists[0] if len(lists) == 1 else list(zip(*lists, strict=True))
        claimed = dict(zip(keys, rowids, strict=True))
        if len(claimed) == len(keys) and seen.keys().isdisjoint(claimed):
            return {}, claimed  # the usual case, decided at C speed
        dups: dict[int, int] = {}
        claimed = {}
        for key, rowid in zip(keys, rowids, strict=True):
            kept = seen.get(key, claimed.get(key))
            if kept is None:
                claimed[key] = rowid
            else:
                dups[rowid] = kept
        return dups, claimed

    def _orphans(
        self, column: Column, basis: pa.Table, values: pa.Array, orphan: pa.Array
    ) -> list[Reject]:
        """Rejects for rows whose ``column`` names no parent row (load.py's reject_orphans)."""
        parent_table, parent_column = column.parent
        rows = pa.table(
            {
                "rowid": basis["rowid"],
                "target_pk": basis["target_pk"],
                "value": pc.cast(values, pa.string()),
            }
        ).filter(orphan)
        found = rows.to_pylist()
        if self.stream is not None:  # the connection answers no query during a COPY
            self.stream.pause()
        quarantined = self.load._quarantined_parents(
            parent_table, parent_column, [r["value"] for r in found]
        )
        out = []
        for row in found:
            if row["value"] in quarantined:
                code, why = "parent_quarantined", "is quarantined"
            else:
                code, why = "missing_parent", "does not exist in D1"
            out.append(
                Reject(
                    row["rowid"],
                    column.name,
                    code,
                    f"{column.name} = {row['value']} refers to {parent_table}.{parent_column}, "
                    f"which {why}; fix the parent or this reference in D1",
                    row["target_pk"],
                )
            )
        return out

    def _judge_own_references(self) -> int:
        """A table that refers to itself: load.py's orphan loop on the COPYed rows, every FK
        column in turn until none removes a row; the orphans leave the target (nothing
        cascades: the FK constraints are dropped) with their id_map and ref_map entries."""
        if not self.own or not self.held:
            return 0
        rows = pa.concat_tables(self.held).combine_chunks()
        self.held = []
        alive = pa.repeat(pa.scalar(True), rows.num_rows)
        basis = pa.table({"rowid": rows[ROWID], "target_pk": pc.cast(rows[self.pk], pa.string())})
        while True:
            removed = 0
            for column in self.table.foreign_keys:
                parent_table, parent_column = column.parent
                values = rows[column.name]
                if parent_table == self.table.name:
                    parents = pc.filter(rows[parent_column], alive)
                else:
                    parents = self.parent_keys[column.name]
                orphan = pc.and_(
                    alive,
                    pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, value_set=parents))),
                )
                if pc.any(orphan).as_py():
                    found = self._orphans(column, basis, values, orphan)
                    self.load.rejects += found
                    alive = pc.and_(alive, pc.invert(orphan))
                    removed += len(found)
            if not removed:
                break
        gone = pc.cast(pc.filter(rows[self.pk], pc.invert(alive)), pa.string()).to_pylist()
        if not gone:
            return 0
        name, pk = self.table.name, q(self.pk)
        self.conn.execute(f"DELETE FROM {self.target} WHERE {pk}::text = ANY(%s)", [gone])
        self.remapped -= self.conn.execute(
            f"DELETE FROM {ID_MAP} WHERE source_table = %s AND target_id::text = ANY(%s)",
            [name, gone],
        ).rowcount
        self.conn.execute(
            f"DELETE FROM {REF_MAP} WHERE source_table = %s AND target_pk = ANY(%s)",
            [name, gone],
        )
        return len(gone)


def takes_pass(conn: psycopg.Connection, table: Table) -> bool:
    """Whether a full load of ``table`` takes the one pass: its target table is empty and
    every rule of the table can be decided in Arrow."""
    return (
        ENABLED
        and eligible(table)
        and conn.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {q(table.name)})").fetchone()[0]
    )


def first_load(
    conn: psycopg.Connection,
    snapshot: Snapshot,
    table: Table,
    schema: Schema,
    batch_rows: int,
    prefetch: Prefetch | None = None,
) -> tuple[TableLoad, Counts] | None:
    """The load of ``table`` in one pass, when takes_pass(); None otherwise (the staged path
    then loads it)."""
    if not takes_pass(conn, table):
        return None
    load = TableLoad(conn, table, schema)
    return load, FirstLoad(load, snapshot, batch_rows, prefetch).run()
