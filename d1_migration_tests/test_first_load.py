"""The one-pass first load (target/first_load.py) gives what the staged path gives.

Each database is migrated twice into empty targets, once per path, and compared table by table
(an md5 of every row in key order, and every row), with the quarantine, id_map and ref_map.
"""

import itertools
import re
import sqlite3
import threading
import time
from collections import Counter

import psycopg
import pyarrow as pa
import pytest

from d1_migration.demo.sample_data import build_sample_db, sqlite_ddl
from d1_migration.source.snapshot import Snapshot, SqliteSource
from d1_migration.spec.model import q
from d1_migration.spec.tables import SCHEMA
from d1_migration.target import first_load
from d1_migration.target.ddl import ensure_schema
from d1_migration.target.load import migrate_table
from d1_migration.transforms import convert_batch
from d1_migration_tests.helpers import dump, sync
from d1_migration_tests.test_migrate_cases import NOW, ROWS, U1

# Beyond the cases file: ids equal once normalised (D1 holds them as different text), so chains
# of duplicates on the key and on a second UNIQUE key; a duplicate of a row that fails its CHECK;
# a duplicate whose first row Postgres refuses; a duplicate of an orphan (which claims its key
# before the FK rule rejects it, so both leave); a deeper self-reference.
X = "BBBBBBBB-CCCC-4DDD-8EEE-FFFFFFFFFFFF"
W = "CCCCCCCC-DDDD-4EEE-8FFF-000000000000"
A = "DDDDDDDD-EEEE-4FFF-8000-111111111111"
ORPHAN = "EEEEEEEE-FFFF-4000-8111-222222222222"
USER = "INSERT INTO users (id, name, email, approved, created_at, updated_at) VALUES "
WALLET = "INSERT INTO user_wallet (id, user_id, coins, xp, updated_at) VALUES "
EVENT = (
    "INSERT INTO calendar_events (id, user_id, title, start_time, parent_event_id, "
    "created_at, updated_at) VALUES "
)
EXTRA = [
    f"{USER}('{X}', 'X', 'x1@x', 1, {NOW}, {NOW})",
    f"{USER}('{X.lower()}', 'X', 'x2@x', 1, {NOW}, {NOW})",
    f"{USER}('{X[:9].lower() + X[9:]}', 'X', 'x3@x', 1, {NOW}, {NOW})",
    f"{WALLET}('{W}', '{X}', -1, 0, {NOW})",
    f"{WALLET}('{W.lower()}', '{X.lower()}', 3, 0, {NOW})",
    f"{WALLET}('w8', '{U1.lower()}', 3, 0, {NOW})",
    f"INSERT INTO activity_events VALUES ('{A}', '{U1}', 'x', '{{\"s\":\"\\ud801\"}}', {NOW})",
    f"INSERT INTO activity_events VALUES ('{A.lower()}', '{U1}', 'x', '{{}}', {NOW})",
    f"INSERT INTO activity_events VALUES ('a8', '{U1}', 'x', '{{\"k\":\"\\udbff\"}}', {NOW})",
    f"INSERT INTO activity_events VALUES ('{ORPHAN}', 'nobody', 'x', '{{}}', {NOW})",
    f"INSERT INTO activity_events VALUES ('{ORPHAN.lower()}', '{U1}', 'x', '{{}}', {NOW})",
] + [
    f"{EVENT}('{c}', '{u}', 'E', {NOW}, {parent}, {NOW}, {NOW})"
    for c, u, parent in [
        ("c5", U1, "'c4'"),
        ("c6", U1, "'c5'"),
        ("c7", "nobody", "NULL"),
        ("c8", U1, "'c7'"),
        ("c9", U1, "'c2'"),
    ]
]


def _cases(path):
    with sqlite3.connect(path) as d1:
        d1.executescript(sqlite_ddl(SCHEMA))
        for statement in ROWS + EXTRA:
            d1.execute(statement)
    return path


