"""The `d1-migration` command end to end, on real SQLite and real Postgres: the console script
in a subprocess (as a user runs it) for the demo and the UI line it prints, ``main(argv)`` for
the rest. One demo run is shared by the tests that read what it left (status, quarantine,
report); each of them checks it left that state as it was."""

import csv
import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterInstance, materialize
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from d1_migration import cli
from d1_migration.definitions import ASSET_CHECKS, ASSETS
from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.demo.sample_data import build_sample_db, sqlite_ddl
from d1_migration.report.asset import REPORT_KEY, build_report_asset
from d1_migration.runner import materialize_all
from d1_migration.spec.tables import SCHEMA
from d1_migration.target.embedded import stop_embedded_postgres
from d1_migration.transforms import uuid_for
from d1_migration_tests.helpers import as_url, mutate

PACKAGE = Path(cli.__file__).parent
SCRIPT = Path(sys.executable).parent / "d1-migration"
USERS, SEED = 30, 4
# A variable's name as a string in the package's code, or read by `env:` in dagster.yaml.
PROJECT_VARIABLES = re.compile(r"[\"' ]((?:D1_MIGRATION|CLOUDFLARE|DAGSTER)_[A-Z0-9_]+)[\"'\n]")
NOISE = ("DEBUG", "Telemetry", "Warning:", "DeprecationWarning", "- dagster - ")


def clean_d1(path: Path) -> None:
    """A D1 with one user, a wallet and the two ledger rows it sums: every check passes."""
    with sqlite3.connect(path) as d1:
        d1.executescript(sqlite_ddl(SCHEMA))
        d1.execute(
            "INSERT INTO users (id, email, created_at, updated_at) VALUES ('u1', 'a@x', "
            "'2026-01-06 10:00:00', '2026-01-06 10:00:00')"
        )
        d1.execute("INSERT INTO user_wallet (id, user_id, coins, xp) VALUES ('w1', 'u1', 15, 7)")
        d1.execute(
            "INSERT INTO points_ledger (id, user_id, event_type, coins, xp) VALUES "
            "('l1', 'u1', 'focus', 10, 5), ('l2', 'u1', 'quest', 5, 2)"
        )


def clean_env(**values: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("D1_MIGRATION_", "DAGSTER_", "CLOUDFLARE_"))
    }
    return {**env, **values}


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory, pg_admin_url):
    """`d1-migration demo` in a fresh directory, into a database of its own; Dagster's storage
    in the embedded server the demo starts (stopped at the end by `embedded stop`)."""
    cwd = tmp_path_factory.mktemp("cli")
    name = f"d1mt_cli_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = as_url(make_conninfo(**{**conninfo_to_dict(pg_admin_url), "dbname": name}))
    env = clean_env(D1_MIGRATION_TARGET_URL=url)
    try:
        done = run(["demo", "--users", str(USERS), "--seed", str(SEED)], cwd, env)
        sample = build_sample_db(cwd / "expected.sqlite", users=USERS, seed=SEED)
        yield {"cwd": cwd, "env": env, "url": url, "done": done, "sample": sample}
    finally:
        stopped = run(["embedded", "stop"], cwd, env)
        assert stopped.returncode == 0, stopped.stderr
        stop_embedded_postgres(cwd / ".d1_migration")  # in case the command did not
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_demo_is_quiet_and_says_what_the_run_did(demo):
    done, sample = demo["done"], demo["sample"]
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout + done.stderr
    for noise in NOISE:
        assert noise not in output
    assert "66/66 tables" in done.stderr  # the progress bar, fed by the run's events
    inserted = sum(sample.row_counts.values()) - len(sample.rejects)
    assert f"Tables synced: 66; rows inserted {inserted}, updated 0, deleted 0" in done.stdout
    assert f"quarantined {len(sample.rejects)} (open in quarantine: {len(sample.rejects)})" in (
        done.stdout
    )
    failed = re.search(r"failed by severity: (\d+) ERROR, (\d+) WARN", done.stdout)
    assert failed and int(failed[1]) >= 1  # wallet_matches_ledger, at least
    assert int(failed[2]) == len({r.table for r in sample.rejects})  # each quarantine check
    assert "{" not in done.stdout.split("Checks that did not pass:")[1]  # no dict reprs
    assert "embedded stop" in done.stdout and str(SCRIPT) in done.stdout


