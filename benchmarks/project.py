"""This project's runs for the harness (benchmarks/harness.py), each in a process of its own so
that the harness measures its wall time and peak RSS exactly as it measures the peers'
(``peers.measure``); each writes its figures as JSON to OUT.

    python -m benchmarks.project full SOURCE TARGET_URL STATE_DIR OUT
    python -m benchmarks.project verify SOURCE TARGET_URL OUT
    python -m benchmarks.project resync SOURCE TARGET_URL STATE_DIR OUT [--repeat N]

``full``: Materialize all with every check as the UI runs it (the default ``SyncConfig``: the first
sync into TARGET_URL, a fresh database, loads every table in full; ``matches_d1`` verifies its
rotating slice, a tenth of each table), as issue 11 asks: the content check is timed apart
(``verify``). The table step's own seconds (the sum of each table's ``seconds`` metadata) and what
``matches_d1`` reported in the run come back apart from the process's wall time, and so does
importing the project (Dagster included), which the wall time contains, as a peer's contains
its start-up.

``verify``: ``matches_d1`` of every table whole, after the run, alone (as
benchmarks/content_check.py times it): in the run it overlaps the loading of the next tables.

``resync``: the re-sync cases on a copy of SOURCE kept in STATE_DIR, each a whole Materialize all
(incremental, as the UI runs it) after the first, full, one, all in one Dagster instance: no
change; 1% of the rows changed (``incremental_sync.change_one_percent``); 0.1% of the users
deleted in D1 with its cascade.

``--content-check apart``: ``full`` and ``resync`` select every table and every check but
``matches_d1`` (which ``verify`` times on its own), as issue 11 times the migration: "the content
check of the trust issue is timed separately".
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

RESYNC_USER_SHARE = 0.001  # issue 11, case (b)


def _run_figures(seconds: float, summary) -> dict:
    """What the harness reports of one Materialize all."""
    tables = summary.tables.values()
    return {
        "seconds": seconds,
        "tables_seconds": sum(m["seconds"] for m in tables),
        "matches_d1_in_run_seconds": sum(
            c.metadata.get("seconds", 0.0) for c in summary.checks if c.check == "matches_d1"
        ),
        "tables": len(summary.tables),
        "rows": sum(m["source_rows"] for m in tables),
        "quarantined": sum(m["quarantined_this_run"] for m in tables),
        "changes": sum(m["inserted"] + m["updated"] + m["deleted"] for m in tables),
        "full_passes": sorted(name for name, m in summary.tables.items() if m["mode"] == "full"),
        "success": summary.success,
        "failed_checks": [f"{c.asset}:{c.check} ({c.severity})" for c in summary.failed_checks],
        "failure": summary.failure[-2000:],
        "slowest": sorted(
            ((name, m["seconds"]) for name, m in summary.tables.items()), key=lambda kv: -kv[1]
        )[:5],
    }


def selection(content_check: str):
    """Every table and check (the runner's default), or all but matches_d1 (``apart``)."""
    from dagster import AssetCheckKey, AssetSelection

    from d1_migration.defs.keys import target_key
    from d1_migration.spec.tables import SCHEMA
    from d1_migration.verify.checks import MATCHES_D1

    everything = AssetSelection.key_prefixes("pg")
    if content_check == "in":
        return everything
    content = [AssetCheckKey(target_key(t.name), MATCHES_D1) for t in SCHEMA.tables]
    return everything - AssetSelection.checks(*content)


def full(source: Path, url: str, state: Path, content_check: str) -> dict:
    started = time.perf_counter()
    from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
    from d1_migration.runner import materialize_all

    imported = time.perf_counter() - started
    started = time.perf_counter()
    summary = materialize_all(
        D1Source(path=str(source), copy_dir=str(state / "copies")),
        PostgresTarget(url=url),
        sync=SyncSettings(state_dir=str(state / "sync")),
        selection=selection(content_check),
    )
    figures = _run_figures(time.perf_counter() - started, summary)
    figures["import_seconds"] = imported
    figures.update(process_usage())
    return figures


def process_usage() -> dict:
    """CPU seconds of this process and of the engine's (sync/apart.py: a child the step
    waited for), and their two peak RSS added up: they run side by side, so the sum bounds
    what the project held at once (a peer's peak is one process's, peers.measure)."""
    from d1_migration.sync.apart import peak_rss_mib

    step = resource.getrusage(resource.RUSAGE_SELF)
    engine = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "cpu_seconds": step.ru_utime + step.ru_stime + engine.ru_utime + engine.ru_stime,
        "maxrss_mib_in_process": step.ru_maxrss / 1024,
        "maxrss_mib_engine": engine.ru_maxrss / 1024,
        "peak_rss_mib_both": peak_rss_mib(),
    }


