"""Re-sync benchmark: re-syncs after no change, 1% changed and 0.1% of users deleted, each
against the full migration.

    python benchmarks/incremental_sync.py --users 10000 [--repeat 3]

Builds (or reuses) the sample database, copies it, migrates the copy into a fresh target, then
re-syncs it unchanged, ``--repeat`` times; then, ``--repeat`` times, changes 1% of the rows of every
table (half updates, a quarter inserts, a quarter deletes in tables no other table references, so
deletes do not cascade; rows picked uniformly at random, a new seed each time) and re-syncs; then,
``--repeat`` times, deletes 0.1% of the users (picked at random) with SQLite's foreign keys on, so
D1's ON DELETE CASCADE / SET NULL reach every row of theirs in every table, as an account deletion
in the app does, and re-syncs. Every run is a whole Dagster run of the migrate job (all 66 table
assets and their checks, in process, with an ephemeral instance): its wall time includes the checks
and Dagster's own per-run cost (about 2 s here for 66 materializations and 187 check results), which
does not grow with the data. "tables" is the time spent syncing the tables; "full passes" names the
tables a re-sync loaded in full. The ratios (each case's share of the full migration) use the median
of the repeats. With ``--dagster-pg-url`` (a database it recreates) the runs record into Dagster's
Postgres storage as dagster.yaml configures it, as deployed runs do.
"""

import argparse
import contextlib
import random
import shutil
import sqlite3
import statistics
import time
from pathlib import Path

from benchmarks.full_migration import recreate, sample_database
from d1_migration.defs.dagster_storage import pooled_instance
from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.runner import RunSummary, materialize_all
from d1_migration.spec.model import Kind
from d1_migration.spec.tables import SCHEMA


