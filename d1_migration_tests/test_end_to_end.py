"""Materialize all assets and checks through Dagster, on real SQLite and real Postgres."""

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
from dagster import AssetCheckKey, AssetSelection

from d1_migration.defs.keys import target_key
from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.demo.sample_data import build_sample_db
from d1_migration.runner import materialize_all
from d1_migration.spec.tables import SCHEMA
from d1_migration.target.ddl import ensure_schema
from d1_migration.target.embedded import stop_embedded_postgres
from d1_migration.transforms import uuid_for
from d1_migration.verify.checks import ORPHANED_FKS, QUARANTINE, ROW_PARITY
from d1_migration_tests.helpers import ROOT, as_url


def open_rejects(conn: psycopg.Connection) -> set[tuple[str, str, str]]:
    return set(
        conn.execute(
            "SELECT source_table, source_pk, reason_code FROM d1_migration.rejected_rows "
            "WHERE resolved_at IS NULL"
        ).fetchall()
    )


def test_sample_database_migrates_with_every_row_accounted_for(tmp_path, pg_url):
    """Slow (about 18 s): two whole runs of the sample database, a first and a re-sync."""
    sample = build_sample_db(tmp_path / "d1.sqlite", users=60, seed=1)
    d1, target = D1Source(path=str(tmp_path / "d1.sqlite")), PostgresTarget(url=pg_url)
    sync = SyncSettings(state_dir=str(tmp_path / "sync"))

    summary = materialize_all(d1, target, sync=sync)

    assert summary.success
    assert set(summary.tables) == {t.name for t in SCHEMA.tables}
    for table in SCHEMA.tables:
        parity = summary.check(table.name, ROW_PARITY)
        assert parity.passed, parity.metadata
        assert parity.metadata["source_rows"] == sample.row_counts[table.name]
        if table.foreign_keys:
            assert summary.check(table.name, ORPHANED_FKS).passed
    with psycopg.connect(pg_url) as conn:
        expected = {(r.table, r.source_pk, r.reason_code) for r in sample.rejects}
        assert open_rejects(conn) == expected
        quarantined_tables = {r.table for r in sample.rejects}
        for table in SCHEMA.tables:
            outcome = summary.check(table.name, QUARANTINE)
            assert outcome.passed == (table.name not in quarantined_tables), table.name
            assert outcome.severity == "WARN"
        seeds = dict(
            conn.execute(
                "SELECT source_id, target_id::text FROM d1_migration.id_map "
                "WHERE source_table = 'skill_definitions'"
            ).fetchall()
        )
        assert seeds and all(uuid_for(k) == v for k, v in seeds.items())
        flagged = conn.execute(  # emailVerified = 1: the user's created_at, by the spec's rule
            "SELECT count(*), count(*) FILTER (WHERE email_verified = created_at) FROM users "
            "WHERE role = 'admin'"
        ).fetchone()
        assert flagged == (2, 2)
        assert conn.execute(
            "SELECT q.skill_id, m.source_text FROM universal_quests q JOIN d1_migration.ref_map m "
            "ON m.target_pk = q.id::text AND m.target_id = q.created_by"
        ).fetchall() == [("focus", "system")]

    wallet = summary.check("user_wallet", "wallet_matches_ledger")
    assert not wallet.passed
    assert set(wallet.metadata["mismatching_user_ids"]) == {
        uuid_for(u) for u in sample.drifted_wallet_users
    }

    again = materialize_all(d1, target, sync=sync)
    assert again.success
    for name, meta in again.tables.items():
        assert (meta["inserted"], meta["updated"], meta["deleted"]) == (0, 0, 0), name
        assert meta["mode"] == "incremental", name
    assert all(c.passed for c in again.checks if c.check == ROW_PARITY)
    with psycopg.connect(pg_url) as conn:
        assert open_rejects(conn) == expected
        assert conn.execute("SELECT count(*) FROM d1_migration.rejected_rows").fetchone()[0] == len(
            expected
        )


def test_real_schema_with_seed_rows(real_d1, pg_url):
    summary = materialize_all(
        D1Source(path=str(real_d1)),
        PostgresTarget(url=pg_url),
        sync=SyncSettings(state_dir=str(real_d1.parent / "sync")),
    )

    assert summary.success
    assert not summary.failed_checks, summary.failed_checks
    with psycopg.connect(pg_url) as conn:
        flow = uuid_for("flow_main_v1")
        assert (
            conn.execute(
                "SELECT count(*) FROM onboarding_steps WHERE flow_id = %s", [flow]
            ).fetchone()[0]
            == 10
        )
        assert conn.execute(
            "SELECT target_id::text FROM d1_migration.id_map WHERE source_table "
            "= 'market_items' AND source_id = 'item_theme_dark'"
        ).fetchone()[0] == (uuid_for("item_theme_dark"))
        options = conn.execute(
            "SELECT options FROM onboarding_steps WHERE id = %s", [uuid_for("step_2_interests")]
        ).fetchone()[0]
        assert options == ["focus", "fitness", "learning", "music", "habits", "creativity"]
        items = conn.execute("SELECT items FROM ignition_packs WHERE key = 'focus_prep'").fetchone()
        assert items[0][0] == "Close unnecessary tabs"