def _fingerprints(url: str) -> dict[str, tuple[int, str]]:
    """Per table: its row count and the md5 of its rows' text in primary-key order."""
    with psycopg.connect(url) as conn:
        out = {}
        for table in SCHEMA.tables:
            order = ", ".join(f"t.{q(k)}" for k in table.primary_key)
            out[table.name] = conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY {order}), '')) "
                f"FROM {q(table.name)} t"
            ).fetchone()
        return out


def _migrate_both_ways(source, new_database, monkeypatch):
    runs, forms = [], set()
    original = first_load.FirstLoad.run

    def counted(self):
        runs.append(self.table.name)
        forms.add("binary" if self.binary else "csv")
        return original(self)

    monkeypatch.setattr(first_load.FirstLoad, "run", counted)
    urls = {}
    for enabled in (False, True):
        monkeypatch.setattr(first_load, "ENABLED", enabled)
        urls[enabled] = new_database()
        results = sync(urls[enabled], source, None, incremental=False)
    assert sorted(runs) == sorted(t.name for t in SCHEMA.tables)  # every table took the pass
    assert forms == {"binary", "csv"}  # tables with TEXT[] or BYTEA columns COPY CSV
    return urls, results


@pytest.mark.parametrize("fixture", ["sample", "cases", "cases in batches of 3"])
def test_first_load_equals_the_staged_load(fixture, tmp_path, new_database, monkeypatch):
    """In batches of 3, duplicates, refusals and orphans fall across batches."""
    source = tmp_path / "d1.sqlite"
    if fixture.endswith("batches of 3"):
        batches = Snapshot.batches
        monkeypatch.setattr(
            Snapshot, "batches", lambda self, table, _, *rest: batches(self, table, 3, *rest)
        )
    if fixture == "sample":
        build_sample_db(source, users=60, bad_rows=True)
    else:
        _cases(source)
    urls, results = _migrate_both_ways(source, new_database, monkeypatch)
    staged, fast = urls[False], urls[True]
    assert _fingerprints(fast) == _fingerprints(staged)
    expected, got = dump(staged), dump(fast)
    for name in expected:
        assert got[name] == expected[name], name
    assert sum(r.quarantined for r in results.values()) > 10
    if fixture != "sample":  # the rules this file exercises all fired
        reasons = {code for r in results.values() for code in r.reasons}
        assert {
            "duplicate_key",
            "check_violation",
            "postgres_rejected",
            "missing_parent",
            "parent_quarantined",
        } <= reasons


def test_keys_stay_out_of_python_unless_a_duplicate_appears(tmp_path, new_database, monkeypatch):
    """Postgres finds duplicate keys; only a table that has one (or refers to itself) is loaded
    again with its keys in Python dicts, so the usual load holds no table's keys in memory."""
    source = _cases(tmp_path / "d1.sqlite")
    seen: dict[str, tuple[bool, int]] = {}
    original = first_load.FirstLoad.run

    def recorded(self):
        counts = original(self)
        seen[self.table.name] = (self.dedupe, sum(len(keys) for keys in self.seen))
        return counts

    monkeypatch.setattr(first_load.FirstLoad, "run", recorded)
    results = sync(new_database(), source, None, incremental=False)
    duplicated = {name for name, r in results.items() if "duplicate_key" in r.reasons}
    own = {t.name for t in SCHEMA.tables if any(c.parent[0] == t.name for c in t.foreign_keys)}
    assert {"users", "user_wallet", "activity_events"} <= duplicated
    assert {name for name, (dedupe, _) in seen.items() if dedupe} == duplicated | own
    assert all(kept == 0 for name, (_, kept) in seen.items() if name not in duplicated | own)
    # activity_events' only duplicate is ORPHAN's twin: the orphan never reaches Postgres, so
    # it is the check of the rejected claimants that sends the table round again
    assert results["activity_events"].reasons["duplicate_key"] == 1


