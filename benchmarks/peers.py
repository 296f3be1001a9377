"""Peer tools for the full-migration benchmark: each loads a D1 (SQLite) file into a fresh
Postgres database of its own, measured the same way (wall seconds, peak RSS of the tool's
process tree, rows loaded, what it produced).

    PYTHONPATH=. python -m benchmarks.peers --source d1.sqlite [--tools pgloader,duckdb,csv]
    PYTHONPATH=. python -m benchmarks.peers --users 1100 --clean  # ~68k rows, built or reused

``--users`` without ``--clean`` takes the sample as the other benchmarks build it, with its
deliberately bad rows, on which the DuckDB copy and ``\\copy`` stop (see ``clean_sample``).

The peers are optional: ``pgloader`` (Debian package), ``duckdb==1.4.4`` with
``duckdb-ext-sqlite`` and ``duckdb-ext-postgres`` (PyPI; they ship the extensions, so nothing
is downloaded), ``sqlite3`` and ``psql`` (Debian). Of the project, only the sample generator is
imported, and only when a sample is to be built.

Peak RSS comes from ``os.wait4`` on the tool's process, in a small launcher process of its own
(see ``measure``): the kernel reports the largest resident set of that process or of any
descendant it waited for (Linux ``ru_maxrss``), so it covers a tool that forks and is never
mixed up with the harness's own memory or earlier runs. It is the peak of one process, not a sum
over processes running at once; every peer here runs one process at a time. The Postgres
server's own memory is not counted, for any tool.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

PGLOADER_WITH = (
    "include drop, create tables, create indexes, reset sequences, foreign keys, "
    "workers = 2, concurrency = 1, batch rows = 10000, prefetch rows = 10000"
)
PGLOADER_DYNAMIC_SPACE_MB = 8192


@dataclass(frozen=True)
class Measured:
    """One process run to completion: wall seconds, its peak RSS, and where its output went."""

    seconds: float
    peak_rss_mib: float
    returncode: int
    output: str  # stdout and stderr, interleaved


@dataclass(frozen=True)
class Produced:
    """What a tool left in its database: column types, keys and indexes (public schema)."""

    tables: int
    column_types: dict[str, int]
    primary_keys: int
    unique_constraints: int
    foreign_keys: int
    check_constraints: int
    not_null_columns: int
    unique_indexes: int  # unique indexes but those of primary keys (pgloader makes these)
    indexes: int  # every index, those behind PRIMARY KEY and UNIQUE included

    def summary(self) -> str:
        types = ", ".join(f"{t} {n}" for t, n in sorted(self.column_types.items()))
        return (
            f"{self.tables} tables; columns: {types}; PK {self.primary_keys}, "
            f"UNIQUE {self.unique_constraints}, FK {self.foreign_keys}, "
            f"CHECK {self.check_constraints}, NOT NULL {self.not_null_columns}, "
            f"unique indexes {self.unique_indexes}, indexes {self.indexes}"
        )


@dataclass(frozen=True)
class PeerResult:
    tool: str
    wall_seconds: float  # the tool's processes only: not creating or describing the database
    peak_rss_mib: float  # the largest of the tool's processes
    source_rows: int
    rows_loaded: int  # counted in Postgres afterwards
    phases: dict[str, float] = field(default_factory=dict)  # e.g. export / load seconds
    produced: Produced | None = None
    errors: list[str] = field(default_factory=list)  # empty when the load is complete
    # constraints or indexes the tool tried and failed to create (the rows are all there)
    ddl_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and self.rows_loaded == self.source_rows

    @property
    def rows_per_second(self) -> float:
        return self.rows_loaded / self.wall_seconds if self.wall_seconds else 0.0

    def line(self) -> str:
        phases = "".join(f", {k} {v:.1f} s" for k, v in self.phases.items())
        status = "ok" if self.ok else "FAILED: " + "; ".join(self.errors[:3])
        if self.ddl_errors:
            status += " (not created: " + ", ".join(self.ddl_errors) + ")"
        return (
            f"{self.tool}: {self.rows_loaded}/{self.source_rows} rows in {self.wall_seconds:.1f} s"
            f"{phases} ({self.rows_per_second:,.0f} rows/s), peak RSS "
            f"{self.peak_rss_mib:.0f} MiB, {status}"
        )


# -- measuring ------------------------------------------------------------------------------


# Runs the tool as its only child and reports the tool's wall seconds and ru_maxrss. A fresh
# process of its own, because a child's ru_maxrss counts the pages it shared with its parent
# before exec: measured from the harness itself, `true` shows the harness's whole RSS.
_LAUNCHER = """
import json, os, sys, time
started = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(sys.argv[1], "w") as f:
    json.dump({"seconds": seconds, "maxrss_kib": usage.ru_maxrss,
               "returncode": os.waitstatus_to_exitcode(status)}, f)
