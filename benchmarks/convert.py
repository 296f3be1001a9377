"""CPU of the batch conversions alone: convert_batch per table, and parse_datetime on every
datetime column, with SQLite and Postgres out of the picture.

    PYTHONPATH=. python benchmarks/convert.py .d1_migration/bench/d1_8100_0_clean.sqlite
    PYTHONPATH=. python benchmarks/convert.py FILE --tables 5 --repeat 5

Every batch is read into memory first (as the load reads them: BATCH_ROWS rows, the source
query's projections), then each table's batches are converted ``--repeat`` times; a figure is
the least process CPU time of those runs, which on a shared machine moves far less than wall
time (another process's load shows up as the spread, not in the minimum).
"""

import argparse
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from d1_migration.source.snapshot import SqliteSource
from d1_migration.spec.kinds import Kind, decode_utf8, parse_datetime
from d1_migration.spec.model import Table
from d1_migration.spec.tables import SCHEMA
from d1_migration.target.load import BATCH_ROWS
from d1_migration.transforms import Converted, convert_batch


def least_cpu(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return min(times)


def convert_all(table: Table, batches: list[pa.RecordBatch]) -> list[Converted]:
    return [convert_batch(table, b, SCHEMA) for b in batches]


def map_all(function: Callable[[pa.Array], object], arrays: list[pa.Array]) -> list[object]:
    return [function(a) for a in arrays]


def datetime_texts(batches: list[pa.RecordBatch], table: Table) -> list[pa.Array]:
    """Each datetime column's value as its converter receives it (text, '' as NULL)."""
    texts = []
    for column in table.source_columns:
        if column.kind in (Kind.TIMESTAMPTZ, Kind.DATE):
            for batch in batches:
                text, _ = decode_utf8(batch[f"{column.name}__value"])
                texts.append(pc.if_else(pc.equal(text, ""), None, text))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", type=Path)
    parser.add_argument("--tables", type=int, default=6, help="the largest N tables")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with SqliteSource(args.source).snapshot() as s:
        sized = sorted(SCHEMA.tables, key=s.count, reverse=True)[: args.tables]
        data = {t.name: (t, list(s.batches(t, BATCH_ROWS))) for t in sized}

    total_convert = total_dates = 0.0
    cells = 0
    print(f"{'table':24} {'rows':>8} {'convert_batch':>14} {'datetimes':>10} {'cells':>8}")
    for name, (table, batches) in data.items():
        rows = sum(b.num_rows for b in batches)
        convert = least_cpu(partial(convert_all, table, batches), args.repeat)
        texts = datetime_texts(batches, table)
        dates = least_cpu(partial(map_all, parse_datetime, texts), args.repeat)
        n = sum(len(t) for t in texts)
        total_convert, total_dates, cells = total_convert + convert, total_dates + dates, cells + n
        print(f"{name:24} {rows:8} {convert:13.3f}s {dates:9.3f}s {n:8}")
    print(f"{'total':24} {'':8} {total_convert:13.3f}s {total_dates:9.3f}s {cells:8}")


if __name__ == "__main__":
    main()
