"""The `d1-migration` command: `demo` (a sample migration) and `cutover-check` (the gate)."""

import argparse
import os
import resource
import time
from pathlib import Path

from dagster import DagsterInstance

from d1_migration.defs.dagster_storage import pooled_instance
from d1_migration.defs.resources import (
    SOURCE_ENV,
    TARGET_ENV,
    D1Source,
    PostgresTarget,
    SyncSettings,
)
from d1_migration.demo.sample_data import build_sample_db
from d1_migration.runner import RunSummary, materialize_all
from d1_migration.spec.tables import SCHEMA
from d1_migration.sync.target_lock import TargetBusy
from d1_migration.target.connection import redacted
from d1_migration.target.embedded import embedded_postgres_url
from d1_migration.verify.checks import QUARANTINE, ROW_PARITY
from d1_migration.verify.cutover import cutover_check as run_cutover_check

DAGSTER_STORAGE_DB = "dagster"


def demo_instance(workdir: Path) -> DagsterInstance:
    """Dagster's run storage in the embedded server (a database apart from the target).

    An instance from DAGSTER_HOME (the project's dagster.yaml) is used when one is set.
    """
    if os.environ.get("DAGSTER_HOME"):
        return DagsterInstance.get()
    storage_url = embedded_postgres_url(workdir, DAGSTER_STORAGE_DB)
    return pooled_instance((workdir / "dagster_home").resolve(), storage_url)


def print_summary(summary: RunSummary, quarantine: list[tuple[str, str, int]]) -> None:
    print(f"\n{'table':28} {'source':>9} {'target':>9} {'quarantined':>11}")
    for check in sorted(summary.checks, key=lambda c: c.asset):
        if check.check == ROW_PARITY:
            rows = [check.metadata[k] for k in ("source_rows", "target_rows", "quarantined_rows")]
            print(f"{check.asset.removeprefix('pg/'):28} {rows[0]:>9} {rows[1]:>9} {rows[2]:>11}")
    print("\nQuarantined rows by reason (d1_migration.rejected_rows):")
    for table, code, count in quarantine:
        print(f"  {table:28} {code:22} {count}")
    failed = summary.failed_checks
    print(f"\nChecks: {len(summary.checks) - len(failed)} passed, {len(failed)} not passed")
    for check in failed:
        if check.check == QUARANTINE:  # already listed by reason above
            detail = f"{check.metadata['quarantined_rows']} row(s)"
        else:
            detail = {k: v for k, v in check.metadata.items() if k != "details"}
        print(f"  [{check.severity}] {check.asset} {check.check}: {detail}")


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

    migrate_started = time.perf_counter()
    summary = materialize_all(
        D1Source(path=str(source_path)),
        target,
        demo_instance(workdir),
        SyncSettings(state_dir=str(workdir / "sync")),
    )
    migrate_seconds = time.perf_counter() - migrate_started
    with target.connect() as conn:
        quarantine = conn.execute(
            "SELECT source_table, reason_code, count(*) FROM d1_migration.rejected_rows "
            "WHERE resolved_at IS NULL GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
    print_summary(summary, quarantine)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\nMigration {migrate_seconds:.1f} s, total {time.perf_counter() - started:.1f} s, "
        f"peak memory {peak_mib:.0f} MiB; run {'succeeded' if summary.success else 'FAILED'}"
    )
    if not os.environ.get("DAGSTER_HOME"):
        home = (workdir / "dagster_home").resolve()
        print(f"See this run in the UI: DAGSTER_HOME={home} dagster dev")
    return 0 if summary.success else 1


def cutover_check(args: argparse.Namespace) -> int:
    """Exit 0 only when Postgres may take over: CI/CD and runbooks can gate on it."""
    if not os.environ.get(SOURCE_ENV):
        print(f"Set {SOURCE_ENV} to the D1 database (and {TARGET_ENV} to the target).")
        return 2
    d1 = D1Source(path=os.environ[SOURCE_ENV])
    postgres = PostgresTarget(url=os.environ.get(TARGET_ENV))
    sync = SyncSettings()  # D1_MIGRATION_STATE_DIR, or the default
    print(f"Cutover check of {redacted(postgres.resolved_url())} against {d1.path}")
    try:
        verdict = run_cutover_check(d1, postgres, sync, SCHEMA)
    except TargetBusy as busy:
        print(f"NOT READY for cutover: {busy}")
        return 1
    print(verdict.render())
    return 0 if verdict.ready else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="d1-migration")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo", help="build a sample D1 database and migrate it (embedded Postgres by default)"
    )
    demo_parser.add_argument("--users", type=int, default=200, help="sample size (default 200)")
    demo_parser.add_argument("--seed", type=int, default=0)
    demo_parser.add_argument("--workdir", default=".d1_migration", help="where files are kept")
    demo_parser.set_defaults(run=demo)
    gate_parser = commands.add_parser(
        "cutover-check",
        help="final sync, a second one that must change nothing, then every check; "
        "exit 0 only when ready",
    )
    gate_parser.set_defaults(run=cutover_check)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