"""


def measure(argv: Sequence[str], *, cwd: Path | None = None) -> Measured:
    """Run ``argv`` to completion from a small launcher process (``python -S``, about 8 MiB,
    which is then the floor of what can be measured): wall seconds from spawn to exit, and
    peak RSS from ``os.wait4``, the largest resident set of the tool's process or of any
    descendant it waited for."""
    with tempfile.TemporaryDirectory(prefix="peer_measure_") as tmp:
        report = Path(tmp) / "report.json"
        with open(Path(tmp) / "output", "w+b") as out:
            subprocess.run(
                [sys.executable, "-S", "-c", _LAUNCHER, str(report), *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                check=False,
            )
            out.seek(0)
            text = out.read().decode("utf-8", "replace")
        if not report.exists():
            raise RuntimeError(f"could not run {argv[0]}: {text.strip()[-500:]}")
        r = json.loads(report.read_text())
    return Measured(r["seconds"], r["maxrss_kib"] / 1024, r["returncode"], text)


# -- source and target ----------------------------------------------------------------------


def sqlite_tables(source: Path) -> list[str]:
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND name NOT LIKE '_cf_%' ORDER BY name"
        ).fetchall()
    return [r[0] for r in rows]


def sqlite_row_counts(source: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as conn:
        return {
            t: conn.execute(f"SELECT count(*) FROM {_qi(t)}").fetchone()[0]
            for t in sqlite_tables(source)
        }


def _qi(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def fresh_database(server_url: str, name: str) -> str:
    """(Re)create database ``name`` on the server of ``server_url``; returns its URL."""
    admin = make_conninfo(server_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_url(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    admin = make_conninfo(server_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def database_url(server_url: str, name: str) -> str:
    """A postgresql:// URL for database ``name`` (pgloader reads URLs, not conninfo strings)."""
    p = conninfo_to_dict(server_url)
    user = p.get("user") or os.environ.get("PGUSER") or "postgres"
    host = p.get("host") or "127.0.0.1"
    port = p.get("port") or "5432"
    auth = user if not p.get("password") else f"{user}:{p['password']}"
    return f"postgresql://{auth}@{host}:{port}/{name}"


def target_row_counts(url: str, tables: Sequence[str]) -> dict[str, int]:
    """Rows per source table in the target; a missing table counts as 0 rows. Table names are
    matched case-insensitively (pgloader downcases identifiers)."""
    counts = {}
    with psycopg.connect(url, autocommit=True) as conn:
        present = {
            r[0].lower(): r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        }
        for t in tables:
            actual = present.get(t.lower())
            counts[t] = (
                conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(actual))
                ).fetchone()[0]
                if actual
                else 0
            )
    return counts


