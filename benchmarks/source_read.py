"""A/B of reading D1 into Arrow batches: ADBC's SQLite driver against Python's sqlite3.

    python benchmarks/source_read.py .d1_migration/bench/d1_8100_0_clean.sqlite [--repeat 3]

Every table of the spec, whole, in the load's batch size, on one snapshot; alternating the two
readers; wall and CPU seconds of this process per pass (CPU moves less on a shared machine).
"""

import argparse
import time
from pathlib import Path

from d1_migration.source.snapshot import SqliteSource
from d1_migration.spec.tables import SCHEMA
from d1_migration.target.load import BATCH_ROWS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with SqliteSource(args.source).snapshot() as snapshot:
        readers = {"sqlite3": snapshot.sqlite_batches, "adbc": snapshot.arrow_batches}
        for _ in range(args.repeat):
            for name, read in readers.items():
                wall, cpu = time.perf_counter(), time.process_time()
                rows = sum(b.num_rows for t in SCHEMA.tables for b in read(t, BATCH_ROWS))
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                print(f"{name}: {rows} rows in {wall:.2f} s, CPU {cpu:.2f} s")


if __name__ == "__main__":
    main()
