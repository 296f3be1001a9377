"""Issue 11's done-when: a fresh migration by two versions of the project gives the same Postgres
contents and the same quarantine, compared table by table.

    python benchmarks/compare_fresh.py                          # 81e5927 against HEAD
    python benchmarks/compare_fresh.py --base 81e5927 --head WORKTREE --output result.md
    python benchmarks/compare_fresh.py --source path/to/d1.sqlite --keep

Each version (a git ref; ``WORKTREE`` is HEAD plus the uncommitted changes to tracked files)
is checked out with ``git worktree add --detach`` into a temporary directory, installed into a
venv of its own (``pip install -e .``) and run through its own command line into a fresh
database of its own: ``d1-migration migrate --full`` where the version has that command, else
its README's main command, ``dagster asset materialize -m d1_migration.definitions --select
'*'`` (81e5927's ``d1-migration`` has only ``demo`` and ``cutover-check``). Both read a private
copy of the same D1 file, by default the as-built 500k sample (``d1_8100_0.sqlite`` of the main
worktree's .d1_migration/bench, with its ~30 deliberately bad rows), through the variables
every version reads (D1_MIGRATION_SOURCE, D1_MIGRATION_TARGET_URL, D1_MIGRATION_STATE_DIR, a
DAGSTER_HOME of its own), with nothing else of the caller's environment of those names.

The comparison: the schema (columns with types, nullability and defaults, constraints by
pg_get_constraintdef, indexes by pg_indexes.indexdef, enum labels, triggers) of ``public`` and
``d1_migration``; for every app table (``public``) its row count and the rows in one database
and not the other over all columns, with EXCEPT ALL's multiset semantics, on the rows' text as
COPY writes it (float8's shortest exact text: equal text is equal bits, so floats compare
exactly); and in ``d1_migration`` the quarantine (rejected_rows without its timestamps and run
id, whether each entry is open instead of resolved_at), id_map and ref_map. Exit 0 when both
versions produced the same, 1 when anything differs, 2 when a version could not be run. The
temporary directories and worktrees are removed at the end, the databases dropped unless
``--keep``; nothing is cached.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

if __package__ in (None, ""):  # run as a script: benchmarks/ is importable from the repo
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.peers import drop_database, fresh_database

REPO = Path(__file__).resolve().parent.parent
BASE = "81e5927"  # the last commit before issue 11's performance work began
WORKTREE = "WORKTREE"
APP_SCHEMA = "public"
BOOKKEEPING = "d1_migration"
SAMPLE = Path(".d1_migration/bench/d1_8100_0.sqlite")
# The project's own settings: a version sees only the ones this script sets.
SETTINGS_PREFIXES = ("D1_MIGRATION_", "DAGSTER_", "CLOUDFLARE_", "_D1_MIGRATION")
SHOWN_ROWS = 20  # differing rows shown per table and side; the counts are always whole

# What the comparison reads besides the app tables: (title, query); each query's rows are a
# multiset compared as text.
SCHEMA_QUERIES = {
    "columns": """
        SELECT table_schema, table_name, ordinal_position, column_name, data_type, udt_name,
               character_maximum_length, numeric_precision, numeric_scale, is_nullable,
               column_default
        FROM information_schema.columns WHERE table_schema IN ('public', 'd1_migration')""",
    "constraints": """
        SELECT n.nspname, c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname IN ('public', 'd1_migration')""",
    "indexes": """
        SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname IN ('public', 'd1_migration')""",
    "enums": """
        SELECT n.nspname, t.typname, string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
        FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
        JOIN pg_namespace n ON n.oid = t.typnamespace GROUP BY 1, 2""",
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND n.nspname IN ('public', 'd1_migration')""",
}
# Which column of each catalog query names the relation (or type) a row is about.
RELATION_COLUMN = {"columns": 1, "constraints": 1, "indexes": 1, "enums": 1, "triggers": 0}
QUARANTINE_QUERIES = {
    "rejected_rows": """
        SELECT source_table, source_pk, target_pk, reason_code, column_name, reason, raw_row,
               resolved_at IS NULL AS open
        FROM d1_migration.rejected_rows""",
    "id_map": "SELECT * FROM d1_migration.id_map",
    "ref_map": "SELECT * FROM d1_migration.ref_map",
}


