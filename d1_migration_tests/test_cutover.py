"""The cutover gate on real SQLite and real Postgres: ready only when D1 is quiet and clean."""

import sqlite3

import psycopg
from dagster import DagsterInstance

from d1_migration.cli import main
from d1_migration.defs.jobs import build_cutover_job
from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.demo.sample_data import build_sample_db, sqlite_ddl
from d1_migration.spec.tables import SCHEMA
from d1_migration.verify import cutover
from d1_migration.verify.cutover import cutover_check

CLEAN_ROWS = [
    "INSERT INTO users (id, email, created_at, updated_at) VALUES ('u1', 'a@x', "
    "'2026-01-06 10:00:00', '2026-01-06 10:00:00')",
    "INSERT INTO user_wallet (id, user_id, coins, xp) VALUES ('w1', 'u1', 15, 7)",
    "INSERT INTO points_ledger (id, user_id, event_type, coins, xp) VALUES "
    "('l1', 'u1', 'focus', 10, 5), ('l2', 'u1', 'quest', 5, 2)",
]


def clean_d1(path) -> None:
    with sqlite3.connect(path) as d1:
        d1.executescript(sqlite_ddl(SCHEMA))
        for statement in CLEAN_ROWS:
            d1.execute(statement)


def test_quiet_clean_database_is_ready(tmp_path, pg_url, monkeypatch, capsys):
    clean_d1(tmp_path / "d1.sqlite")
    monkeypatch.setenv("D1_MIGRATION_SOURCE", str(tmp_path / "d1.sqlite"))
    monkeypatch.setenv("D1_MIGRATION_TARGET_URL", pg_url)
    monkeypatch.setenv("D1_MIGRATION_STATE_DIR", str(tmp_path / "sync"))

    assert main(["cutover-check"]) == 0
    out = capsys.readouterr().out
    assert "READY for cutover" in out and "NOT READY" not in out
    assert "points_ledger" in out


def test_quarantine_and_drift_block_cutover(tmp_path, pg_url):
    sample = build_sample_db(tmp_path / "d1.sqlite", users=20, seed=2)
    verdict = cutover_check(
        D1Source(path=str(tmp_path / "d1.sqlite")),
        PostgresTarget(url=pg_url),
        SyncSettings(state_dir=str(tmp_path / "sync")),
        SCHEMA,
    )
    assert not verdict.ready
    text = "\n".join(verdict.reasons)
    assert "pg/user_wallet wallet_matches_ledger" in text
    for table in {r.table for r in sample.rejects}:
        assert f"pg/{table} quarantine" in text
    assert "still changing" not in text  # nobody wrote to D1 between the two syncs
    assert verdict.tables["points_ledger"]["source_rows"] == sample.row_counts["points_ledger"]


def test_a_busy_d1_blocks_cutover(tmp_path, pg_url, monkeypatch):
    source = tmp_path / "d1.sqlite"
    clean_d1(source)
    calls = []
    real_sync = cutover._sync

    def app_still_writing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # between the final sync and the quiet check
            with sqlite3.connect(source) as d1:
                d1.execute("UPDATE users SET name = 'late write' WHERE id = 'u1'")
        return real_sync(*args, **kwargs)

    monkeypatch.setattr(cutover, "_sync", app_still_writing)
    verdict = cutover_check(
        D1Source(path=str(source)),
        PostgresTarget(url=pg_url),
        SyncSettings(state_dir=str(tmp_path / "sync")),
        SCHEMA,
    )
    assert not verdict.ready
    assert any("still changing" in r and "users (1 rows)" in r for r in verdict.reasons)


def test_cutover_job_fails_when_not_ready(tmp_path, pg_url):
    build_sample_db(tmp_path / "d1.sqlite", users=15, seed=4)
    result = build_cutover_job(SCHEMA).execute_in_process(
        resources={
            "d1": D1Source(path=str(tmp_path / "d1.sqlite")),
            "postgres": PostgresTarget(url=pg_url),
            "sync": SyncSettings(state_dir=str(tmp_path / "sync")),
        },
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "NOT READY for cutover" in str(failure.event_specific_data.error)


def gate(source, pg_url, tmp_path) -> cutover.Verdict:
    return cutover_check(
        D1Source(path=str(source)),
        PostgresTarget(url=pg_url),
        SyncSettings(state_dir=str(tmp_path / "sync")),
        SCHEMA,
    )


def test_a_d1_column_the_spec_does_not_know_is_not_ready(tmp_path, pg_url):
    """The gate syncs through the engine, so schema drift stops it: a column it would leave
    out can never be READY."""
    source = tmp_path / "d1.sqlite"
    clean_d1(source)
    with sqlite3.connect(source) as d1:
        d1.execute("ALTER TABLE habits ADD COLUMN notes TEXT")
    verdict = gate(source, pg_url, tmp_path)
    assert not verdict.ready
    assert any("schema drift: added column habits.notes" in r for r in verdict.reasons)


def test_a_table_that_fails_to_sync_is_not_ready_not_a_crash(tmp_path, pg_url):
    source = tmp_path / "d1.sqlite"
    clean_d1(source)
    assert gate(source, pg_url, tmp_path).ready
    with psycopg.connect(pg_url, autocommit=True) as conn:  # Postgres refuses every new row
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'ledger is read-only'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON points_ledger EXECUTE FUNCTION refuse()"
        )
    with sqlite3.connect(source) as d1:
        d1.execute(
            "INSERT INTO points_ledger (id, user_id, event_type, coins, xp) "
            "VALUES ('l3', 'u1', 'focus', 1, 1)"
        )
    verdict = gate(source, pg_url, tmp_path)
    assert not verdict.ready
    [reason] = [r for r in verdict.reasons if "points_ledger" in r]
    assert reason.startswith("pg/points_ledger was not synced:") and "ledger is read-only" in reason


def test_the_gate_verifies_every_table_whole(tmp_path, pg_url):
    """A value edited in Postgres by hand, which every count still agrees with, is NOT READY,
    named by its table, its check and its key."""
    source = tmp_path / "d1.sqlite"
    clean_d1(source)
    assert gate(source, pg_url, tmp_path).ready
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE points_ledger SET event_type = 'edited' WHERE coins = 10")
        pk = conn.execute("SELECT id FROM points_ledger WHERE coins = 10").fetchone()[0]
    verdict = gate(source, pg_url, tmp_path)
    assert not verdict.ready
    [reason] = verdict.reasons
    assert reason.startswith("pg/points_ledger matches_d1 failed")
    assert str(pk) in reason and "event_type" in reason