def test_the_printed_ui_command_finds_the_run_with_no_warning(demo):
    """The line the demo prints works as printed: the venv's dagster by absolute path, an
    instance that holds the run, no DAGSTER_HOME warning, a code location that loads."""
    out = demo["done"].stdout
    line = out.split("See this run in the UI:\n")[1].splitlines()[0].strip()
    assert line.startswith("cd ") and f"{Path(sys.executable).parent}/dagster dev" in line
    run_id = re.search(r"run ([0-9a-f-]{36}) succeeded", out)[1]
    listed = subprocess.run(
        ["bash", "-c", line.replace(" dev -m d1_migration.definitions", " run list")],
        env=demo["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr
    assert run_id in listed.stdout
    assert "Found a dagster.yaml" not in listed.stderr
    loads = subprocess.run(
        ["bash", "-c", line.replace(" dev -m", " definitions validate -m")],
        env=demo["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loads.returncode == 0, loads.stdout + loads.stderr


def _sync_marks(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT table_name, synced_at, generation FROM d1_migration.sync_state ORDER BY 1"
        ).fetchall()


def test_status_after_the_demo_reads_everything_and_runs_nothing(demo):
    before = _sync_marks(demo["url"])
    done = run(["status"], demo["cwd"], demo["env"])
    assert done.returncode == 1, done.stdout + done.stderr  # wallet_matches_ledger (ERROR)
    sample = demo["sample"]
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    for table in SCHEMA.tables:
        assert table.name in lines
    users = lines["users"].split()
    quarantined_users = sum(r.table == "users" for r in sample.rejects)
    # table, date, time, mode, D1, Postgres, quarantined, inserted, updated, deleted
    assert users[3] == "full"
    assert int(users[4]) == sample.row_counts["users"]
    assert int(users[5]) == sample.row_counts["users"] - quarantined_users
    assert int(users[6]) == quarantined_users
    assert "FAILED wallet_matches_ledger (ERROR), quarantine (WARN)" in lines["user_wallet"]
    assert "66 of 66 tables synced" in done.stdout
    assert f"{len(sample.rejects)} row(s) in quarantine" in done.stdout
    assert _sync_marks(demo["url"]) == before  # no sync ran
    for noise in NOISE:
        assert noise not in done.stdout + done.stderr


def test_quarantine_lists_filters_and_exports(demo, tmp_path):
    sample, cwd, env = demo["sample"], demo["cwd"], demo["env"]
    table = next(r.table for r in sample.rejects)
    done = run(["quarantine", "--table", table], cwd, env)
    assert done.returncode == 1  # entries were listed
    listed = [line.split()[:4] for line in done.stdout.splitlines()[1:] if line.startswith(table)]
    expected = {(r.source_pk, r.reason_code) for r in sample.rejects if r.table == table}
    assert {(row[1], row[3]) for row in listed} == expected
    assert all(row[0] == table for row in listed)

    code = sample.rejects[-1].reason_code
    path = tmp_path / "q.csv"
    done = run(["quarantine", "--reason", code, "--csv", str(path)], cwd, env)
    assert done.returncode == 1
    with path.open() as file:
        rows = list(csv.DictReader(file))
    assert {(r["source_table"], r["source_pk"]) for r in rows} == {
        (r.table, r.source_pk) for r in sample.rejects if r.reason_code == code
    }
    assert all(r["reason_code"] == code and r["reason"] for r in rows)
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    clean = next(t.name for t in SCHEMA.tables if t.name not in {r.table for r in sample.rejects})
    assert run(["quarantine", "--table", clean], cwd, env).returncode == 0
    assert run(["quarantine", "--table", "no_such_table"], cwd, env).returncode == 2


def test_report_names_quarantine_reasons_and_drifted_wallets(demo):
    done = run(["report"], demo["cwd"], demo["env"])
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.split("Migration report: ")[1].strip())
    assert path == demo["cwd"] / ".d1_migration" / "report" / "index.html"
    page = path.read_text()
    sample = demo["sample"]
    for reject in sample.rejects:
        assert f"<td>{reject.reason_code}</td>" in page
    for user in sample.drifted_wallet_users:
        assert uuid_for(user) in page
    assert page.count("data:image/png;base64,") == 2  # rows per table, duration over time
    assert "Quarantine by table and reason" in page and "MISMATCH" not in page


def test_help_names_every_variable_the_package_reads():
    read = set()
    for source in PACKAGE.rglob("*.py"):
        read |= set(PROJECT_VARIABLES.findall(source.read_text()))
    read |= set(PROJECT_VARIABLES.findall((PACKAGE.parent / "dagster.yaml").read_text()))
    assert {"D1_MIGRATION_SOURCE", "DAGSTER_PG_URL"} <= read
    helps = [[], ["demo"], ["migrate"], ["status"], ["quarantine"], ["report"]]
    helps += [["cutover-check"], ["embedded", "stop"]]
    for command in helps:
        done = subprocess.run(
            [str(SCRIPT), *command, "--help"], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0
        missing = {name for name in read if name not in done.stdout}
        assert not missing, (command, missing)


def test_usage_and_configuration_errors_exit_2(tmp_path, pg_url, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("D1_MIGRATION_SOURCE", "D1_MIGRATION_TARGET_URL", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["no-such-command"]) == 2
    assert cli.main(["migrate"]) == 2  # no demo file yet
    assert "run `d1-migration demo` first" in capsys.readouterr().err
    monkeypatch.setenv("D1_MIGRATION_TARGET_URL", pg_url)
    assert cli.main(["migrate"]) == 2  # a target with no source
    assert "D1_MIGRATION_SOURCE is not set" in capsys.readouterr().err
    assert cli.main(["cutover-check"]) == 2
    monkeypatch.setenv("D1_MIGRATION_SOURCE", str(tmp_path / "missing.sqlite"))
    assert cli.main(["migrate"]) == 2
    monkeypatch.setenv("D1_MIGRATION_TARGET_URL", "postgresq://app:pw@host/db")
    assert cli.main(["status"]) == 2
    assert "pw" not in capsys.readouterr().err.replace("postgresq", "")
    monkeypatch.setenv("D1_MIGRATION_TARGET_URL", pg_url)
    home = tmp_path / "home"  # a Dagster instance that cannot load: one message, exit 2
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "storage:\n  postgres:\n    postgres_url:\n      env: D1MT_NEVER_SET\n"
    )
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert cli.main(["status"]) == 2
    assert f"Dagster's instance (DAGSTER_HOME={home}) could not be loaded" in (
        capsys.readouterr().err
    )
    monkeypatch.delenv("DAGSTER_HOME")
    monkeypatch.delenv("D1_MIGRATION_TARGET_URL")
    assert cli.main(["status"]) == 1  # nothing migrated here, and nothing was started
    assert not (tmp_path / ".d1_migration").exists()
    assert cli.main(["embedded", "stop"]) == 0  # not running: nothing to do


def test_migrate_exit_codes_modes_and_verbose(tmp_path, pg_url):
    source = tmp_path / "d1.sqlite"
    clean_d1(source)
    env = clean_env(
        D1_MIGRATION_SOURCE=str(source),
        D1_MIGRATION_TARGET_URL=as_url(pg_url),
        D1_MIGRATION_STATE_DIR=str(tmp_path / "sync"),
    )
    try:
        done = run(["migrate"], tmp_path, env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Tables synced: 66; rows inserted 4" in done.stdout
        for noise in NOISE:
            assert noise not in done.stdout + done.stderr
        mutate(source, ["UPDATE user_wallet SET coins = 99"])  # drift: an ERROR check fails
        done = run(["migrate", "--full", "--verbose"], tmp_path, env)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "updated 1" in done.stdout and "1 ERROR" in done.stdout
        assert " - DEBUG - " in done.stderr  # --verbose: Dagster's own log
        with psycopg.connect(pg_url) as conn:
            modes = {r[0] for r in conn.execute("SELECT mode FROM d1_migration.sync_state")}
        assert modes == {"full"}
        done = run(["status"], tmp_path, env)
        assert "FAILED wallet_matches_ledger (ERROR)" in done.stdout and done.returncode == 1
    finally:  # Dagster's storage ran in the embedded server (no DAGSTER_HOME): stop it
        stopped = run(["embedded", "stop"], tmp_path, env)
        stop_embedded_postgres(tmp_path / ".d1_migration")  # in case the command did not
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def test_quarantine_keeps_session_tokens_hashed(tmp_path, pg_url, monkeypatch, capsys):
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=10, seed=3)
    token = "raw-session-token-5f2a9c"
    mutate(
        source,
        [
            f"UPDATE sessions SET sessionToken = '{token}', expires = 'soon' "
            "WHERE rowid = (SELECT min(rowid) FROM sessions)"
        ],
    )
    summary = materialize_all(
        D1Source(path=str(source)),
        PostgresTarget(url=pg_url),
        sync=SyncSettings(state_dir=str(tmp_path / "sync")),
    )
    assert summary.success, summary.failure
    monkeypatch.setenv("D1_MIGRATION_TARGET_URL", pg_url)
    monkeypatch.chdir(tmp_path)
    export = tmp_path / "sessions.csv"
    assert cli.main(["quarantine", "--table", "sessions", "--csv", str(export)]) == 1
    out = capsys.readouterr().out
    assert "bad_datetime" in out and "'soon'" in out
    text = out + export.read_text()
    assert token not in text
    assert hashlib.sha256(token.encode()).hexdigest() in export.read_text()


def test_report_asset_shows_the_report_in_the_ui(tmp_path, pg_url):
    """migration_report, downstream of every table: Markdown (charts inline) and the file."""
    source = tmp_path / "d1.sqlite"
    sample = build_sample_db(source, users=10, seed=5)
    resources = {
        "d1": D1Source(path=str(source)),
        "postgres": PostgresTarget(url=pg_url, workdir=str(tmp_path / "work")),
        "sync": SyncSettings(state_dir=str(tmp_path / "sync")),
    }
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [*ASSETS, *ASSET_CHECKS, build_report_asset(SCHEMA)],
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
    assert result.success
    (report,) = [
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.materialization.asset_key.to_user_string() == REPORT_KEY
    ]
    markdown = report.metadata["report"].value
    assert "## Quarantine by table and reason" in markdown
    assert sample.rejects[0].reason_code in markdown
    assert uuid_for(sample.drifted_wallet_users[0]) in markdown
    assert all("data:image/png;base64," in report.metadata[t].value for t in ("Rows per table",))
    assert report.metadata["quarantined_rows"].value == len(sample.rejects)
    assert Path(report.metadata["html_file"].value) == (tmp_path / "work/report/index.html")
