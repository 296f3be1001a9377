"""A/B of the first load's paths: wall time, and CPU of this process and of its Postgres backend.

    python benchmarks/first_load.py .d1_migration/bench/d1_10000_0.sqlite --path one-pass
    python benchmarks/first_load.py .d1_migration/bench/d1_10000_0.sqlite --path staged
    python benchmarks/first_load.py ... --copy csv     # the one pass with CSV instead of binary

Every table of the file into a new, empty database through sync_all (no Dagster, no shadow,
no checks), so that only the load is timed. The CPU figures say where the time goes on a
shared machine, where wall times swing with the other processes: client CPU (SQLite reads,
conversions, encoding; both threads) and the backend's (parsing, writing, indexes, FKs). The
backend's is read from /proc, so the server must run on this machine.
"""

import argparse
import os
import resource
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from d1_migration.source.snapshot import SqliteSource
from d1_migration.spec.tables import SCHEMA
from d1_migration.sync.engine import sync_all
from d1_migration.target import binary, first_load


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", type=Path)
    parser.add_argument("--admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--database", default="d1_first_load_bench")
    parser.add_argument("--path", choices=("one-pass", "staged"), default="one-pass")
    parser.add_argument("--copy", choices=("binary", "csv"), default="binary")
    args = parser.parse_args()
    first_load.ENABLED = args.path == "one-pass"
    binary.BINARY = args.copy == "binary"

    with psycopg.connect(args.admin, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{args.database}"')
    try:
        started, client = time.perf_counter(), time.process_time()
        url = make_conninfo(args.admin, dbname=args.database)
        with (
            psycopg.connect(url, autocommit=True) as conn,
            SqliteSource(args.source).snapshot() as s,
        ):
            pid = conn.info.backend_pid
            server = backend_cpu(pid)
            results = sync_all(conn, s, SCHEMA, None, incremental=False)
            server = backend_cpu(pid) - server
        wall, client = time.perf_counter() - started, time.process_time() - client
    finally:
        with psycopg.connect(args.admin, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
    rows = sum(r.source_rows for r in results.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.path}/{args.copy}: {rows} rows in {wall:.1f} s ({rows / wall:,.0f} rows/s); "
        f"CPU client {client:.1f} s, backend {server:.1f} s; peak RSS {peak:.0f} MiB; "
        f"quarantined {sum(r.quarantined for r in results.values())}"
    )


if __name__ == "__main__":
    main()