def test_a_table_goes_in_in_one_copy(tmp_path, new_database, monkeypatch):
    """Postgres stores one batch while the next is decided and encoded: one COPY per table,
    however many batches (of 3 rows here), where no value is refused and no orphan's parent
    is looked up (the cases above have both, and equal the staged load)."""
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=10, bad_rows=False)
    batches = Snapshot.batches
    monkeypatch.setattr(
        Snapshot, "batches", lambda self, table, _, *rest: batches(self, table, 3, *rest)
    )
    copies: Counter[str] = Counter()
    copy = psycopg.Cursor.copy

    def counted(self, statement, *args, **kwargs):
        copies[statement.split()[1].strip('"')] += 1
        return copy(self, statement, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "copy", counted)
    results = sync(new_database(), source, None, incremental=False)
    loaded = {name for name, r in results.items() if r.inserted}
    assert max(results[name].considered for name in loaded) > 30  # many batches
    assert {name: copies[name] for name in loaded} == dict.fromkeys(loaded, 1)


def test_first_load_restores_constraints_and_indexes(tmp_path, new_database):
    """The FK constraints it drops for the load come back, validated, as the DDL made them."""
    source = _cases(tmp_path / "d1.sqlite")
    url = new_database()
    catalog = """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated
                 FROM pg_constraint WHERE connamespace = 'public'::regnamespace
                 UNION ALL SELECT tablename, indexname, indexdef, true FROM pg_indexes
                 WHERE schemaname = 'public'"""
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_schema(conn, SCHEMA)
        before = sorted(conn.execute(catalog).fetchall())
    sync(url, source, None, incremental=False)
    with psycopg.connect(url) as conn:
        assert sorted(conn.execute(catalog).fetchall()) == before
        assert any(row[2].startswith("FOREIGN KEY") for row in before)


def test_a_failed_first_load_leaves_the_table_empty(tmp_path, new_database, monkeypatch):
    source = SqliteSource(_cases(tmp_path / "d1.sqlite"))
    url = new_database()
    parents = [t for t in SCHEMA.tables if t.name == "users"]
    calls = []

    def failing_convert(*args):
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("source went away mid-table")
        return convert_batch(*args)

    with psycopg.connect(url, autocommit=True) as conn:
        ensure_schema(conn, SCHEMA)
        with source.snapshot() as snapshot:
            migrate_table(conn, snapshot, parents[0], SCHEMA)
        table = SCHEMA.table("points_ledger")
        fks = "SELECT count(*) FROM pg_constraint WHERE conrelid = 'points_ledger'::regclass"
        constraints = conn.execute(fks).fetchone()[0]
        quarantine = conn.execute("SELECT * FROM d1_migration.rejected_rows ORDER BY 1, 2")
        quarantine = quarantine.fetchall()
        monkeypatch.setattr(first_load, "convert_batch", failing_convert)
        with source.snapshot() as snapshot, pytest.raises(RuntimeError, match="went away"):
            migrate_table(conn, snapshot, table, SCHEMA, batch_rows=1)
        assert len(calls) == 3
        assert conn.execute("SELECT count(*) FROM points_ledger").fetchone()[0] == 0
        assert conn.execute(fks).fetchone()[0] == constraints
        after = conn.execute("SELECT * FROM d1_migration.rejected_rows ORDER BY 1, 2").fetchall()
        assert after == quarantine
        monkeypatch.undo()
        with source.snapshot() as snapshot:
            result = migrate_table(conn, snapshot, table, SCHEMA, batch_rows=1)
        assert result.inserted == conn.execute("SELECT count(*) FROM points_ledger").fetchone()[0]
        assert result.inserted > 0


# Every CHECK the spec declares, and forms it may declare, against Postgres's own verdict.
EXPRESSIONS = [
    *(c.check for t in SCHEMA.tables for c in t.columns if c.check),
    *(expr for t in SCHEMA.tables for _, expr in t.checks),
    "NOT (a > 1) OR b IS NULL",
    "a = b AND NOT flag",
    "(a >= 0) = flag",
]
KEYWORDS = {"AND", "OR", "NOT", "IS", "NULL", "TRUE", "FALSE"}
DOMAINS = {  # name -> (Postgres type, Arrow type, values, NULL included)
    "bool": ("boolean", pa.bool_(), [None, True, False]),
    "text": ("text", pa.string(), [None, "u"]),
    "int": ("integer", pa.int32(), [None, -1, 0, 1, 2]),
}


