"""The re-sync schedule, the jobs' sync modes and the rule that syncs never overlap."""

import importlib
import shutil

from dagster import (
    DagsterInstance,
    DefaultScheduleStatus,
    Definitions,
    build_schedule_context,
)

from d1_migration import definitions
from d1_migration.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.runner import summarize
from d1_migration.sample_data import build_sample_db
from d1_migration_tests.helpers import ROOT, as_url


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
    """`migrate` syncs incrementally, `full_rebuild` re-reads every row, on the same target."""
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

    def modes(job: str) -> set[str]:
        result = defs.resolve_job_def(job).execute_in_process(
            instance=DagsterInstance.ephemeral(), raise_on_error=False
        )
        summary = summarize(result)
        assert summary.success, summary.failure
        return {meta["mode"] for meta in summary.tables.values()}

    assert modes("migrate") == {"full"}  # a first sync is full either way
    assert modes("migrate") == {"incremental"}
    assert modes("full_rebuild") == {"full"}
