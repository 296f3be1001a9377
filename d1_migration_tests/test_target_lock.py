"""One sync of a target at a time, across processes and entry points, on real Postgres."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from dagster import DagsterInstance, Definitions

from d1_migration import definitions
from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.demo.sample_data import build_sample_db
from d1_migration.runner import summarize
from d1_migration_tests.helpers import ROOT, as_url

HOLD_THE_TARGET = """
import sys, time
from d1_migration.sync.target_lock import holder_name, target_lock
with target_lock(sys.argv[1], holder_name("r-holder")):
    print("held", flush=True)
    time.sleep(600)
"""


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def wait_for(condition, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def synced_tables(url: str) -> int:
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('d1_migration.sync_state')").fetchone()[0]
        return (
            conn.execute("SELECT count(*) FROM d1_migration.sync_state").fetchone()[0]
            if (exists)
            else 0
        )


def test_a_second_sync_waits_for_the_first_and_the_target_ends_complete(tmp_path, new_database):
    """A Dagster run (`dagster asset materialize`) and a hand-started `cutover-check` on one
    target: the second waits, naming the first, and starts once the first is done. Slow (about
    15 s): both are processes of their own, as they are in use."""
    source = tmp_path / "d1.sqlite"
    sample = build_sample_db(source, users=40, seed=4)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    storage, target = new_database(), new_database()
    env = child_env(
        DAGSTER_HOME=str(home),
        DAGSTER_PG_URL=as_url(storage),
        D1_MIGRATION_SOURCE=str(source),
        D1_MIGRATION_TARGET_URL=as_url(target),
        D1_MIGRATION_STATE_DIR=str(tmp_path / "sync"),
    )
    materialize = [Path(sys.executable).with_name("dagster"), "asset", "materialize"]
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = second = None
    try:
        with psycopg.connect(target) as stall:
            with first_log.open("w") as out:
                first = subprocess.Popen(
                    [*materialize, "-m", "d1_migration.definitions", "--select", "*"],
                    cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            wait_for(lambda: synced_tables(target) > 0, "the first sync to commit a table")
            stall.execute("LOCK TABLE exercise_sets IN SHARE MODE")  # the first run is mid-way
            with second_log.open("w") as out:
                second = subprocess.Popen(
                    [sys.executable, "-m", "d1_migration.cli", "cutover-check"],
                    cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                )  # fmt: skip
            wait_for(
                lambda: (
                    "waiting for another sync of this target" in second_log.read_text()
                    or second.poll() is not None
                ),
                "the second sync to wait",
            )
        # the stall is over: both go on
        assert first.wait(timeout=300) == 0, first_log.read_text()[-3000:]
        second.wait(timeout=300)
    finally:  # a failed assertion leaves no sync running
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    said = second_log.read_text()
    with psycopg.connect(storage) as conn:
        [run_id] = [r[0] for r in conn.execute("SELECT run_id FROM runs")]
    assert f"waiting for another sync of this target to finish (run {run_id} pid " in said, said
    assert "another sync of this target is running" not in said
    with psycopg.connect(target) as conn:
        rows = conn.execute("SELECT count(*) FROM exercise_sets").fetchone()[0]
    assert rows == sample.row_counts["exercise_sets"]
    final_sync = [line.split() for line in said.splitlines() if line.startswith("exercise_sets ")]
    assert final_sync[0][1:] == [str(rows), str(rows), "0", "0"]  # D1, Postgres, quarantined,
    # changes: the gate's sync started only after the Dagster run had synced everything


def test_a_sync_that_may_not_wait_is_refused_before_any_write(tmp_path, pg_url):
    """The `migrate` job with a lock timeout in its run config, while a process holds the
    target: refused, naming the holder, and nothing in the target or the shadow directory."""
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=10, seed=1)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_TARGET, pg_url],
        cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        defs = Definitions(
            assets=definitions.ASSETS,
            jobs=[definitions.migrate_job],
            resources={
                "d1": D1Source(path=str(source)),
                "postgres": PostgresTarget(url=pg_url),
                "sync": SyncSettings(state_dir=str(tmp_path / "sync")),
            },
        )
        settings = {"lock_timeout_seconds": 1, "state_dir": str(tmp_path / "sync")}
        config = {"resources": {"sync": {"config": settings}}}
        result = defs.resolve_job_def("migrate").execute_in_process(
            run_config=config, instance=DagsterInstance.ephemeral(), raise_on_error=False
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    summary = summarize(result)
    assert not summary.success
    assert f"another sync of this target is running (run r-holder pid {holder.pid}@" in (
        summary.failure
    ), summary.failure
    with psycopg.connect(pg_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname IN ('public', 'd1_migration')"
        ).fetchone() == (0,)
    assert not (tmp_path / "sync").exists()
