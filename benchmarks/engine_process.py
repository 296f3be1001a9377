"""What the sync engine would gain in a process of its own, before building it: Dagster's
events are Python in the run's process, and so is the engine (psycopg's waits return to it
once per statement, about 2,450 of them in a first load), so the two take turns at one GIL.
Here the engine alone (no shadow, no checks, its target lock bypassed) loads a fresh database
three ways, in interleaved rounds:

- ``engine alone``: no Dagster at all, the outcomes only counted: the floor;
- ``in the step``: a multi-asset of the table step's specs and checks that runs the engine
  and yields each table's events as dagster_floor yields them (what the project does);
- ``child process``: the same step, the engine in a process of its own as the project runs it
  (``sync_tables_apart``), which sends each table's outcome back while it goes on with the
  next table.

    PYTHONPATH=. python -m benchmarks.engine_process .d1_migration/bench/d1_1135_0_clean.sqlite
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
from dagster import DagsterInstance, materialize, multi_asset

from benchmarks.dagster_floor import check_names, source_checks, table_events
from benchmarks.peers import drop_database, fresh_database
from d1_migration.defs.asset_checks import check_specs
from d1_migration.defs.assets import table_spec
from d1_migration.source.snapshot import SqliteSource
from d1_migration.spec.tables import SCHEMA
from d1_migration.sync import engine
from d1_migration.sync.apart import sync_tables_apart

Outcomes = Callable[[str, Path], Iterator[tuple[str, int]]]
WAYS = ("engine alone", "in the step", "child process")


def in_process(url: str, source: Path) -> Iterator[tuple[str, int]]:
    """Each table's name and D1 rows, as the engine commits it."""
    with (
        psycopg.connect(url, autocommit=True) as conn,
        SqliteSource(source).snapshot() as snapshot,
    ):
        for outcome in engine.sync_tables(conn, snapshot, SCHEMA, None, incremental=False):
            if outcome.result is None:
                raise RuntimeError(f"{outcome.table.name}: {outcome.error}")
            yield outcome.table.name, outcome.result.source_rows


def in_child(url: str, source: Path) -> Iterator[tuple[str, int]]:
    """in_process's outcomes from the engine's own process, as the table step runs it
    (sync/apart.py: the child passes through the target lock)."""
    with sync_tables_apart(url, source, SCHEMA, None, incremental=False) as outcomes:
        for outcome in outcomes:
            if outcome.result is None:
                raise RuntimeError(f"{outcome.table.name}: {outcome.error}")
            yield outcome.table.name, outcome.result.source_rows


def _step(outcomes: Outcomes, url: str, source: Path) -> None:
    tables = {t.name: t for t in SCHEMA.tables}
    table_checks = check_specs(SCHEMA)
    checks = check_names(table_checks)

    @multi_asset(
        name="migrate_tables",
        specs=[table_spec(t, SCHEMA) for t in SCHEMA.tables],
        check_specs=table_checks,
    )
    def migrate_tables():
        yield from source_checks()
        for name, rows in outcomes(url, source):  # in load order: FK order, as Dagster wants
            yield from table_events(tables[name], checks, rows)

    with DagsterInstance.ephemeral() as instance:
        assert materialize([migrate_tables], instance=instance).success


def measure(server: str, source: Path, way: str) -> float:
    name = f"engine_process_{os.getpid()}"
    url = fresh_database(server, name)
    try:
        started = time.perf_counter()
        if way == "engine alone":
            for _ in in_process(url, source):
                pass
        else:
            _step(in_process if way == "in the step" else in_child, url, source)
        return time.perf_counter() - started
    finally:
        drop_database(server, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # One sync per database, started here: the lock that keeps syncs apart is not measured.
    engine.target_lock = lambda *args, **kwargs: contextlib.nullcontext()
    measure(args.server, args.source, "in the step")  # warm: imports, first definitions
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    for round_ in range(1, args.rounds + 1):
        for way in reversed(WAYS):
            seconds[way].append(measure(args.server, args.source, way))
        print(f"round {round_}: " + ", ".join(f"{w} {seconds[w][-1]:.2f} s" for w in WAYS))
    for way in WAYS:
        print(f"{way:14} median {statistics.median(seconds[way]):.2f} s")


if __name__ == "__main__":
    main()
