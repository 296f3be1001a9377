"""Full migration benchmark: wall time, rows/s and peak memory on a large synthetic D1 database.

    python benchmarks/full_migration.py --users 10000 --target postgresql://postgres@127.0.0.1/bench

Builds the sample database (cached by size and seed), recreates the target database, then
migrates every table through Dagster exactly as `Materialize all` does, twice: a first load
into an empty database and a re-run on the unchanged source (which must change nothing).
"""

import argparse
import resource
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from d1_migration.defs.assets import SyncConfig
from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.demo.sample_data import build_sample_db
from d1_migration.runner import materialize_all


def recreate(url: str) -> None:
    params = conninfo_to_dict(url)
    admin = make_conninfo(url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{params["dbname"]}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{params["dbname"]}"')


def sample_database(workdir: Path, users: int, seed: int = 0) -> Path:
    """The sample D1 file of this size and seed, built once and kept in ``workdir`` for every
    benchmark (building 2M rows takes longer than migrating them)."""
    source = workdir / f"d1_{users}_{seed}.sqlite"
    if not source.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        build_sample_db(source, users=users, seed=seed)
        print(f"built {source} in {time.perf_counter() - started:.1f} s")
    return source


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", default="postgresql://postgres@127.0.0.1:5432/d1_bench")
    parser.add_argument("--workdir", default=".d1_migration/bench")
    args = parser.parse_args()

    source = sample_database(Path(args.workdir), args.users, args.seed)
    recreate(args.target)
    d1, target = D1Source(path=str(source)), PostgresTarget(url=args.target)
    sync = SyncSettings(state_dir=str(Path(args.workdir) / "sync"))

    for label in ("full load", "re-run, no change"):
        started = time.perf_counter()
        summary = materialize_all(d1, target, sync=sync, config=SyncConfig(mode="full"))
        seconds = time.perf_counter() - started
        rows = sum(m["source_rows"] for m in summary.tables.values())
        changed = sum(m["inserted"] + m["updated"] + m["deleted"] for m in summary.tables.values())
        ranked = sorted(summary.tables.items(), key=lambda kv: -kv[1]["seconds"])[:3]
        slowest = ", ".join(f"{name} {meta['seconds']:.1f}s" for name, meta in ranked)
        print(
            f"{label}: {rows} rows in {seconds:.1f} s ({rows / seconds:,.0f} rows/s), "
            f"{changed} rows changed, success={summary.success}, "
            f"slowest: {slowest}"
        )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS of this process): {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
