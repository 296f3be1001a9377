"""Every entry point sees the same source, target and state directory, whatever part of the
config a user sets; a target with no source, or a source that is not a database, is refused
before any work. Real Dagster runs of the real jobs, on real SQLite and Postgres."""

from pathlib import Path

import psycopg
import pytest
from dagster import AssetSelection, DagsterInstance, Definitions, materialize

from d1_migration import definitions
from d1_migration.defs.resources import SOURCE_ENV, STATE_DIR_ENV, TARGET_ENV
from d1_migration.demo.sample_data import build_sample_db
from d1_migration.runner import RunSummary, summarize
from d1_migration.verify.checks import ROW_PARITY
from d1_migration_tests.helpers import assert_like_fresh_migration, first, mutate


@pytest.fixture
def configured(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment of a deployment; the working directory is a fresh one, so that a
    fallback to the default state directory or the demo file would be a different place."""
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=12, seed=11)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(SOURCE_ENV, str(source))
    monkeypatch.setenv(TARGET_ENV, pg_url)
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    return source


def deployed() -> Definitions:
    """The code location as `dagster dev` loads it, with this environment."""
    return Definitions(
        assets=definitions.ASSETS,
        asset_checks=definitions.ASSET_CHECKS,
        jobs=[definitions.migrate_job, definitions.full_rebuild_job],
        resources=definitions.build_resources(),
    )


def materialize_all() -> RunSummary:
    """What the UI's Materialize all launches: every asset, no run config."""
    Definitions.validate_loadable(deployed())  # they load with this environment
    result = materialize(
        [*definitions.ASSETS, *definitions.ASSET_CHECKS],
        resources=definitions.build_resources(),
        instance=DagsterInstance.ephemeral(),
        selection=AssetSelection.key_prefixes("pg"),
        raise_on_error=False,
    )
    return summarize(result)


def run_job(name: str, run_config: dict | None = None) -> RunSummary:
    job = deployed().resolve_job_def(name)
    result = job.execute_in_process(
        instance=DagsterInstance.ephemeral(), run_config=run_config, raise_on_error=False
    )
    return summarize(result)


def test_a_job_between_two_materializations_keeps_the_one_shadow(
    configured, tmp_path, pg_url, new_database
):
    """The issue's reproduction: Materialize all; rename a user and add a habit log in D1; run
    `migrate`; undo both; Materialize all. Postgres must equal a fresh migration.
    Slow (about 35 s): three whole Dagster runs of 66 tables and their checks, as the issue
    had them, and a fresh migration to compare with."""
    assert materialize_all().success
    user = first(configured, "SELECT id FROM users ORDER BY id LIMIT 1")
    name = first(configured, f"SELECT name FROM users WHERE id = '{user}'")
    habit = first(configured, "SELECT id FROM habits ORDER BY id LIMIT 1")
    mutate(
        configured,
        [
            f"UPDATE users SET name = 'renamed' WHERE id = '{user}'",
            "INSERT INTO habit_logs (id, habit_id, user_id, completed_at) SELECT 'hl-new', "
            f"id, user_id, '2026-03-01 08:00:00' FROM habits WHERE id = '{habit}'",
        ],
    )
    assert run_job("migrate").success
    mutate(
        configured,
        [
            f"UPDATE users SET name = '{name}' WHERE id = '{user}'",
            "DELETE FROM habit_logs WHERE id = 'hl-new'",
        ],
    )
    again = materialize_all()
    assert again.success
    assert again.tables["users"]["mode"] == "incremental"
    assert list(tmp_path.glob("state/shadow-*.sqlite")) != []
    assert not (tmp_path / ".d1_migration").exists()  # no second shadow, no demo, no embedded
    assert_like_fresh_migration(pg_url, configured, new_database())


@pytest.mark.parametrize(
    "launchpad",
    [
        {"postgres": {"config": {"workdir": "elsewhere"}}},
        {"d1": {"config": {"api_page_rows": 10}}},
        {"sync": {"config": {}}},
    ],
    ids=["postgres-field", "d1-field", "sync-empty"],
)
def test_configuring_one_field_in_the_launchpad_keeps_the_others(configured, pg_url, launchpad):
    summary = run_job("full_rebuild", {"resources": launchpad})
    assert summary.success, summary.failure
    parity = summary.check("users", ROW_PARITY)  # the configured source, read...
    assert parity.passed
    assert parity.metadata["source_rows"] == first(configured, "SELECT count(*) FROM users")
    with psycopg.connect(pg_url) as conn:  # ...into the configured target
        users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
    assert users == parity.metadata["target_rows"] > 0
    assert not Path("elsewhere").exists() and not Path(".d1_migration").exists()


def test_a_target_without_a_source_is_refused_before_any_work(tmp_path, pg_url, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".d1_migration").mkdir()
    build_sample_db(tmp_path / ".d1_migration" / "demo.sqlite", users=10)  # a demo left behind
    monkeypatch.delenv(SOURCE_ENV, raising=False)
    monkeypatch.setenv(TARGET_ENV, pg_url)
    summary = materialize_all()
    assert not summary.success
    assert f"{SOURCE_ENV} is not set, but a target database is" in summary.failure
    with psycopg.connect(pg_url) as conn:
        schemas = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'd1_migration'")
        assert schemas.fetchone() is None  # nothing was written, not even bookkeeping


@pytest.mark.parametrize(
    ("content", "said"),
    [(b"", "is empty (0 bytes)"), (b"id,name\n1,x\n" * 20, "is not a SQLite database")],
    ids=["empty", "csv"],
)
def test_a_source_that_is_not_a_database_fails_with_one_message(
    tmp_path, pg_url, monkeypatch, content, said
):
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "export.db"
    source.write_bytes(content)
    monkeypatch.setenv(SOURCE_ENV, str(source))
    monkeypatch.setenv(TARGET_ENV, pg_url)
    summary = materialize_all()
    assert not summary.success
    assert f"The D1 source {source} {said}" in summary.failure
    assert "missing table" not in summary.failure
    assert "file is not a database" not in summary.failure
