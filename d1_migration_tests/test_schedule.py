"""The re-sync schedule, the jobs' sync modes and the rule that syncs never overlap."""

import importlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psycopg
from dagster import (
    DagsterInstance,
    DefaultScheduleStatus,
    Definitions,
    build_schedule_context,
)
from dagster._daemon.monitoring import execute_concurrency_slots_iteration

from d1_migration import definitions
from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.demo.sample_data import build_sample_db
from d1_migration.runner import summarize
from d1_migration.sync.target_lock import TARGET_POOL
from d1_migration.verify.checks import MATCHES_D1
from d1_migration_tests.helpers import ROOT, as_url

log = logging.getLogger(__name__)


def test_resync_schedule_is_off_until_turned_on_and_takes_its_cron_from_the_env(monkeypatch):
    monkeypatch.setenv(definitions.CRON_ENV, "*/3 * * * *")
    try:
        reloaded = importlib.reload(definitions)
        schedule = reloaded.resync_schedule
        assert schedule.cron_schedule == "*/3 * * * *"
        assert schedule.default_status is DefaultScheduleStatus.STOPPED
        assert schedule.job_name == "migrate"
        request = schedule.evaluate_tick(build_schedule_context()).run_requests[0]
        assert request.run_config == {
            "ops": {"migrate_tables": {"config": {"mode": "incremental"}}}
        }
    finally:
        monkeypatch.delenv(definitions.CRON_ENV)
        importlib.reload(definitions)
    assert definitions.resync_schedule.cron_schedule == definitions.DEFAULT_CRON


def test_the_verified_share_of_each_sync_comes_from_the_env(monkeypatch):
    monkeypatch.setenv(definitions.VERIFY_SLICES_ENV, "50")
    try:
        reloaded = importlib.reload(definitions)
        request = reloaded.resync_schedule.evaluate_tick(build_schedule_context()).run_requests[0]
        expected = {"mode": "incremental", "verify_slices": 50}
        assert request.run_config == {"ops": {"migrate_tables": {"config": expected}}}
        assert (
            reloaded.sync_run_config("full")["ops"]["migrate_tables"]["config"]["verify_slices"]
            == 50
        )
    finally:
        monkeypatch.delenv(definitions.VERIFY_SLICES_ENV)
        importlib.reload(definitions)


def test_syncs_wait_for_each_other_in_the_run_queue(tmp_path, new_database, monkeypatch):
    """dagster.yaml lets one run carrying the sync tag run at a time; both jobs carry it."""
    shutil.copy(ROOT / "dagster.yaml", tmp_path)
    monkeypatch.setenv("DAGSTER_PG_URL", as_url(new_database()))
    limits = DagsterInstance.from_config(str(tmp_path)).get_concurrency_config()
    [key] = definitions.SYNC_TAG
    assert {"key": key, "limit": 1} in limits.run_queue_config.tag_concurrency_limits
    for job in (definitions.migrate_job, definitions.full_rebuild_job):
        assert job.tags.items() >= definitions.SYNC_TAG.items()


def test_the_jobs_choose_the_sync_mode(tmp_path, pg_url):
    """`migrate` syncs incrementally, `full_rebuild` re-reads every row, on the same target.
    Slow (about 20 s): three whole runs of the jobs, as the UI launches them."""
    build_sample_db(tmp_path / "d1.sqlite", users=10, seed=3)
    defs = Definitions(
        assets=definitions.ASSETS,
        asset_checks=definitions.ASSET_CHECKS,
        jobs=[definitions.migrate_job, definitions.full_rebuild_job],
        resources={
            "d1": D1Source(path=str(tmp_path / "d1.sqlite")),
            "postgres": PostgresTarget(url=pg_url),
            "sync": SyncSettings(state_dir=str(tmp_path / "sync")),
        },
    )

    def modes(job: str) -> tuple[set[str], set[str]]:
        """The tables' sync modes, and how much of each table matches_d1 verified."""
        result = defs.resolve_job_def(job).execute_in_process(
            instance=DagsterInstance.ephemeral(), raise_on_error=False
        )
        summary = summarize(result)
        assert summary.success, summary.failure
        verified = {c.metadata["verified"] for c in summary.checks if c.check == MATCHES_D1}
        return {meta["mode"] for meta in summary.tables.values()}, verified

    assert modes("migrate") == ({"full"}, {"slice 1 of 10"})  # a first sync is full anyway
    assert modes("migrate") == ({"incremental"}, {"slice 2 of 10"})
    assert modes("full_rebuild") == ({"full"}, {"whole table"})


def test_a_killed_run_does_not_keep_the_target_pool_slot(tmp_path, new_database, monkeypatch):
    """The pool of the tables' step has one slot (dagster.yaml). A run killed with SIGKILL in
    that step keeps its slot until the daemon frees it, after the run is marked failed (by its
    code server under `dagster dev`; here by the test, as no code server runs); a new run then
    syncs instead of waiting for ever. Slow (about 30 s): two `dagster job execute` processes
    (each imports Dagster and the code location) and the daemon's wait before it frees a slot."""
    source, target = tmp_path / "d1.sqlite", new_database()
    sample = build_sample_db(source, users=10, seed=3)
    shutil.copy(ROOT / "dagster.yaml", tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DAGSTER_HOME": str(tmp_path),
        "DAGSTER_PG_URL": as_url(new_database()),
        "D1_MIGRATION_SOURCE": str(source),
        "D1_MIGRATION_TARGET_URL": as_url(target),
        "D1_MIGRATION_STATE_DIR": str(tmp_path / "sync"),
    }
    migrate = [Path(sys.executable).with_name("dagster"), "job", "execute", "-m"]
    migrate += ["d1_migration.definitions", "-j", "migrate"]
    with psycopg.connect(target) as stall:
        killed = subprocess.Popen(migrate, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not _synced_a_table(target):
                assert killed.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
            stall.execute("LOCK TABLE exercise_sets IN SHARE MODE")  # keep it in the step
        finally:
            killed.send_signal(signal.SIGKILL)
            killed.wait()
    monkeypatch.setenv("DAGSTER_PG_URL", env["DAGSTER_PG_URL"])
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        [run] = instance.get_runs()
        pool = instance.event_log_storage.get_concurrency_info(TARGET_POOL)
        assert (pool.slot_count, pool.active_slot_count) == (1, 1)
        instance.report_run_failed(run)
        time.sleep(instance.run_monitoring_settings["free_slots_after_run_end_seconds"] + 1)
        list(execute_concurrency_slots_iteration(SimpleNamespace(instance=instance), log))
    done = subprocess.run(migrate, cwd=tmp_path, env=env, capture_output=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    with psycopg.connect(target) as conn:
        rows = conn.execute("SELECT count(*) FROM exercise_sets").fetchone()[0]
    assert rows == sample.row_counts["exercise_sets"]


def _synced_a_table(url: str) -> bool:
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('d1_migration.sync_state')").fetchone()[0] is None:
            return False
        return conn.execute("SELECT count(*) FROM d1_migration.sync_state").fetchone()[0] > 0