class NotRun(Exception):
    """A version could not be checked out, installed or migrated (exit 2)."""


@dataclass
class Version:
    label: str  # "base" or "head"
    ref: str
    commit: str = ""
    subject: str = ""
    command: list[str] = field(default_factory=list)
    dbname: str = ""
    url: str = ""
    returncode: int | None = None
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    failed_checks: list[str] = field(default_factory=list)


@dataclass
class Difference:
    """The rows of one compared relation: how many each side has, and those only in one."""

    name: str
    columns: list[str]
    base_rows: int
    head_rows: int
    only_base: Counter[str]
    only_head: Counter[str]

    @property
    def same(self) -> bool:
        return not self.only_base and not self.only_head


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def resolve(ref: str) -> str:
    """The commit of ``ref``; WORKTREE: a commit of HEAD with the uncommitted changes to tracked
    files (``git stash create``, which touches neither the index nor the working tree)."""
    if ref == WORKTREE:
        return git("stash", "create") or git("rev-parse", "HEAD")
    return git("rev-parse", "--verify", f"{ref}^{{commit}}")


def default_source() -> Path:
    """The as-built 500k sample of the main worktree (the benchmarks build it there)."""
    common = Path(git("rev-parse", "--path-format=absolute", "--git-common-dir"))
    return common.parent / SAMPLE


@contextmanager
def checkout(commit: str, where: Path) -> Iterator[Path]:
    git("worktree", "add", "--detach", str(where), commit)
    try:
        yield where
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(where)],
            capture_output=True,
            check=False,
        )
        git("worktree", "prune")


def install(src: Path, venv: Path) -> Path:
    """A venv of its own with the version installed editable; returns its bin directory."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "-e", str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    if pip.returncode:
        raise NotRun(f"pip install -e {src} failed: {pip.stderr.strip()[-2000:]}")
    return venv / "bin"


def migrate_command(bin_dir: Path, env: dict[str, str]) -> list[str]:
    """The version's own command for a full migration: ``d1-migration migrate --full`` when its
    command line has it, else the README's ``dagster asset materialize`` of every asset."""
    probe = subprocess.run(
        [str(bin_dir / "d1-migration"), "migrate", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if probe.returncode == 0 and "--full" in probe.stdout:
        return [str(bin_dir / "d1-migration"), "migrate", "--full", "--workdir", "work"]
    return [
        str(bin_dir / "dagster"),
        *("asset", "materialize", "-m", "d1_migration.definitions", "--select", "*"),
    ]


def run_version(version: Version, source: Path, server: str, tmp: Path, stack: ExitStack) -> None:
    """Check out, install and migrate ``version`` into a fresh database of its own."""
    home = tmp / version.label
    src = stack.enter_context(checkout(version.commit, home / "src"))
    bin_dir = install(src, home / "venv")
    run_dir = home / "run"
    for sub in ("dagster_home", "state", "work"):
        (run_dir / sub).mkdir(parents=True)
    private_source = run_dir / source.name  # the sample file stays untouched
    shutil.copyfile(source, private_source)
    version.dbname = f"compare_fresh_{version.label}_{os.getpid()}"
    version.url = fresh_database(server, version.dbname)
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
    env.pop("PYTHONPATH", None)  # the version's own package, not this checkout's
    env.update(
        D1_MIGRATION_SOURCE=str(private_source),
        D1_MIGRATION_TARGET_URL=version.url,
        D1_MIGRATION_STATE_DIR=str(run_dir / "state"),
        DAGSTER_HOME=str(run_dir / "dagster_home"),
    )
    version.command = migrate_command(bin_dir, env)
    print(f"[{version.label}] {version.commit[:10]}: {_shown(version.command)}", flush=True)
    started, cpu_before = time.perf_counter(), _children_cpu()
    with open(run_dir / "output.log", "w+b") as out:
        run = subprocess.run(
            version.command, stdout=out, stderr=subprocess.STDOUT, cwd=run_dir, env=env
        )
        out.seek(0)
        output = out.read().decode("utf-8", "replace")
    version.wall_seconds = time.perf_counter() - started
    version.cpu_seconds = _children_cpu() - cpu_before  # the run's processes, waited for
    version.returncode = run.returncode
    print(
        f"[{version.label}] exit {run.returncode} in {version.wall_seconds:.0f} s wall, "
        f"{version.cpu_seconds:.0f} s CPU",
        flush=True,
    )
    version.failed_checks = failed_checks(run_dir / "dagster_home")
    if not _migrated(version.url):
        raise NotRun(
            f"{version.label} ({version.commit[:10]}) migrated nothing "
            f"(exit {run.returncode}); the end of its output:\n"
            + "\n".join(output.strip().splitlines()[-15:])
        )


def _shown(command: Sequence[str]) -> str:
    """The command as a reader would type it (the venv's bin directory left out)."""
    return " ".join([Path(command[0]).name, *command[1:]])


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def failed_checks(dagster_home: Path) -> list[str]:
    """The asset checks that did not pass in the version's runs, read from its own Dagster
    storage (the same events whatever the version's command prints)."""
    from dagster import DagsterEventType, DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    failed = set()
    try:
        with DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home))) as instance:
            for run in instance.get_runs():
                for entry in instance.all_logs(
                    run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
                ):
                    check = entry.dagster_event.event_specific_data
                    if not check.passed:
                        asset = check.asset_key.to_user_string()
                        failed.add(f"{asset} {check.check_name} ({check.severity.value})")
    except Exception as unreadable:  # e.g. a storage another Dagster version wrote
        return [f"(its Dagster storage could not be read here: {unreadable!r})"]
    return sorted(failed)