def verify(source: Path, url: str) -> dict:
    from benchmarks.content_check import verify_all

    seconds, results = verify_all(url, source, None)
    return {
        "seconds": seconds,
        "failed": [r.table for r in results if not r.passed],
        "compared_rows": sum(r.compared_rows for r in results),
    }


def resync(pristine: Path, url: str, state: Path, repeat: int, content_check: str) -> dict:
    from dagster import DagsterInstance

    from benchmarks import incremental_sync
    from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
    from d1_migration.runner import materialize_all

    source = state / "d1_resync.sqlite"
    shutil.copy(pristine, source)
    d1 = D1Source(path=str(source), copy_dir=str(state / "copies"))
    target = PostgresTarget(url=url)
    sync = SyncSettings(state_dir=str(state / "sync"))
    chosen = selection(content_check)

    def run(label: str) -> dict:
        seconds, summary = incremental_sync.timed(
            label,
            lambda: materialize_all(d1, target, instance, sync=sync, selection=chosen),
        )
        return _run_figures(seconds, summary)

    # One instance for every run, as the schedule's runs share the deployment's: a new
    # ephemeral one per run (creating its storage: 1.8 s) is no cost a re-sync has.
    instance = DagsterInstance.ephemeral()
    cases: dict[str, list[dict]] = {"no change": [], "1% changed": [], "0.1% of users deleted": []}
    figures: dict = {"full": run("full migration"), "cases": cases, "changed": {}}
    for i in range(repeat):
        cases["no change"].append(run(f"re-sync, no change ({i + 1})"))
    for i in range(repeat):
        changed = incremental_sync.change_one_percent(source, seed=i + 1)
        figures["changed"].setdefault("1% changed", []).append(changed)
        cases["1% changed"].append(run(f"re-sync, 1% changed ({i + 1})"))
    for i in range(repeat):
        seed = 100 + i
        users, rows = incremental_sync.delete_users(source, seed=seed, share=RESYNC_USER_SHARE)
        print(f"deleted {users} users in D1, which cascaded: {rows} rows deleted or changed")
        figures["changed"].setdefault("0.1% of users deleted", []).append(rows)
        cases["0.1% of users deleted"].append(run(f"re-sync, 0.1% of users deleted ({i + 1})"))
    figures.update(process_usage())
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("full", "verify", "resync"))
    parser.add_argument("paths", nargs="+", help="SOURCE TARGET_URL [STATE_DIR] OUT")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--content-check", choices=("in", "apart"), default="in")
    args = parser.parse_args(argv)
    wanted = 3 if args.what == "verify" else 4
    if len(args.paths) != wanted:
        parser.error(f"{args.what} takes {wanted} paths")
    source, url, *rest = args.paths
    out = Path(rest[-1])
    if args.what == "full":
        figures = full(Path(source), url, Path(rest[0]), args.content_check)
    elif args.what == "verify":
        figures = verify(Path(source), url)
    else:
        figures = resync(Path(source), url, Path(rest[0]), args.repeat, args.content_check)
    out.write_text(json.dumps(figures, indent=2))
    failed = figures.get("success") is False or figures.get("failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
