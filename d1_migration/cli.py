"""The `d1-migration` command, for people who prefer a terminal to the Dagster UI.

Subcommands: ``demo`` (a sample migration), ``migrate`` (the migrate / full_rebuild jobs),
``status``, ``quarantine`` and ``report`` (read what is there, running nothing), ``cutover-check``
(the gate) and ``embedded stop``. Exit codes: 0 ok, 1 not ok (a failed run, a failed check of
severity ERROR, open quarantine entries listed, NOT READY), 2 a usage or configuration error.
Quiet by default (Dagster's console logger at CRITICAL, Python warnings off, a progress bar on
stderr fed by the run's events); ``--verbose`` shows Dagster's DEBUG log and every warning.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, EventLogEntry

from d1_migration.definitions import CRON_ENV, SYNC_TAG, VERIFY_SLICES_ENV
from d1_migration.defs.assets import SyncConfig
from d1_migration.defs.dagster_storage import pooled_instance
from d1_migration.defs.resources import (
    DEFAULT_WORKDIR,
    SOURCE_ENV,
    STATE_DIR_ENV,
    TARGET_ENV,
    TOKEN_ENV,
    D1Source,
    NotConfigured,
    PostgresTarget,
    SyncSettings,
    require_source,
)
from d1_migration.demo.sample_data import build_sample_db
from d1_migration.runner import RunSummary, materialize_all
from d1_migration.spec.tables import SCHEMA
from d1_migration.sync.apart import peak_rss_mib
from d1_migration.sync.target_lock import TargetBusy
from d1_migration.target.connection import TargetError, TargetUnreachable, redacted
from d1_migration.target.embedded import embedded_postgres_url, stop_embedded_postgres
from d1_migration.verify.checks import QUARANTINE, ROW_PARITY

DAGSTER_STORAGE_DB = "dagster"

OK, NOT_OK, USAGE = 0, 1, 2

ENVIRONMENT = (
    (
        SOURCE_ENV,
        "the D1 database: a SQLite file, a `wrangler d1 export` .sql file or "
        "d1://<account_id>/<database_id>; unset: the demo file (only with no target set)",
    ),
    (
        TARGET_ENV,
        "libpq URL of the target Postgres database; unset: the embedded server under --workdir",
    ),
    (STATE_DIR_ENV, "where the sync state (shadow) is kept; default .d1_migration/sync"),
    (TOKEN_ENV, "API token for a d1:// source (sent only in the Authorization header)"),
    (
        VERIFY_SLICES_ENV,
        "migrate: matches_d1 verifies 1/N of each table per incremental sync (default 10)",
    ),
    (CRON_ENV, "cron of the UI's resync schedule (read by the code location, not here)"),
    (
        "DAGSTER_HOME",
        "Dagster's instance (its dagster.yaml), where runs are recorded and read back; "
        "unset: database `dagster` of the embedded server under --workdir",
    ),
    (
        "DAGSTER_PG_URL",
        "Dagster's storage database, for a DAGSTER_HOME with this project's dagster.yaml",
    ),
)

EPILOG = (
    "environment variables:\n"
    + "\n".join(
        textwrap.fill(meaning, width=92, initial_indent=f"  {name:27} ", subsequent_indent=" " * 30)
        for name, meaning in ENVIRONMENT
    )
    + "\n\nexit codes: 0 ok; 1 not ok (a failed run or check of severity ERROR, open "
    "quarantine\nentries listed, NOT READY for cutover); 2 usage or configuration error"
)


class ConfigError(Exception):
    """Something the user must set or fix before the command can run: exit code 2."""


# --- quiet by default -------------------------------------------------------------------


def configure_output(verbose: bool) -> None:
    """Python warnings (Dagster's deprecation and preview warnings, platformdirs') and the
    project's INFO logs only with --verbose; Dagster's console logger is set per run."""
    if verbose:
        warnings.simplefilter("default")
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    else:
        warnings.simplefilter("ignore")


def dagster_log_level(verbose: bool) -> str:
    # Quiet: the run's warnings are printed by the progress display instead, one short line
    # each (Dagster's console lines carry a timestamp, the job, the run id and the step).
    return "DEBUG" if verbose else "CRITICAL"


class RunProgress:
    """A progress bar over the tables, fed by the run's events as the run stores them
    (runner.RunWatcher), and the run's warnings and errors as short lines above it.

    rich, not tqdm: Dagster already depends on rich, its Progress is thread-safe (events
    arrive on the watcher's thread), prints lines above a live bar, and draws nothing live
    when stderr is not a terminal, so logs and CI output stay clean."""

    def __init__(self, total: int, verbose: bool):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=True, highlight=False)
        self.verbose = verbose
        self.progress = Progress(
            TextColumn("{task.description:<32}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tables"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task("syncing", total=total)

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def on_event(self, entry: EventLogEntry) -> None:
        event = entry.dagster_event
        if event is not None:
            if event.event_type is DagsterEventType.ASSET_MATERIALIZATION:
                key = event.asset_key
                if key is not None and key.path[0] == "pg":
                    self.progress.update(self.task, advance=1, description=key.path[-1])
            return
        if not self.verbose and entry.level >= logging.WARNING:  # verbose: Dagster prints it
            level = "error" if entry.level >= logging.ERROR else "warning"
            self.console.print(f"{level}: {entry.user_message}", markup=False, soft_wrap=True)


# --- where things are -------------------------------------------------------------------


def demo_instance(workdir: Path) -> DagsterInstance:
    """Dagster's run storage in the embedded server (a database apart from the target).

    An instance from DAGSTER_HOME (the project's dagster.yaml) is used when one is set.
    """
    if os.environ.get("DAGSTER_HOME"):
        return DagsterInstance.get()
    storage_url = embedded_postgres_url(workdir, DAGSTER_STORAGE_DB)
    home = (workdir / "dagster_home").resolve()
    return pooled_instance(home, storage_url)


def _instance(workdir: Path, create: bool) -> DagsterInstance | None:
    """demo_instance; DAGSTER_HOME's that cannot be loaded is a configuration error (a
    dagster.yaml that needs DAGSTER_PG_URL, say). None when DAGSTER_HOME is unset, nothing
    was ever recorded (no embedded server under ``workdir``) and not ``create``."""
    if os.environ.get("DAGSTER_HOME"):
        try:
            return demo_instance(workdir)
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise ConfigError(
                f"Dagster's instance (DAGSTER_HOME={os.environ['DAGSTER_HOME']}) could not be "
                f"loaded: {first}"
            ) from None
    if not create and not _embedded_exists(workdir):
        return None
    return demo_instance(workdir)


def _embedded_exists(workdir: Path) -> bool:
    return (workdir / "pgdata" / "PG_VERSION").exists()


def _target(workdir: Path, must_exist: bool) -> PostgresTarget | None:
    """The target: D1_MIGRATION_TARGET_URL's, else the embedded one under ``workdir``
    (None when it was never created and ``must_exist``: nothing to read)."""
    url = os.environ.get(TARGET_ENV) or None
    if url is None and must_exist and not _embedded_exists(workdir):
        return None
    return PostgresTarget(url=url, workdir=str(workdir))


def _bin(name: str) -> str:
    """A console script of this environment, by absolute path: it works without an
    activated venv (``python -m`` when the script is not installed beside Python)."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return str(script.absolute())
    return f"{sys.executable} -m d1_migration.cli" if name == "d1-migration" else name


def _nothing_yet(workdir: Path) -> int:
    print(
        f"Nothing migrated yet: no {TARGET_ENV} set and no embedded server in "
        f"{(workdir / 'pgdata').resolve()}. Run `{_bin('d1-migration')} demo`, or set "
        f"{SOURCE_ENV} and {TARGET_ENV} and run `{_bin('d1-migration')} migrate`."
    )
    return NOT_OK


# --- commands that run ------------------------------------------------------------------


def _run(
    args: argparse.Namespace,
    d1: D1Source,
    target: PostgresTarget,
    instance: DagsterInstance,
    sync: SyncSettings,
    config: SyncConfig | None = None,
    tags: dict | None = None,
) -> RunSummary:
    with RunProgress(len(SCHEMA.tables), args.verbose) as progress:
        return materialize_all(
            d1,
            target,
            instance,
            sync,
            config=config,
            log_level=dagster_log_level(args.verbose),
            on_event=progress.on_event,
            tags=tags,
        )


def print_summary(summary: RunSummary, quarantine: list[tuple[str, str, int]]) -> None:
    print(f"\n{'table':28} {'source':>9} {'target':>9} {'quarantined':>11}")
    for check in sorted(summary.checks, key=lambda c: c.asset):
        if check.check == ROW_PARITY:
            rows = [check.metadata[k] for k in ("source_rows", "target_rows", "quarantined_rows")]
            print(f"{check.asset.removeprefix('pg/'):28} {rows[0]:>9} {rows[1]:>9} {rows[2]:>11}")
    if quarantine:
        print("\nQuarantined rows by reason (d1_migration.rejected_rows):")
        for table, code, count in quarantine:
            print(f"  {table:28} {code:22} {count}")
    failed = summary.failed_checks
    if failed:
        print("\nChecks that did not pass:")
    for check in sorted(failed, key=lambda c: c.severity):  # ERROR before WARN
        print(f"  [{check.severity}] {check.asset} {check.check}: {_figures(check)}")
    if summary.failure:
        print("\nThe run failed:\n  " + summary.failure.replace("\n", "\n  "))
    print("\n" + summary.totals())


def _figures(check) -> str:
    """A check's metadata as one readable line (no dict or list reprs)."""
    if check.check == QUARANTINE:  # already listed by reason above
        return f"{check.metadata['quarantined_rows']} row(s)"
    parts = []
    for name, value in check.metadata.items():
        if name in ("details", "inspect_with", "differences") or value in ({}, [], 0, None):
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value[:5])) + (" ..." if len(value) > 5 else "")
        parts.append(f"{name.replace('_', ' ')} {value}")
    return "; ".join(parts)


