"""Where the time of one Materialize all goes: a py-spy profile of the harness's project run,
with the CPU of this project's process and of the Postgres server beside it.

    PYTHONPATH=. python benchmarks/profile_run.py .d1_migration/bench/d1_32000_0_clean.sqlite
    PYTHONPATH=. python benchmarks/profile_run.py SOURCE --out benchmarks/profile.md

Runs ``python -m benchmarks.project full`` (what the harness times: Materialize all as the UI
runs it, into a fresh database) under ``py-spy record --idle`` at 100 Hz, then files every
sample of every thread under what it is part of (CONTEXTS, the first a frame matches) and
what it was doing (ACTIVITIES, the innermost). A thread's samples are its seconds, busy or
waiting, so the list says what each thread spent its time on; the CPU line says how much of
the two cores went to the client (all its threads) and to Postgres (every server process, so
run it on a quiet machine). Needs py-spy (``pip install py-spy``), which may trace its child.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import psycopg

RATE = 100  # samples per second and thread
# What a sample is part of: the first of these that a frame of its stack matches.
CONTEXTS = [
    ("importing modules", r"_find_and_load"),
    ("matches_d1 content check", r"verify_table"),
    ("other checks (row parity, FKs, wallet)", r"table_check_results|CheckRunner"),
    ("table step", r"sync_tables|migrate_table|FirstLoad\.run"),
    ("reading ahead (SQLite + conversions)", r"_ReadAhead\._run"),
    ("shadow (change detection)", r"Shadow\.|/sync/shadow\.py"),
    ("Dagster", r"dagster/_|dagster_"),
]
# What it was doing: the innermost frame that matches one of these.
ACTIVITIES = [
    ("SQLite read", r"Snapshot\.(arrow_batches|sqlite_batches|batches)|sqlite3"),
    ("conversions", r"convert_batch"),
    ("rules in Arrow", r"FirstLoad\._decide"),
    ("COPY encoding", r"BinaryRows\.encode|_csv \("),
    ("waiting for Postgres", r"psycopg"),
    ("idle", r"Condition\.wait|Event\.wait|/queue\.py|time\.sleep|Thread\.join|_worker \("),
    ("Dagster events", r"handle_new_event|store_event|log_dagster_event"),
    ("importing", r"_find_and_load"),
]


def _innermost(frames: list[str], patterns: list[tuple[str, str]], default: str) -> str:
    for frame in reversed(frames):
        for name, pattern in patterns:
            if re.search(pattern, frame):
                return name
    return default


def postgres_cpu_seconds() -> float:
    """user + system seconds of every postgres process now running on this machine."""
    total, tick = 0, os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        if name.startswith("postgres"):
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / tick


def classify(frames: list[str]) -> tuple[str, str]:
    """(context, activity) of one sample's stack, outermost frame first."""
    stack = ";".join(frames)
    context = next((name for name, pattern in CONTEXTS if re.search(pattern, stack)), "other")
    return context, _innermost(frames, ACTIVITIES, "Python")


def _seconds(contexts: dict[str, Counter]) -> float:
    return sum(c.total() for c in contexts.values()) / RATE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--out", type=Path, help="write the markdown here too")
    args = parser.parse_args()
    db = f"profile_run_{os.getpid()}"
    with psycopg.connect(args.server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    url = psycopg.conninfo.make_conninfo(args.server, dbname=db)
    try:
        with tempfile.TemporaryDirectory(prefix="profile_run_") as tmp:
            raw, figures = Path(tmp) / "raw.txt", Path(tmp) / "figures.json"
            server_before, started = postgres_cpu_seconds(), time.perf_counter()
            subprocess.run(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--idle",
                    "--threads",
                    "-r",
                    str(RATE),
                    "-f",
                    "raw",
                    "-o",
                    str(raw),
                    "--",
                    sys.executable,
                    "-m",
                    "benchmarks.project",
                    "full",
                    str(args.source),
                    url,
                    tmp,
                    str(figures),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wall = time.perf_counter() - started
            server = postgres_cpu_seconds() - server_before
            run = json.loads(figures.read_text())
            client = run["cpu_seconds"]
            threads: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
            for line in raw.read_text().splitlines():
                stack, count = line.rsplit(" ", 1)
                frames = stack.split(";")
                # "thread (tid): name"; a pool's threads under the pool's name
                name = frames[0].partition(": ")[2] or "unnamed"
                thread = re.sub(r"-\d+(_\d+)?$", "", name)
                context, activity = classify(frames[1:])
                threads[thread][context][activity] += int(count)
    finally:
        with psycopg.connect(args.server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    lines = [
        f"Profile of one Materialize all (`benchmarks/profile_run.py {args.source.name}`, "
        f"{run['rows']:,} rows): wall {wall:.1f} s under py-spy (the run itself reported "
        f"{run['seconds']:.1f} s, the table step {run['tables_seconds']:.1f} s, importing "
        f"{run['import_seconds']:.1f} s).",
        "",
        f"- CPU: this project's process {client:.1f} s (all its threads), Postgres "
        f"{server:.1f} s; together {client + server:.1f} s of the {2 * wall:.1f} s two cores "
        f"give in {wall:.1f} s.",
        "",
        "Seconds of each thread (busy or waiting), by what they were part of and, in brackets, "
        "what the thread was doing:",
        "",
    ]
    for thread, contexts in sorted(threads.items(), key=lambda kv: -_seconds(kv[1])):
        if _seconds(contexts) < 0.5:
            continue
        lines.append(f"- `{thread}` thread, {_seconds(contexts):.1f} s:")
        for context, activities in sorted(contexts.items(), key=lambda kv: -kv[1].total()):
            if activities.total() / RATE < 0.1:
                continue
            parts = ", ".join(
                f"{name} {n / RATE:.1f}" for name, n in activities.most_common() if n >= RATE / 10
            )
            lines.append(f"  - {context} {activities.total() / RATE:.1f} s ({parts})")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
