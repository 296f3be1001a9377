"""What a second loader connection would gain on a first load, before building one: the engine
alone (no Dagster, no shadow) loads the root tables, then the rest either on one connection or
split into two FK-closed groups loaded by two threads at once, into a fresh database each time.

    PYTHONPATH=. python -m benchmarks.two_loaders .d1_migration/bench/d1_32000_0_clean.sqlite

The roots are the tables without parents, users, and the small tables (< 1,000 rows) whose
parents are all roots; the other tables are grouped by the FK edges among them (a table is in
its parents' group) and the groups shared out by rows. The engine's target lock is bypassed:
here the two loaders are one sync. Interleaved pairs, "two" first in each. With
``--processes``, the two loaders are two processes (forked), so they share no GIL.

Why two loaders gain little as the engine is (profile.md): each first load drops its table's
FKs inside its transaction, which takes ACCESS EXCLUSIVE on every parent until it commits, so
two loaders of children of users take turns. ``patches/parents_unlocked.diff`` drops the FKs
in a short transaction of their own and adds them back last; apply it to measure that:

    git apply benchmarks/patches/parents_unlocked.diff
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Collection
from pathlib import Path

import psycopg

from benchmarks.peers import drop_database, fresh_database
from d1_migration.source.snapshot import SqliteSource
from d1_migration.spec.tables import SCHEMA
from d1_migration.sync import engine
from d1_migration.target.ddl import load_order

SMALL = 1_000


def split(source: Path) -> tuple[set[str], list[set[str]], list[int]]:
    """The roots, the two groups, and each group's rows."""
    with SqliteSource(source).snapshot() as snapshot:
        rows = {t.name: snapshot.count(t) for t in SCHEMA.tables}
    order = load_order(SCHEMA)
    roots = {t.name for t in order if not t.parents} | {"users"}
    roots |= {t.name for t in order if set(t.parents) <= roots and rows[t.name] < SMALL}
    group = {t.name: t.name for t in order}

    def find(name: str) -> str:
        while group[name] != name:
            name = group[name]
        return name

    for table in order:
        if table.name not in roots:
            for parent in table.parents:
                if parent not in roots:
                    group[find(table.name)] = find(parent)
    components: dict[str, set[str]] = {}
    for table in order:
        if table.name not in roots:
            components.setdefault(find(table.name), set()).add(table.name)
    groups, sizes = [set(), set()], [0, 0]
    for component in sorted(components.values(), key=lambda c: -sum(rows[n] for n in c)):
        emptier = sizes.index(min(sizes))
        groups[emptier] |= component
        sizes[emptier] += sum(rows[n] for n in component)
    return roots, groups, sizes


def load(url: str, source: Path, selected: Collection[str], errors: list) -> None:
    try:
        with (
            psycopg.connect(url, autocommit=True) as conn,
            SqliteSource(source).snapshot() as snapshot,
        ):
            for outcome in engine.sync_tables(
                conn, snapshot, SCHEMA, None, incremental=False, selected=selected
            ):
                if outcome.status not in (engine.Status.SYNCED, engine.Status.UNSELECTED):
                    errors.append(f"{outcome.table.name}: {outcome.error}")
    except Exception as error:  # reported by the caller, which fails the measurement
        errors.append(repr(error))


def _load_in_child(url: str, source: Path, selected: Collection[str], report) -> None:
    errors: list[str] = []
    load(url, source, selected, errors)
    report.put(errors)


def _load_apart(url: str, source: Path, groups: list[set[str]], errors: list) -> None:
    """The groups loaded at once by a forked process each (the target lock stays bypassed:
    the children inherit the patched engine)."""
    context = multiprocessing.get_context("fork")
    report = context.Queue()
    children = [
        context.Process(target=_load_in_child, args=(url, source, group, report))
        for group in groups
    ]
    for child in children:
        child.start()
    for _ in children:
        errors += report.get()
    for child in children:
        child.join()


def measure(
    server: str,
    source: Path,
    roots: set[str],
    groups: list[set[str]],
    loaders: int,
    processes: bool = False,
) -> tuple[float, float]:
    """Seconds of the roots and of the rest, with ``loaders`` connections for the rest (in
    processes of their own if ``processes``)."""
    name = f"two_loaders_{os.getpid()}"
    url = fresh_database(server, name)
    errors: list[str] = []
    try:
        started = time.perf_counter()
        load(url, source, roots, errors)
        middle = time.perf_counter()
        if loaders == 1:
            load(url, source, groups[0] | groups[1], errors)
        elif processes:
            _load_apart(url, source, groups, errors)
        else:
            threads = [threading.Thread(target=load, args=(url, source, g, errors)) for g in groups]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        ended = time.perf_counter()
    finally:
        drop_database(server, name)
    if errors:
        raise SystemExit(f"the load failed: {errors}")
    return middle - started, ended - middle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--processes", action="store_true", help="two processes, not threads")
    args = parser.parse_args()
    roots, groups, sizes = split(args.source)
    print(f"roots: {len(roots)} tables; groups: {[len(g) for g in groups]} tables, rows {sizes}")
    # One sync, two loaders: the lock that keeps two syncs apart would keep them apart too.
    engine.target_lock = lambda *args, **kwargs: contextlib.nullcontext()
    for pair in range(1, args.pairs + 1):
        for loaders in (2, 1):
            first, rest = measure(args.server, args.source, roots, groups, loaders, args.processes)
            print(f"pair {pair}, {loaders} loader(s): roots {first:.1f} s, the rest {rest:.1f} s")


if __name__ == "__main__":
    main()