def describe(url: str) -> Produced:
    with psycopg.connect(url, autocommit=True) as conn:
        one = lambda q: conn.execute(q).fetchone()[0]  # noqa: E731
        types = Counter(
            r[0]
            for r in conn.execute(
                "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 "
                "AND NOT a.attisdropped"
            )
        )
        constraints = dict(
            conn.execute(
                "SELECT con.contype::text, count(*) FROM pg_constraint con "
                "JOIN pg_namespace n ON n.oid = con.connamespace WHERE n.nspname = 'public' "
                "GROUP BY 1"
            ).fetchall()
        )
        return Produced(
            tables=one("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
            column_types=dict(types),
            primary_keys=constraints.get("p", 0),
            unique_constraints=constraints.get("u", 0),
            foreign_keys=constraints.get("f", 0),
            check_constraints=constraints.get("c", 0),
            not_null_columns=one(
                "SELECT count(*) FROM information_schema.columns "
                "WHERE table_schema = 'public' AND is_nullable = 'NO'"
            ),
            unique_indexes=one(
                "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND i.indisunique AND NOT i.indisprimary"
            ),
            indexes=one("SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'"),
        )


def _finish(
    tool: str,
    runs: dict[str, Measured],
    source: Path,
    url: str,
    errors: list[str],
    ddl_errors: Sequence[str] = (),
) -> PeerResult:
    counts = sqlite_row_counts(source)
    loaded = target_row_counts(url, list(counts))
    for run_name, m in runs.items():
        if m.returncode != 0:
            errors.append(f"{run_name} exited {m.returncode}: {m.output.strip()[-500:]}")
    short = {t: (loaded[t], n) for t, n in counts.items() if loaded[t] != n}
    if short:
        errors.append(
            f"{len(short)} tables differ from the source (loaded, source): "
            + ", ".join(f"{t} {a}/{b}" for t, (a, b) in sorted(short.items())[:5])
        )
    return PeerResult(
        tool=tool,
        wall_seconds=sum(m.seconds for m in runs.values()),
        peak_rss_mib=max(m.peak_rss_mib for m in runs.values()),
        source_rows=sum(counts.values()),
        rows_loaded=sum(loaded.values()),
        phases={k: m.seconds for k, m in runs.items()} if len(runs) > 1 else {},
        produced=describe(url),
        errors=errors,
        ddl_errors=list(ddl_errors),
    )


# -- pgloader -------------------------------------------------------------------------------

# pgloader 3.6's summary table: one row per step or table, "name  errors  rows  bytes  time".
_SUMMARY_ROW = re.compile(r"^\s*(?P<name>\S.*?)\s+(?P<errors>\d+)\s+(?P<rows>\d+)(\s|$)")
# Steps after the data whose errors are constraints or indexes it could not create, not rows.
PGLOADER_DDL_STEPS = (
    "Create Indexes",
    "Index Build Completion",
    "Primary Keys",
    "Create Foreign Keys",
    "Create Triggers",
    "Reset Sequences",
)


def pgloader_summary(output: str) -> dict[str, int] | None:
    """Errors per line of pgloader's closing summary (tables and steps); None when it printed
    none (it crashed). Its "rows" column is not used: for a table with a rejected row it shows
    0 although every other row was loaded (seen with 3.6.7), so rows are counted in Postgres."""
    lines = output.splitlines()
    starts = [i for i, ln in enumerate(lines) if "table name" in ln and "errors" in ln]
    if not starts:
        return None
    errors = {}
    for ln in lines[starts[-1] + 1 :]:
        m = _SUMMARY_ROW.match(ln)
        if m and not m["name"].startswith("Total import time"):
            errors[m["name"].strip()] = int(m["errors"])
    return errors


def pgloader_command_file(source: Path, target_url: str) -> str:
    return (
        "LOAD DATABASE\n"
        f"  FROM sqlite://{source.resolve()}\n"
        f"  INTO {target_url}\n"
        f"  WITH {PGLOADER_WITH}\n"
        ";\n"
    )


def run_pgloader(source: Path, server_url: str, dbname: str = "peer_pgloader") -> PeerResult:
    """pgloader 3.6, tuned as issue 11 measured it, into a fresh database ``dbname``."""
    exe = shutil.which("pgloader")
    if exe is None:
        raise FileNotFoundError("pgloader is not installed (apt-get install -y pgloader)")
    url = fresh_database(server_url, dbname)
    with tempfile.TemporaryDirectory(prefix="peer_pgloader_") as tmp:
        load = Path(tmp) / "d1.load"
        load.write_text(pgloader_command_file(source, url))
        argv = [exe, "--dynamic-space-size", str(PGLOADER_DYNAMIC_SPACE_MB)]
        argv += ["--root-dir", tmp, "--no-ssl-cert-verification", str(load)]
        run = measure(argv, cwd=Path(tmp))
    summary = pgloader_summary(run.output)
    if summary is None:
        return _finish("pgloader", {"pgloader": run}, source, url, ["no summary printed"])
    errors = [
        f"{name}: {n} rejected"
        for name, n in summary.items()
        if n and name not in PGLOADER_DDL_STEPS
    ]
    ddl = [f"{name}: {n} failed" for name, n in summary.items() if n and name in PGLOADER_DDL_STEPS]
    return _finish("pgloader", {"pgloader": run}, source, url, errors, ddl)


# -- DuckDB ---------------------------------------------------------------------------------

_DUCKDB_SCRIPT = """
import json, sys, duckdb
ext_dir, source, target = sys.argv[1:4]
con = duckdb.connect()
con.execute("SET autoinstall_known_extensions = false")
con.execute("SET extension_directory = ?", [ext_dir])
con.execute("LOAD sqlite")
con.execute("LOAD postgres")
con.execute("SET sqlite_all_varchar = true")
lit = lambda v: "'" + v.replace("'", "''") + "'"
con.execute(f"ATTACH {lit(source)} AS s (TYPE sqlite, READ_ONLY)")
con.execute(f"ATTACH {lit(target)} AS pg (TYPE postgres)")
names = [r[0] for r in con.execute(
    "SELECT table_name FROM duckdb_tables() WHERE database_name = 's' ORDER BY 1").fetchall()]
q = lambda n: '"' + n.replace('"', '""') + '"'
for n in names:
    if n.startswith("_cf_"):
        continue
    con.execute(f"CREATE TABLE pg.{q(n)} AS SELECT * FROM s.{q(n)}")
print(json.dumps({"tables": len(names), "threads": con.execute(
    "SELECT current_setting('threads')").fetchone()[0]}))
"""


def duckdb_extension_dir() -> Path:
    """The extension directory the duckdb-ext-* wheels install (``duckdb_ext/extensions``),
    found without importing duckdb into this process."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util as u; s = u.find_spec('duckdb_ext'); "
            "print(list(s.submodule_search_locations)[0] if s else '')",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not out or not (Path(out) / "extensions").is_dir():
        raise FileNotFoundError(
            "duckdb extensions not installed (pip install duckdb==1.4.4 duckdb-ext-sqlite "
            "duckdb-ext-postgres)"
        )
    return Path(out) / "extensions"


def run_duckdb(source: Path, server_url: str, dbname: str = "peer_duckdb") -> PeerResult:
    """DuckDB 1.4's sqlite and postgres scanners: ``CREATE TABLE pg.t AS SELECT * FROM s.t``
    for every table, in a subprocess of its own (so its RSS is its own)."""
    ext = duckdb_extension_dir()
    url = fresh_database(server_url, dbname)
    run = measure([sys.executable, "-c", _DUCKDB_SCRIPT, str(ext), str(source.resolve()), url])
    return _finish("duckdb", {"duckdb": run}, source, url, [])


# -- sqlite3 -csv + psql \copy --------------------------------------------------------------


def _columns(source: Path, table: str) -> list[str]:
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as conn:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({_qi(table)})")]


def run_csv(source: Path, server_url: str, dbname: str = "peer_csv") -> PeerResult:
    """``sqlite3 -csv`` exports every table to a file (one sqlite3 process), then one ``psql``
    creates a text table per table and ``\\copy``s the file in; export and load timed apart."""
    sqlite_exe, psql_exe = shutil.which("sqlite3"), shutil.which("psql")
    if not sqlite_exe or not psql_exe:
        raise FileNotFoundError(
            "sqlite3 and psql are needed (apt-get install sqlite3 postgresql-client)"
        )
    url = fresh_database(server_url, dbname)
    tables = sqlite_tables(source)
    with tempfile.TemporaryDirectory(prefix="peer_csv_") as tmp:
        files = {t: Path(tmp) / f"{i}.csv" for i, t in enumerate(tables)}
        export = Path(tmp) / "export.sql"
        export.write_text(
            ".mode csv\n"
            + "".join(f".once '{files[t]}'\nSELECT * FROM {_qi(t)};\n" for t in tables)
        )
        load = Path(tmp) / "load.sql"
        load.write_text(
            "\\set ON_ERROR_STOP on\n"
            + "".join(
                f"CREATE TABLE {_qi(t)} ("
                + ", ".join(f"{_qi(c)} text" for c in _columns(source, t))
                + f");\n\\copy {_qi(t)} FROM '{files[t]}' WITH (FORMAT csv)\n"
                for t in tables
            )
        )
        runs = {
            "export": measure(
                [sqlite_exe, "-readonly", "-bail", "-init", str(export), str(source), ".quit"]
            ),
        }
        runs["load"] = measure([psql_exe, "-X", "-q", "-d", url, "-f", str(load)])
    return _finish("sqlite3 -csv + psql \\copy", runs, source, url, [])


def clean_sample(workdir: Path, users: int, seed: int = 0) -> Path:
    """The sample file of this size without its deliberately bad rows (``bad_rows=False``),
    built once and kept in ``workdir`` as ``d1_<users>_<seed>_clean.sqlite``.

    The as-built sample (``full_migration.sample_database``) holds about 30 rows the project
    must quarantine, among them invalid UTF-8 and a NUL character, which stop the DuckDB copy
    and ``\\copy`` outright (Postgres refuses them in text), and text in INTEGER columns, which
    pgloader rejects row by row. Every peer completes on this file. Both files keep the 1% of
    users whose rows refer to them by an id in another case, so FOREIGN KEYs still fail."""
    source = workdir / f"d1_{users}_{seed}_clean.sqlite"
    if not source.exists():
        from d1_migration.demo.sample_data import build_sample_db  # the project's generator

        workdir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        build_sample_db(source, users=users, seed=seed, bad_rows=False)
        print(f"built {source} in {time.perf_counter() - started:.1f} s")
    return source


PEERS: dict[str, Callable[[Path, str, str], PeerResult]] = {
    "pgloader": run_pgloader,
    "duckdb": run_duckdb,
    "csv": run_csv,
}


def run_peer(tool: str, source: Path, server_url: str, *, keep: bool = False) -> PeerResult:
    """Run one peer into a fresh database ``peer_<tool>_<pid>``, dropped afterwards unless
    ``keep``."""
    dbname = f"peer_{tool}_{os.getpid()}"
    try:
        return PEERS[tool](source, server_url, dbname)
    finally:
        if not keep:
            drop_database(server_url, dbname)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--source", type=Path, help="a D1 SQLite file (read only)")
    where.add_argument("--users", type=int, help="build/reuse the sample file of this size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clean", action="store_true", help="with --users: the sample without its bad rows"
    )
    parser.add_argument("--workdir", default=".d1_migration/bench")
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--tools", default=",".join(PEERS), help="comma-separated: " + ",".join(PEERS)
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each tool (median)")
    parser.add_argument("--keep", action="store_true", help="keep each peer's database")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    if args.source is not None:
        source = args.source
    elif args.clean:
        source = clean_sample(Path(args.workdir), args.users, args.seed)
    else:
        from benchmarks.full_migration import sample_database  # imports the project

        source = sample_database(Path(args.workdir), args.users, args.seed)
    results = []
    for tool in args.tools.split(","):
        runs = []
        for _ in range(args.repeat):
            runs.append(run_peer(tool.strip(), source, args.server, keep=args.keep))
            print(runs[-1].line(), flush=True)
        if runs[-1].produced:
            print(f"  produced: {runs[-1].produced.summary()}", flush=True)
        if args.repeat > 1:
            walls = [r.wall_seconds for r in runs]
            print(
                f"  median of {len(runs)}: {statistics.median(walls):.1f} s "
                f"(min {min(walls):.1f}, max {max(walls):.1f}), peak RSS "
                f"{statistics.median(r.peak_rss_mib for r in runs):.0f} MiB",
                flush=True,
            )
        results += runs
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    if not all(r.ok for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