def test_dagster_cli_materializes_everything_with_postgres_run_storage(
    tmp_path, new_database, real_d1
):
    """Slow (about 20 s): `dagster asset materialize` in a process of its own (importing Dagster
    and the code location), recording its run in Postgres as deployed runs do."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home)
    storage_url, target_url = new_database(), new_database()
    sessions_before = _sessions(storage_url)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": as_url(storage_url),
        "D1_MIGRATION_SOURCE": str(real_d1),
        "D1_MIGRATION_TARGET_URL": as_url(target_url),
    }
    done = subprocess.run(
        [
            Path(sys.executable).with_name("dagster"),
            "asset",
            "materialize",
            "-m",
            "d1_migration.definitions",
            "--select",
            "*",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with psycopg.connect(target_url) as conn:
        assert conn.execute("SELECT count(*) FROM skill_definitions").fetchone()[0] == 6
    with psycopg.connect(storage_url) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    assert target_url not in done.stdout + done.stderr
    # The pooled storage of dagster.yaml: dagster-postgres alone opens ~2,000 connections here.
    assert 0 < _sessions(storage_url) - sessions_before < 300


def _sessions(url: str) -> int:
    """Connections ever opened to the database of ``url`` (Postgres' statistics)."""
    dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    admin = psycopg.conninfo.make_conninfo(url, dbname="postgres")
    with psycopg.connect(admin) as conn:
        return conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", [dbname]
        ).fetchone()[0]


def test_demo_command(tmp_path, pg_url, capsys, monkeypatch):
    """Slow (about 20 s): the demo as a user runs it, building its sample D1 and starting the
    embedded PostgreSQL that holds Dagster's storage."""
    from d1_migration.cli import main

    monkeypatch.setenv("D1_MIGRATION_TARGET_URL", pg_url)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    try:
        assert main(["demo", "--users", "30", "--workdir", str(tmp_path)]) == 0
    finally:
        stop_embedded_postgres(tmp_path)
    assert not (tmp_path / "pgdata" / "postmaster.pid").exists()
    out = capsys.readouterr().out
    assert "wallet_matches_ledger" in out and "Quarantined rows by reason" in out
    assert "peak memory" in out


def test_a_failing_table_skips_only_its_descendants(tmp_path, pg_url, pg):
    sample = build_sample_db(tmp_path / "d1.sqlite", users=15, seed=6)
    ensure_schema(pg, SCHEMA)  # then Postgres refuses every row of habits, as a full disk would
    pg.execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
    )
    pg.execute("CREATE TRIGGER refuse BEFORE INSERT ON habits EXECUTE FUNCTION refuse()")
    summary = materialize_all(
        D1Source(path=str(tmp_path / "d1.sqlite")),
        PostgresTarget(url=pg_url),
        sync=SyncSettings(state_dir=str(tmp_path / "sync")),
    )
    assert not summary.success
    assert "habits" not in summary.tables and "habit_logs" not in summary.tables
    assert {"users", "focus_sessions", "points_ledger"} <= set(summary.tables)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM habits").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM focus_sessions").fetchone()[0] > 0
    checked = {c.asset for c in summary.checks}
    assert {"pg/users", "pg/focus_sessions", "pg/points_ledger"} <= checked
    assert not {"pg/habits", "pg/habit_logs"} & checked
    wallet = summary.check("user_wallet", "wallet_matches_ledger")  # it read no failed table
    assert set(wallet.metadata["mismatching_user_ids"]) == {
        uuid_for(u) for u in sample.drifted_wallet_users
    }


def test_a_check_runs_alone_against_d1_as_it_is_now(tmp_path, pg_url):
    """A check chosen on its own in the UI loads nothing and counts D1 afresh."""
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=15, seed=6)
    d1, target = D1Source(path=str(source)), PostgresTarget(url=pg_url)
    sync = SyncSettings(state_dir=str(tmp_path / "sync"))
    assert materialize_all(d1, target, sync=sync).check("users", ROW_PARITY).passed
    with sqlite3.connect(source) as conn:
        conn.execute(
            "INSERT INTO users (id, email, name, role, created_at, updated_at) "
            "VALUES ('late', 'late@example.com', 'Late', 'user', '2026-01-01', '2026-01-01')"
        )
    alone = materialize_all(
        D1Source(path=str(source)),
        target,
        sync=sync,
        selection=AssetSelection.checks(AssetCheckKey(target_key("users"), ROW_PARITY)),
    )
    assert alone.tables == {}
    assert [(c.asset, c.check) for c in alone.checks] == [("pg/users", ROW_PARITY)]
    assert not alone.checks[0].passed
    assert alone.checks[0].metadata["unaccounted_rows"] == 1