def _migrated(url: str) -> bool:
    """Whether the run got as far as the bookkeeping schema and some app tables."""
    with psycopg.connect(url) as conn:
        return bool(
            conn.execute(
                "SELECT to_regclass('d1_migration.rejected_rows') IS NOT NULL AND EXISTS "
                "(SELECT FROM information_schema.tables WHERE table_schema = 'public')"
            ).fetchone()[0]
        )


# -- the comparison -------------------------------------------------------------------------


def _text_rows(conn: psycopg.Connection, query: str) -> tuple[list[str], Counter[str]]:
    """The columns and the multiset of rows of ``query``, each row as COPY's text line."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT * FROM ({}) q LIMIT 0").format(sql.SQL(query)))
        columns = [d.name for d in cur.description]
        rows: Counter[str] = Counter()
        copy_sql = sql.SQL("COPY ({}) TO STDOUT").format(sql.SQL(query))
        with cur.copy(copy_sql) as copy:
            for line in copy:
                rows[bytes(line).decode().rstrip("\n")] += 1
    return columns, rows


def compare_query(
    name: str, base: psycopg.Connection, head: psycopg.Connection, query
) -> Difference:
    base_columns, base_rows = _text_rows(base, query)
    head_columns, head_rows = _text_rows(head, query)
    if base_columns != head_columns:
        raise NotRun(f"{name}: the columns differ ({base_columns} / {head_columns})")
    return Difference(
        name,
        base_columns,
        sum(base_rows.values()),
        sum(head_rows.values()),
        base_rows - head_rows,
        head_rows - base_rows,
    )


def app_tables(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Each base table of ``public`` with its columns in order."""
    tables: dict[str, list[str]] = {}
    for table, column in conn.execute(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c "
        "JOIN information_schema.tables t USING (table_schema, table_name) "
        "WHERE c.table_schema = %s AND t.table_type = 'BASE TABLE' "
        "ORDER BY c.table_name, c.ordinal_position",
        (APP_SCHEMA,),
    ):
        tables.setdefault(table, []).append(column)
    return tables


def table_query(table: str, columns: Sequence[str]) -> str:
    """All of ``columns`` (the ones both versions have) of ``table``, by name."""
    return (
        sql.SQL("SELECT {} FROM {}")
        .format(sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(APP_SCHEMA, table))
        .as_string()
    )


@dataclass
class Comparison:
    schema: list[Difference]
    tables: list[Difference]
    missing_tables: dict[str, list[str]]  # side -> tables only the other side has
    bookkeeping: list[Difference]

    @property
    def same(self) -> bool:
        return all(d.same for d in [*self.schema, *self.tables, *self.bookkeeping]) and not any(
            self.missing_tables.values()
        )


