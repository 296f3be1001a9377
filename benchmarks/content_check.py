"""What matches_d1 costs: a whole verification of every table, and a 1/N slice, against the
full migration of the same database (Materialize all, as a first sync runs it).

    PYTHONPATH=. python benchmarks/content_check.py --users 35000   # 2.16M rows
"""

import argparse
import resource
import time
from pathlib import Path

import psycopg

from benchmarks.full_migration import recreate, sample_database
from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.runner import materialize_all
from d1_migration.source.snapshot import SqliteSource
from d1_migration.spec.tables import SCHEMA
from d1_migration.verify.content import WHOLE, Slice, verify_table


def verify_all(url: str, source: Path, part_of: int | None) -> tuple[float, list]:
    """Every table verified one after the other (whole, or slice 1 of ``part_of``)."""
    started = time.perf_counter()
    results = []
    with psycopg.connect(url, autocommit=True) as conn, SqliteSource(source).snapshot() as snap:
        for table in SCHEMA.tables:
            part = WHOLE if part_of is None else Slice(0, part_of)
            results.append(verify_table(conn, snap, table, SCHEMA, part))
    return time.perf_counter() - started, results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=35_000)
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--target", default="postgresql://postgres@127.0.0.1:5432/d1_bench_verify")
    parser.add_argument("--workdir", default=".d1_migration/bench")
    args = parser.parse_args()

    workdir = Path(args.workdir)
    source = sample_database(workdir, args.users)
    recreate(args.target)
    started = time.perf_counter()
    summary = materialize_all(
        D1Source(path=str(source)),
        PostgresTarget(url=args.target),
        sync=SyncSettings(state_dir=str(workdir / "verify_state")),
    )
    full = time.perf_counter() - started
    rows = sum(m["source_rows"] for m in summary.tables.values())
    print(f"full migration (Materialize all, first sync): {rows} rows in {full:.1f} s")

    whole, results = verify_all(args.target, source, None)
    failed = [r.table for r in results if not r.passed]
    slowest = sorted(results, key=lambda r: -r.seconds)[:3]
    print(
        f"matches_d1, every table whole: {whole:.1f} s = {100 * whole / full:.0f}% of the full "
        f"migration ({rows / whole:,.0f} rows/s); failed: {failed or 'none'}; slowest: "
        + ", ".join(f"{r.table} {r.seconds:.1f} s" for r in slowest)
    )
    part, results = verify_all(args.target, source, args.slices)
    print(
        f"matches_d1, slice 1 of {args.slices} of every table: {part:.1f} s = "
        f"{100 * part / full:.1f}% of the full migration; "
        f"failed: {[r.table for r in results if not r.passed] or 'none'}"
    )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS of this process): {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