def _open_quarantine_counts(target: PostgresTarget) -> list[tuple[str, str, int]]:
    with target.connect() as conn:
        return conn.execute(
            "SELECT source_table, reason_code, count(*) FROM d1_migration.rejected_rows "
            "WHERE resolved_at IS NULL GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()


def demo(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    source_path = workdir / "demo.sqlite"
    started = time.perf_counter()
    sample = build_sample_db(source_path, users=args.users, seed=args.seed)
    print(
        f"Sample D1 database: {source_path} ({sum(sample.row_counts.values())} rows, "
        f"{len(sample.rejects)} deliberately bad)"
    )
    target = PostgresTarget(url=os.environ.get(TARGET_ENV), workdir=str(workdir))
    print(f"Target: {redacted(target.resolved_url())}")
    instance = _instance(workdir, create=True)
    migrate_started = time.perf_counter()
    summary = _run(
        args,
        D1Source(path=str(source_path)),
        target,
        instance,
        SyncSettings(state_dir=str(workdir / "sync")),
    )
    migrate_seconds = time.perf_counter() - migrate_started
    print_summary(summary, _open_quarantine_counts(target) if summary.tables else [])
    peak_mib = peak_rss_mib()
    print(
        f"Migration {migrate_seconds:.1f} s, total {time.perf_counter() - started:.1f} s, "
        f"peak memory {peak_mib:.0f} MiB (the run's and its sync engine's processes); "
        f"run {summary.run_id} " + ("succeeded" if summary.success else "FAILED")
    )
    if summary.tables:
        path = _write_report(target, instance, workdir)
        print(f"Migration report: {path}")
    print(f"\nSee this run in the UI:\n  {ui_command(workdir, instance, summary.run_id)}")
    if not os.environ.get("DAGSTER_HOME") or not os.environ.get(TARGET_ENV):
        print(
            f"The embedded PostgreSQL in {(workdir / 'pgdata').resolve()} keeps running for "
            f"the UI and later runs; stop it with:\n  {_bin('d1-migration')} embedded stop"
            + ("" if workdir == DEFAULT_WORKDIR else f" --workdir {workdir.resolve()}")
        )
    return OK if summary.success else NOT_OK


def ui_command(workdir: Path, instance: DagsterInstance, run_id: str) -> str:
    """A `dagster dev` command line that shows the run, working as printed: the venv's
    dagster by absolute path; no DAGSTER_HOME that differs from the dagster.yaml of the
    directory it runs in (Dagster warns about that); the project directory's own dagster.yaml
    when it finds this run, else the demo's instance directory with the demo's files."""
    dagster = _bin("dagster")
    if os.environ.get("DAGSTER_HOME"):
        home = Path(os.environ["DAGSTER_HOME"]).resolve()
        return f"cd {home} && {dagster} dev -m d1_migration.definitions"
    cwd = Path.cwd().resolve()
    if workdir.resolve() == (cwd / DEFAULT_WORKDIR).resolve() and _finds_run(cwd, run_id):
        return f"cd {cwd} && {dagster} dev"
    home = (workdir / "dagster_home").resolve()
    env = [
        f"DAGSTER_HOME={home}",
        f"{SOURCE_ENV}={(workdir / 'demo.sqlite').resolve()}",
        f"{STATE_DIR_ENV}={(workdir / 'sync').resolve()}",
    ]
    if os.environ.get(TARGET_ENV):
        env.append(f'{TARGET_ENV}="${TARGET_ENV}"')  # as set in this shell; never printed
    else:
        env.append(f"{TARGET_ENV}='{embedded_postgres_url(workdir)}'")  # a socket, no password
    return f"cd {home} && {' '.join(env)} {dagster} dev -m d1_migration.definitions"


def _finds_run(project: Path, run_id: str) -> bool:
    """Whether `dagster dev` with no DAGSTER_HOME in ``project`` (a temporary home, the
    storage of ``project``'s dagster.yaml) would show ``run_id``: its storage is loaded here."""
    if not (project / "dagster.yaml").exists():
        return False
    from dagster._core.instance.ref import InstanceRef

    try:
        with (
            tempfile.TemporaryDirectory() as home,
            DagsterInstance.from_ref(InstanceRef.from_dir(home, config_dir=str(project))) as inst,
        ):
            return inst.has_run(run_id)
    except Exception:  # e.g. a dagster.yaml that needs DAGSTER_PG_URL
        return False


def migrate(args: argparse.Namespace) -> int:
    """The migrate job (incremental) or full_rebuild (--full), through the same runner."""
    workdir = Path(args.workdir)
    demo_mode = not os.environ.get(SOURCE_ENV) and not os.environ.get(TARGET_ENV)
    d1 = D1Source(path=str(workdir / "demo.sqlite")) if demo_mode else D1Source()
    target = _target(workdir, must_exist=False)
    state_dir = str(workdir / "sync") if demo_mode and not os.environ.get(STATE_DIR_ENV) else None
    sync = SyncSettings(state_dir=state_dir)
    try:
        print(f"Syncing with {require_source(d1, target)}")
    except NotConfigured as refused:
        raise ConfigError(str(refused)) from None
    source = d1.source()
    if not source.startswith("d1://") and not Path(source).is_file():
        hint = "run `d1-migration demo` first" if demo_mode else f"check {SOURCE_ENV}"
        raise ConfigError(f"No D1 database at {source}: {hint}")
    config: dict = {"mode": "full" if args.full else "incremental"}
    if os.environ.get(VERIFY_SLICES_ENV):
        try:
            config["verify_slices"] = int(os.environ[VERIFY_SLICES_ENV])
        except ValueError:
            raise ConfigError(f"{VERIFY_SLICES_ENV} must be a whole number") from None
    instance = _instance(workdir, create=True)
    summary = _run(args, d1, target, instance, sync, SyncConfig(**config), tags=SYNC_TAG)
    print_summary(summary, _open_quarantine_counts(target) if summary.tables else [])
    print(f"Run {summary.run_id} {'succeeded' if summary.success else 'FAILED'}")
    if not summary.success:
        return NOT_OK
    return NOT_OK if summary.failed_by_severity().get("ERROR") else OK


def cutover_check(args: argparse.Namespace) -> int:
    """Exit 0 only when Postgres may take over: CI/CD and runbooks can gate on it."""
    from d1_migration.verify.cutover import cutover_check as run_cutover_check

    if not os.environ.get(SOURCE_ENV):
        raise ConfigError(f"Set {SOURCE_ENV} to the D1 database (and {TARGET_ENV} to the target).")
    d1 = D1Source(path=os.environ[SOURCE_ENV])
    postgres = PostgresTarget(url=os.environ.get(TARGET_ENV))
    sync = SyncSettings()  # D1_MIGRATION_STATE_DIR, or the default
    print(f"Cutover check of {redacted(postgres.resolved_url())} against {d1.path}")
    try:
        verdict = run_cutover_check(d1, postgres, sync, SCHEMA)
    except TargetBusy as busy:
        print(f"NOT READY for cutover: {busy}")
        return NOT_OK
    print(verdict.render())
    return OK if verdict.ready else NOT_OK


# --- commands that read -----------------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    """Last sync per table, its mode and counts, the last check outcomes: read from
    Postgres's bookkeeping and Dagster's storage; nothing runs."""
    from d1_migration.report.state import read_state

    workdir = Path(args.workdir)
    target = _target(workdir, must_exist=True)
    if target is None:
        return _nothing_yet(workdir)
    instance = _instance(workdir, create=False)
    with target.connect() as conn:
        state = read_state(conn, instance, SCHEMA)
    print(f"Target: {target.describe()}")
    if instance is None:
        print("Dagster's storage: none yet (no run recorded)")
    if not state.bookkeeping:
        print("Never synced: run `d1-migration migrate` (or `demo`).")
        return NOT_OK
    print(
        f"\n{'table':26} {'last sync (UTC)':19} {'mode':11} {'D1':>7} {'Postgres':>8} "
        f"{'quar.':>5} {'+ins':>6} {'~upd':>6} {'-del':>6}  checks"
    )
    for t in state.tables:
        m = t.materialization
        when = t.synced_at.strftime("%Y-%m-%d %H:%M:%S") if t.synced_at else "never"
        failed = [
            f"{c.name} ({c.severity})"
            for c in sorted(t.checks.values(), key=lambda c: c.severity != "ERROR")
            if c.failed
        ]
        not_run = [c.name for c in t.checks.values() if c.status in ("not run", "running")]
        parts = ["FAILED " + ", ".join(failed)] if failed else []
        parts += ["not run: " + ", ".join(not_run)] if not_run else []
        checks = "; ".join(parts) or ("ok" if t.checks else "")
        print(
            f"{t.name:26} {when:19} {t.mode or '':11} {_n(t.source_rows):>7} "
            f"{_n(t.target_rows):>8} {t.quarantined:>5} {_n(m.get('inserted')):>6} "
            f"{_n(m.get('updated')):>6} {_n(m.get('deleted')):>6}  {checks or 'none recorded'}"
        )
    synced = [t for t in state.tables if t.synced_at is not None]
    last = max((t.materialized_at for t in state.tables if t.materialized_at), default=None)
    failed = state.failed_by_severity()
    print(
        f"\n{len(synced)} of {len(state.tables)} tables synced"
        + (f"; last materialized {last:%Y-%m-%d %H:%M:%S} UTC" if last else "")
        + f"; {state.quarantined_rows} row(s) in quarantine; checks failed: "
        + (", ".join(f"{n} {s}" for s, n in failed.items()) if failed else "none")
    )
    ok = len(synced) == len(state.tables) and not failed.get("ERROR")
    return OK if ok else NOT_OK


def _n(value) -> str:
    return "" if value is None else str(value)


def quarantine(args: argparse.Namespace) -> int:
    """Open quarantine entries with their reasons; exit 1 when any matched (0: none open)."""
    from d1_migration.report.state import open_quarantine

    if args.table and args.table not in {t.name for t in SCHEMA.tables}:
        raise ConfigError(f"No table {args.table!r} in the spec")
    workdir = Path(args.workdir)
    target = _target(workdir, must_exist=True)
    if target is None:
        return _nothing_yet(workdir)
    with target.connect() as conn:
        entries = open_quarantine(conn, SCHEMA, table=args.table, reason=args.reason)
    scope = " ".join(f"{k} {v}" for k, v in (("table", args.table), ("reason", args.reason)) if v)
    if not entries:
        print(f"No open quarantine entries{' for ' + scope if scope else ''}.")
    else:
        print(f"{'table':20} {'source pk':38} {'column':18} {'reason':20} {'raw value':40}  why")
        for e in entries:
            print(
                f"{e.table:20} {e.source_pk:38} {e.column or '':18} {e.code:20} "
                f"{e.excerpt:40}  {e.reason}"
            )
        tables = len({e.table for e in entries})
        print(
            f"\n{len(entries)} open entr{'y' if len(entries) == 1 else 'ies'} in {tables} table(s)"
        )
    if args.csv:
        _write_csv(Path(args.csv), entries)
        print(f"Written to {Path(args.csv).resolve()}")
    return NOT_OK if entries else OK


CSV_COLUMNS = (
    "source_table",
    "source_pk",
    "target_pk",
    "column_name",
    "reason_code",
    "reason",
    "raw_value",
    "raw_row",
    "first_seen_at",
    "last_seen_at",
    "run_id",
)


def _write_csv(path: Path, entries) -> None:
    """Every entry with its whole D1 row (raw_row as JSON: secret columns are already
    digests there). Created 0600, as the copies of D1 are: it holds D1's rows."""
    from d1_migration.private_files import private_file

    path.parent.mkdir(parents=True, exist_ok=True)
    private_file(path)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for e in entries:
            writer.writerow(
                [
                    e.table,
                    e.source_pk,
                    e.target_pk or "",
                    e.column or "",
                    e.code,
                    e.reason,
                    "" if e.raw_value is None else e.raw_value,
                    json.dumps(e.raw_row, ensure_ascii=False, sort_keys=True),
                    e.first_seen_at.isoformat(),
                    e.last_seen_at.isoformat(),
                    e.run_id or "",
                ]
            )


def _write_report(target: PostgresTarget, instance: DagsterInstance | None, workdir: Path) -> Path:
    from d1_migration.report.render import write_report
    from d1_migration.report.state import read_state

    with target.connect() as conn:
        state = read_state(conn, instance, SCHEMA, history=instance is not None)
    path, _ = write_report(state, target.describe(), workdir / "report" / "index.html")
    return path


def report(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    target = _target(workdir, must_exist=True)
    if target is None:
        return _nothing_yet(workdir)
    instance = _instance(workdir, create=False)
    path = _write_report(target, instance, workdir)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_bytes(path.read_bytes())
        path = Path(args.output).resolve()
    print(f"Migration report: {path}")
    return OK


def embedded_stop(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    pid_file = workdir / "pgdata" / "postmaster.pid"
    if not pid_file.exists():
        print(f"The embedded PostgreSQL in {(workdir / 'pgdata').resolve()} is not running.")
        return OK
    stop_embedded_postgres(workdir)
    print(f"Stopped the embedded PostgreSQL in {(workdir / 'pgdata').resolve()}.")
    return OK


# --- the parser -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", help="Dagster's DEBUG log and every warning"
    )
    common.add_argument(
        "--workdir",
        default=str(DEFAULT_WORKDIR),
        help="the demo's files, the embedded PostgreSQL (target and Dagster's storage when "
        "not configured) and the report (default .d1_migration)",
    )
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="d1-migration",
        description="Migrate a Cloudflare D1 database into PostgreSQL and keep it in sync.",
        epilog=EPILOG,
        formatter_class=formatter,
    )  # the options are each command's (a subparser's defaults would override the parser's)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help,
            description=help,
            epilog=EPILOG,
            formatter_class=formatter,
            parents=[common],
        )
        sub.set_defaults(run=run)
        return sub

    demo_parser = command(
        "demo", demo, "build a sample D1 database and migrate it (embedded Postgres by default)"
    )
    demo_parser.add_argument("--users", type=int, default=200, help="sample size (default 200)")
    demo_parser.add_argument("--seed", type=int, default=0)
    migrate_parser = command(
        "migrate",
        migrate,
        "sync every table and run every check, like the migrate job (incremental); exit 1 "
        "when the run or a check of severity ERROR fails",
    )
    migrate_parser.add_argument(
        "--full", action="store_true", help="like the full_rebuild job: re-read every row"
    )
    command(
        "status",
        status,
        "last sync per table, its mode and counts, the last check outcomes (reads Postgres "
        "and Dagster's storage; runs nothing); exit 1 when a table never synced or a check "
        "of severity ERROR failed",
    )
    quarantine_parser = command(
        "quarantine",
        quarantine,
        "list open quarantine entries with their reasons; exit 1 when any are listed",
    )
    quarantine_parser.add_argument("--table", help="only this table's entries")
    quarantine_parser.add_argument("--reason", metavar="CODE", help="only this reason code")
    quarantine_parser.add_argument("--csv", metavar="FILE", help="also write them to FILE")
    report_parser = command(
        "report",
        report,
        "write the migration report (HTML with charts) to <workdir>/report/index.html",
    )
    report_parser.add_argument("--output", metavar="FILE", help="also copy it to FILE")
    command(
        "cutover-check",
        cutover_check,
        "final sync, a second one that must change nothing, then every check; exit 0 only "
        "when ready",
    )
    embedded = commands.add_parser(
        "embedded",
        help="the embedded PostgreSQL",
        epilog=EPILOG,
        formatter_class=formatter,
        parents=[common],
    )
    embedded_commands = embedded.add_subparsers(dest="action", required=True, metavar="ACTION")
    stop = embedded_commands.add_parser(
        "stop",
        help="stop the embedded PostgreSQL under --workdir (it outlives runs on purpose)",
        epilog=EPILOG,
        formatter_class=formatter,
        parents=[common],
    )
    stop.set_defaults(run=embedded_stop)
    return parser


@contextmanager
def _errors() -> Iterator[list[int]]:
    """Configuration errors as one line on stderr and exit code 2; a target that does not
    answer as 1 (perhaps restarting: not the user's configuration)."""
    code: list[int] = []
    try:
        yield code
    except (ConfigError, NotConfigured) as error:
        print(f"d1-migration: {error}", file=sys.stderr)
        code.append(USAGE)
    except TargetUnreachable as error:
        print(f"d1-migration: {error}", file=sys.stderr)
        code.append(NOT_OK)
    except TargetError as error:  # a malformed URL: the user's to fix
        print(f"d1-migration: {error}", file=sys.stderr)
        code.append(USAGE)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help (0) or a usage error (2), as an exit code
        return int(exit.code or 0)
    configure_output(args.verbose)
    with _errors() as code:
        return args.run(args)
    return code[0]


if __name__ == "__main__":
    raise SystemExit(main())