def compare(base_url: str, head_url: str) -> Comparison:
    with psycopg.connect(base_url) as base, psycopg.connect(head_url) as head:
        for conn in (base, head):  # the same text for the same timestamps on both sides
            conn.execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'")
            conn.execute("SET extra_float_digits = 1; SET IntervalStyle = 'postgres'")
        schema = [compare_query(n, base, head, q) for n, q in SCHEMA_QUERIES.items()]
        base_tables, head_tables = app_tables(base), app_tables(head)
        tables = []
        for table in sorted(base_tables.keys() & head_tables.keys()):
            common = [c for c in base_tables[table] if c in head_tables[table]]
            tables.append(compare_query(table, base, head, table_query(table, common)))
        missing = {
            "base": sorted(head_tables.keys() - base_tables.keys()),
            "head": sorted(base_tables.keys() - head_tables.keys()),
        }
        bookkeeping = [compare_query(n, base, head, q) for n, q in QUARANTINE_QUERIES.items()]
    return Comparison(schema, tables, missing, bookkeeping)


# -- the report -----------------------------------------------------------------------------


def _rows_block(diff: Difference) -> list[str]:
    lines = []
    for side, rows in (("base", diff.only_base), ("head", diff.only_head)):
        if not rows:
            continue
        total = sum(rows.values())
        lines += [
            f"Only in {side} ({total} row(s)"
            + (f", the first {SHOWN_ROWS} shown" if total > SHOWN_ROWS else "")
            + f"; columns {', '.join(diff.columns)}, tab-separated as COPY writes them):",
            "",
            "```",
        ]
        shown = sorted(rows.elements())[:SHOWN_ROWS]
        lines += [row if len(row) < 2000 else row[:2000] + " …" for row in shown]
        lines += ["```", ""]
    return lines


def _section(
    diffs: list[Difference],
    counted: str,
    more: Callable[[Difference], list[str]] = lambda d: [],
) -> list[str]:
    """A count table (``counted``: its first three headers) and, under it, the rows of each
    difference, with ``more`` of what explains it."""
    lines = [f"| {counted} | only in base | only in head |", "|---|---:|---:|---:|---:|"]
    lines += [_count_row(d) for d in diffs]
    lines.append("")
    for d in diffs:
        if not d.same:
            lines += [f"**{d.name}**:", "", *_rows_block(d), *more(d)]
    return lines


def render(base: Version, head: Version, source: Path, result: Comparison, load: tuple) -> str:
    verdict = "identical" if result.same else "DIFFERENT"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## A fresh migration, before and after issue 11's performance work",
        "",
        f"`python benchmarks/compare_fresh.py --base {base.ref} --head {head.ref}` ({now}; "
        f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} at the start). Source: "
        f"`{source}` ({_source_rows(source):,} rows, {source.stat().st_size / 2**20:.0f} MiB), "
        f"a private copy per version. **Result: {verdict}.**",
        "",
        "| version | commit | command | exit | wall | CPU |",
        "|---|---|---|---:|---:|---:|",
    ]
    for v in (base, head):
        command = _shown(v.command)
        lines.append(
            f"| {v.label} ({v.ref}) | `{v.commit[:10]}` {_short(v.subject)} | `{command}` | "
            f"{v.returncode} | {v.wall_seconds:.0f} s | {v.cpu_seconds:.0f} s |"
        )
    lines += [
        "",
        "Checks that did not pass, from each version's Dagster storage (a check of severity "
        "ERROR that fails is what makes `d1-migration migrate` exit 1):",
        "",
    ]
    for v in (base, head):
        lines.append(f"- {v.label}: {', '.join(v.failed_checks) or 'none'}")
    lines.append("")
    lines += [
        "### Schema (`public` and `d1_migration`)",
        "",
    ]
    lines += _section(
        result.schema, "catalog | base | head", lambda d: _schema_origins(d, base, head)
    )
    lines += [
        f"### App tables ({len(result.tables)} in both)",
        "",
    ]
    for side, tables in result.missing_tables.items():
        if tables:
            lines += [f"Missing in {side}: {', '.join(tables)}", ""]
    same_tables = sum(d.same for d in result.tables)
    lines += [
        f"{same_tables} of {len(result.tables)} tables have the same rows "
        f"({sum(d.base_rows for d in result.tables):,} rows in base, "
        f"{sum(d.head_rows for d in result.tables):,} in head); rows compared over all "
        "columns as multisets (EXCEPT ALL both ways).",
        "",
    ]
    lines += _section(result.tables, "table | base rows | head rows")
    lines += [
        "### Quarantine and key maps (`d1_migration`)",
        "",
        "rejected_rows over source_table, source_pk, target_pk, reason_code, column_name, "
        "reason, raw_row and whether the entry is open (timestamps and run ids left out); "
        "id_map and ref_map over all columns.",
        "",
    ]
    lines += _section(result.bookkeeping, "table | base rows | head rows")
    return "\n".join(lines).rstrip() + "\n"