def _domain(name: str) -> str:
    if name.startswith("is_") or name == "flag":
        return "bool"
    return "text" if name.endswith("_id") else "int"


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_arrow_check_agrees_with_postgres(expr, pg):
    names = sorted({w for w in re.findall(r"[A-Za-z_]+", expr) if w.upper() not in KEYWORDS})
    check = first_load.arrow_check(expr, set(names))
    assert check is not None
    rows = list(itertools.product(*(DOMAINS[_domain(n)][2] for n in names)))
    cols = {n: pa.array([r[i] for r in rows], DOMAINS[_domain(n)][1]) for i, n in enumerate(names)}
    columns = ", ".join(f"{q(n)} {DOMAINS[_domain(n)][0]}" for n in names)
    pg.execute(f"CREATE TEMP TABLE v (i integer, {columns})")
    with pg.cursor().copy(f"COPY v (i, {', '.join(map(q, names))}) FROM STDIN") as copy:
        for i, row in enumerate(rows):
            copy.write_row((i, *row))
    expected = [r[0] for r in pg.execute(f"SELECT ({expr}) FROM v ORDER BY i").fetchall()]
    assert len(set(expected)) == 3  # true, false and NULL all occur
    assert check(cols).to_pylist() == expected


def test_an_unreadable_check_takes_the_staged_path():
    assert first_load.arrow_check("char_length(name) > 3", {"name"}) is None
    assert first_load.arrow_check("a > ", {"a"}) is None
    assert first_load.arrow_check("a > 1 b", {"a", "b"}) is None
    assert first_load.arrow_check("c > 1", {"a"}) is None


def test_a_first_load_gives_way_to_a_check_reading_its_parents(tmp_path, new_database):
    """A check on another connection holds one parent and then reads another: the first load,
    whose FK drops take both parents, must let it finish rather than deadlock with it."""
    path = tmp_path / "d1.sqlite"
    build_sample_db(path, users=10, seed=5)
    source, url = SqliteSource(path), new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_schema(conn, SCHEMA)
        with source.snapshot() as snapshot:
            for name in ("users", "habits"):
                migrate_table(conn, snapshot, SCHEMA.table(name), SCHEMA)
    # habit_logs' FKs drop in name order: habit_id (locks habits), then user_id (users).
    errors: list[BaseException] = []

    def load() -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn, source.snapshot() as snapshot:
                migrate_table(conn, snapshot, SCHEMA.table("habit_logs"), SCHEMA)
        except BaseException as error:
            errors.append(error)

    with psycopg.connect(url) as check:  # a transaction, as a check's is
        check.execute("SELECT count(*) FROM users").fetchone()
        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(0.5)  # the load is now waiting for users
        check.execute("SELECT count(*) FROM habits").fetchone()
        check.commit()
    loader.join(timeout=60)
    assert not errors, errors
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM habit_logs").fetchone()[0] > 0


@pytest.mark.parametrize(("items", "taken"), [(1_000, 0), (1_000, 1), (3, 1)])
def test_the_read_ahead_stops_and_closes_its_source_when_the_load_leaves_early(items, taken):
    """A load that fails before its first batch, mid-table, or once the source is done leaves
    the read-ahead block with the queue full: the thread must stop (the block must not hang
    on it), and the batches' source (a SQLite cursor) be closed."""
    closed = threading.Event()
    failed: list[BaseException] = []

    def produce():
        try:
            yield from range(items)
        finally:
            closed.set()

    def load() -> None:
        try:
            with first_load._ReadAhead(produce) as batches:
                for _ in range(taken):
                    next(batches)
                time.sleep(0.3)  # the thread fills the queue meanwhile
                raise RuntimeError("the load failed")
        except RuntimeError as error:
            failed.append(error)

    loading = threading.Thread(target=load, daemon=True)
    loading.start()
    loading.join(timeout=10)
    assert not loading.is_alive(), "leaving the read-ahead block hung"
    assert failed and closed.is_set()


def test_the_read_ahead_hands_its_errors_to_the_reader():
    def produce():
        yield 1
        raise ValueError("SQLite went away")

    with first_load._ReadAhead(produce) as items:
        assert next(items) == 1
        with pytest.raises(ValueError, match="went away"):
            next(items)