def change_one_percent(path: Path, seed: int) -> int:
    """Mixed inserts, updates and deletes on 1% of each table's rows; returns rows changed."""
    rng = random.Random(seed)
    changed = 0
    referenced = {p for t in SCHEMA.tables for p in t.parents}
    with sqlite3.connect(path, isolation_level=None) as d1:
        d1.execute("PRAGMA foreign_keys = ON")
        d1.execute("BEGIN")
        for table in SCHEMA.tables:
            rowids = [r[0] for r in d1.execute(f'SELECT rowid FROM "{table.name}"')]
            picked = rng.sample(rowids, len(rowids) // 100)
            quarter = len(picked) // 4
            stamp = next(
                (
                    c.source_name
                    for c in table.columns
                    if c.kind is Kind.TIMESTAMPTZ and c.source_name and not c.source_sql
                ),
                None,
            )
            updates = picked[2 * quarter :] if stamp else []
            for rowid in updates:
                d1.execute(
                    f'UPDATE "{table.name}" SET "{stamp}" = ? WHERE rowid = ?',
                    ["2026-03-01T00:00:00Z", rowid],
                )
            if table.name not in referenced:
                for rowid in picked[:quarter]:
                    d1.execute(f'DELETE FROM "{table.name}" WHERE rowid = ?', [rowid])
            if (
                table.primary_key == ("id",)
                and not table.uniques
                and not any(c.unique for c in table.columns)
            ):
                cols = [r[1] for r in d1.execute(f'PRAGMA table_info("{table.name}")')]
                rest = ", ".join(f'"{c}"' for c in cols if c != "id")
                for rowid in picked[quarter : 2 * quarter]:
                    with contextlib.suppress(sqlite3.IntegrityError):  # copies of orphans
                        d1.execute(
                            f'INSERT INTO "{table.name}" (id, {rest}) SELECT '
                            f"'bench-' || id, {rest} FROM \"{table.name}\" WHERE rowid = ?",
                            [rowid],
                        )
            changed += len(picked)
        d1.execute("COMMIT")
    return changed


def delete_users(path: Path, seed: int, share: float = 0.001) -> tuple[int, int]:
    """Delete ``share`` of the users as the app does, D1 cascading; returns (users deleted,
    rows removed or changed in all, the users included: SQLite's total_changes)."""
    rng = random.Random(seed)
    with sqlite3.connect(path, isolation_level=None) as d1:
        d1.execute("PRAGMA foreign_keys = ON")
        rowids = [r[0] for r in d1.execute("SELECT rowid FROM users")]
        picked = rng.sample(rowids, max(1, round(len(rowids) * share)))
        before = d1.total_changes
        d1.execute("BEGIN")
        for rowid in picked:
            d1.execute("DELETE FROM users WHERE rowid = ?", [rowid])
        d1.execute("COMMIT")
        return len(picked), d1.total_changes - before


def timed(label: str, run: callable) -> tuple[float, RunSummary]:
    started = time.perf_counter()
    summary = run()
    seconds = time.perf_counter() - started
    modes = sorted({m["mode"] for m in summary.tables.values()})
    changes = sum(m["inserted"] + m["updated"] + m["deleted"] for m in summary.tables.values())
    tables = sum(m["seconds"] for m in summary.tables.values())
    full = sorted(name for name, m in summary.tables.items() if m["mode"] == "full")
    ranked = sorted(summary.tables.items(), key=lambda kv: -kv[1]["seconds"])[:3]
    verified = sum(c.metadata["seconds"] for c in summary.checks if c.check == "matches_d1")
    slowest = ", ".join(f"{name} {meta['seconds']:.1f} s" for name, meta in ranked)
    failed = [f"{c.asset}:{c.check}" for c in summary.failed_checks if c.check == "row_parity"]
    print(
        f"{label}: {seconds:.1f} s (tables {tables:.1f} s; slowest {slowest}; matches_d1 "
        f"{verified:.1f} s beside them), modes {modes}, "
        f"{changes} target "
        f"rows changed, row_parity failures {failed or 'none'}, success={summary.success}"
        + (f", full passes: {', '.join(full)}" if full and len(full) < len(summary.tables) else "")
    )
    return seconds, summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--target", default="postgresql://postgres@127.0.0.1:5432/d1_bench_sync")
    parser.add_argument("--workdir", default=".d1_migration/bench")
    parser.add_argument("--dagster-pg-url", help="record runs in this Postgres database")
    args = parser.parse_args()

    workdir = Path(args.workdir)
    pristine = sample_database(workdir, args.users)
    source = workdir / "d1_sync_bench.sqlite"
    shutil.copy(pristine, source)
    shutil.rmtree(workdir / "sync_state", ignore_errors=True)
    recreate(args.target)
    d1, target = D1Source(path=str(source)), PostgresTarget(url=args.target)
    sync = SyncSettings(state_dir=str(workdir / "sync_state"))

    instance = None
    if args.dagster_pg_url:  # a fresh database, with the storage the project's dagster.yaml sets
        recreate(args.dagster_pg_url)
        instance = pooled_instance(workdir / "dagster_home", args.dagster_pg_url)

    def run() -> RunSummary:
        return materialize_all(d1, target, sync=sync, instance=instance)

    def resync(label: str) -> float:
        return timed(label, run)[0]

    full, summary = timed("full migration", run)
    rows = sum(m["source_rows"] for m in summary.tables.values())
    quiet = [resync(f"re-sync, no change ({i + 1})") for i in range(args.repeat)]
    busy = []
    for i in range(args.repeat):
        changed = change_one_percent(source, seed=i + 1)
        print(f"changed {changed} of {rows} source rows ({100 * changed / rows:.2f}%)")
        busy.append(resync(f"re-sync, 1% changed ({i + 1})"))
    gone = []
    for i in range(args.repeat):
        users, removed = delete_users(source, seed=100 + i)
        print(f"deleted {users} users in D1, which cascaded: {removed} rows deleted or changed")
        gone.append(resync(f"re-sync, 0.1% of users deleted ({i + 1})"))

    def share(label: str, runs: list[float]) -> str:
        median = statistics.median(runs)
        each = ", ".join(f"{100 * r / full:.1f}%" for r in runs)
        return f"{label} {median:.1f} s = {100 * median / full:.1f}% (each: {each})"

    print(
        f"{rows} rows, full migration {full:.1f} s; median re-sync: "
        + "; ".join(
            (
                share("no change", quiet),
                share("1% changed", busy),
                share("0.1% of users deleted", gone),
            )
        )
    )


if __name__ == "__main__":
    main()