def first_commit_naming(name: str, base: str, head: str) -> str:
    """The oldest commit in base..head whose change to d1_migration/ adds or removes ``name``
    (``git log -S``): where a schema difference was most likely made on purpose."""
    log = git(
        "log", "--reverse", "--format=%h %s", "-S", name, f"{base}..{head}", "--", "d1_migration"
    )
    return log.splitlines()[0] if log else ""


def _schema_origins(d: Difference, base: Version, head: Version) -> list[str]:
    names = {
        row.split("\t")[RELATION_COLUMN[d.name]].rsplit(".", 1)[-1]
        for row in [*d.only_base, *d.only_head]
    }
    lines = []
    for name in sorted(names):
        commit = first_commit_naming(name, base.commit, head.commit)
        origin = f"first named in `d1_migration/` by {commit}" if commit else "no commit names it"
        lines.append(f"- `{name}`: {origin}")
    return [*lines, ""]


def _source_rows(source: Path) -> int:
    with closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as d1:
        tables = d1.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        return sum(d1.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for (t,) in tables)


def _short(subject: str, width: int = 60) -> str:
    return subject if len(subject) <= width else subject[: width - 1] + "…"


def _count_row(d: Difference) -> str:
    mark = "" if d.same else " ⚠"
    return (
        f"| {d.name}{mark} | {d.base_rows:,} | {d.head_rows:,} | "
        f"{sum(d.only_base.values()):,} | {sum(d.only_head.values()):,} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=BASE, help=f"git ref (default {BASE})")
    parser.add_argument(
        "--head", default="HEAD", help=f"git ref, or {WORKTREE} for uncommitted changes too"
    )
    parser.add_argument("--source", type=Path, help="D1 SQLite file (default: the 500k sample)")
    parser.add_argument(
        "--server",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="the Postgres server the databases are created on",
    )
    parser.add_argument("--output", type=Path, help="also write the Markdown report here")
    parser.add_argument("--keep", action="store_true", help="keep both databases")
    args = parser.parse_args(argv)

    source = (args.source or default_source()).resolve()
    if not source.is_file():
        print(f"No D1 file at {source}: pass --source", file=sys.stderr)
        return 2
    load = os.getloadavg()
    versions = [Version("base", args.base), Version("head", args.head)]
    for v in versions:
        v.commit = resolve(v.ref)
        v.subject = git("log", "-1", "--format=%s", v.commit)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="compare_fresh_")))
        try:
            for v in versions:
                stack.callback(_drop, args.server, v, args.keep)
                run_version(v, source, args.server, tmp, stack)
            started = time.perf_counter()
            result = compare(versions[0].url, versions[1].url)
        except NotRun as failed:
            print(f"compare_fresh: {failed}", file=sys.stderr)
            return 2
        print(f"compared in {time.perf_counter() - started:.0f} s", flush=True)
    report = render(*versions, source, result, load)
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
    return 0 if result.same else 1


def _drop(server: str, version: Version, keep: bool) -> None:
    if not version.dbname:
        return
    if keep:
        print(f"kept database {version.dbname} ({version.label}, {version.commit[:10]})")
    else:
        drop_database(server, version.dbname)


if __name__ == "__main__":
    raise SystemExit(main())