def test_sqlite_is_read_in_one_thread_and_converted_in_another(tmp_path, monkeypatch):
    """Reading and converting each take about half of a read-ahead's time: a thread of their
    own each, so that they run side by side."""
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=10, bad_rows=False)
    readers, converters = set(), set()
    batches, convert = Snapshot.batches, first_load.convert_batch

    def reading(self, *args):
        for batch in batches(self, *args):
            readers.add(threading.get_ident())
            yield batch

    def converting(*args):
        converters.add(threading.get_ident())
        return convert(*args)

    monkeypatch.setattr(Snapshot, "batches", reading)
    monkeypatch.setattr(first_load, "convert_batch", converting)
    with SqliteSource(source).snapshot() as snapshot:
        table = SCHEMA.table("points_ledger")
        with first_load._reading(snapshot, table, SCHEMA, 20) as converted:
            assert sum(rows for rows, _ in converted) == snapshot.count(table) > 100
    assert readers and converters and not readers & converters
    assert threading.get_ident() not in readers | converters


def _read_aheads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "d1m-read-ahead" and t.is_alive()]


def test_the_next_table_is_read_while_this_one_finishes(tmp_path, new_database, monkeypatch):
    """Each first load after the first finds its rows already read (first_load.Prefetch),
    started once the table before it had read its own, and a parent's keys read by the first
    table that refers to it; the rows are those of the staged path."""
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=60, bad_rows=True)
    prefetched, began = [], {}
    take, after = first_load.Prefetch.take, first_load.Prefetch.after

    def taken(self, table):
        ahead = take(self, table)
        prefetched.append((table.name, ahead is not None))
        return ahead

    def started(self, conn, table, batch_rows):
        after(self, conn, table, batch_rows)
        if self._pending is not None:
            began.setdefault(self._pending[0], table.name)

    reads, wanted = Counter(), Counter()
    read_keys, parent_keys = first_load.read_keys, first_load.Prefetch.parent_keys

    def counted_read(conn, parent, column):
        reads[parent, column] += 1
        return read_keys(conn, parent, column)

    def counted_want(self, conn, table, parent):
        wanted[parent] += 1
        return parent_keys(self, conn, table, parent)

    monkeypatch.setattr(first_load.Prefetch, "take", taken)
    monkeypatch.setattr(first_load.Prefetch, "after", started)
    monkeypatch.setattr(first_load, "read_keys", counted_read)
    monkeypatch.setattr(first_load.Prefetch, "parent_keys", counted_want)
    fast = new_database()
    sync(fast, source, None, incremental=False)
    assert set(reads.values()) == {1} and reads.keys() == wanted.keys()  # each read once
    assert wanted["users", "id"] > 40  # and kept for every table that refers to it
    assert [name for name, hit in prefetched if not hit] == [prefetched[0][0]]
    assert len(prefetched) == len(SCHEMA.tables)
    names = [name for name, _ in prefetched]
    assert all(began[b] == a for a, b in itertools.pairwise(names))  # each by the one before
    monkeypatch.setattr(first_load, "ENABLED", False)
    staged = new_database()
    sync(staged, source, None, incremental=False)
    assert dump(fast) == dump(staged)
    assert not _read_aheads()


def test_a_read_ahead_nobody_takes_is_stopped(tmp_path, new_database, monkeypatch):
    """A table fails once it has read its rows: the next table, read ahead, is skipped (an
    ancestor failed) and its reading thread stops rather than waiting on a full queue."""
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=60, bad_rows=False)
    monkeypatch.setattr(first_load, "READ_AHEAD", 1)  # the prefetch fills its queue at once
    add = first_load.FirstLoad._add

    def failing(self, constraints):
        if self.table.name == "users" and constraints:
            raise RuntimeError("the index build failed")
        return add(self, constraints)

    monkeypatch.setattr(first_load.FirstLoad, "_add", failing)
    with pytest.raises(Exception, match="the index build failed"):
        sync(new_database(), source, None, incremental=False)
    deadline = time.monotonic() + 5
    while _read_aheads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _read_aheads()
