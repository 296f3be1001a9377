"""The pooled Dagster storage: the one module built on Dagster internals, guarded here.

dagster_storage.py relies on names dagster-postgres does not document (``from_config_value``
with ``dagster._serdes.ConfigurableClassData``, each storage part's ``optimize_for_webserver``,
and the event log's SCHEMA_QUESTIONS). A Dagster upgrade that renames them fails the import or
the instance's creation here; one that keeps the names but stops pooling fails the check that
the same server sessions serve one run after another, and one that asks its schema another way
fails the check that each question is asked once.
"""

import socket
import uuid
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from dagster import AssetCheckResult, DagsterInstance, asset, asset_check, materialize
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster_postgres.event_log import PostgresEventLogStorage
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from d1_migration.defs import dagster_storage
from d1_migration.defs.dagster_storage import (
    SCHEMA_QUESTIONS,
    STORAGE_URL_ENV,
    pooled_instance,
    remember_schema,
)
from d1_migration.target.embedded import embedded_postgres_url, stop_embedded_postgres
from d1_migration_tests.helpers import as_url

PROJECT = Path(__file__).resolve().parents[1]


@asset
def trivial() -> int:
    return 1


def _sessions(admin: psycopg.Connection, database: str) -> set[int]:
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        [database],
    ).fetchall()
    return {pid for (pid,) in rows}


def test_runs_are_recorded_through_connections_held_open(tmp_path, new_database, pg_admin_url):
    url = new_database()
    database = conninfo_to_dict(url)["dbname"]
    instance = pooled_instance(tmp_path / "home", as_url(url))
    try:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            assert materialize([trivial], instance=instance).success
            held = _sessions(admin, database)
            for _ in range(3):
                assert materialize([trivial], instance=instance).success
            # a server session that served the first run still serves after three more
            assert held & _sessions(admin, database), "the storage is not pooled"
        assert len(instance.get_runs()) == 4  # and the storage works through the public API
    finally:
        instance.dispose()


@asset
def another() -> int:
    return 2


@asset_check(asset=trivial)
def trivial_is_one() -> AssetCheckResult:
    return AssetCheckResult(passed=True)


def test_the_event_log_asks_the_catalog_about_its_schema_once(tmp_path, new_database, monkeypatch):
    """Each materialization and check evaluation made the event log ask the catalog whether a
    table and a column exist (remember_schema); now each question is asked once."""
    asked: Counter = Counter()
    for cls, name in zip(
        (PostgresEventLogStorage, SqlEventLogStorage), SCHEMA_QUESTIONS, strict=True
    ):
        real = getattr(cls, name)

        def counting(self, *args, _real=real, _name=name):
            asked[(_name, *(a for a in args if isinstance(a, str)))] += 1
            return _real(self, *args)

        monkeypatch.setattr(cls, name, counting)
    instance = pooled_instance(tmp_path / "home", as_url(new_database()))
    try:
        for _ in range(3):
            assert materialize([trivial, another, trivial_is_one], instance=instance).success
    finally:
        instance.dispose()
    assert {question[0] for question in asked} == set(SCHEMA_QUESTIONS), asked
    assert set(asked.values()) == {1}, asked


def test_a_schema_question_answered_no_is_asked_again():
    class Events:
        def __init__(self):
            self.answers = {"asset_event_tags": [False, True]}
            self.asked = 0

        def has_table(self, name: str) -> bool:
            self.asked += 1
            answers = self.answers[name]
            return answers.pop(0) if len(answers) > 1 else answers[0]

        def _has_asset_key_col_on_connection(self, conn, name: str) -> bool:
            return True

    events = Events()
    remember_schema(events)
    assert [events.has_table("asset_event_tags") for _ in range(4)] == [False, True, True, True]
    assert events.asked == 2  # the no, then the yes, remembered after


@pytest.fixture
def unsaid(monkeypatch):
    """No DAGSTER_PG_URL, and the storage's one line not yet said in this process."""
    monkeypatch.delenv(STORAGE_URL_ENV, raising=False)
    monkeypatch.setenv(dagster_storage._SAID_ENV, "")  # unset again after the test


def project_instance(home: Path) -> DagsterInstance:
    """The instance `dagster dev` (or `dagster asset materialize`) builds in the project
    directory when DAGSTER_HOME is unset: a temporary home, the project's dagster.yaml."""
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home), config_dir=str(PROJECT)))


def said(capfd, caplog) -> str:
    return capfd.readouterr().err + caplog.text


def test_with_no_variable_the_storage_is_the_embedded_server_and_says_so_once(
    tmp_path, monkeypatch, unsaid, capfd, caplog
):
    monkeypatch.chdir(tmp_path)  # the embedded server under ./.d1_migration, as in a fresh clone
    # As root, pgserver runs the server as another user, who must reach .d1_migration/pgdata
    # through pytest's 0700 directory, as through a checkout's usual 0755 ones.
    tmp_path.chmod(0o755)
    try:
        with project_instance(tmp_path / "home") as instance:
            assert materialize([trivial], instance=instance).success
            run_id = instance.get_runs()[0].run_id
        first = said(capfd, caplog)
        assert first.count(f"{STORAGE_URL_ENV} is not set") == 1, first
        assert str((tmp_path / ".d1_migration" / "pgdata").resolve()) in first
        # recorded in database dagster of that server, where the demo records its runs
        url = embedded_postgres_url(tmp_path / ".d1_migration", "dagster")
        with psycopg.connect(url) as conn:
            found = conn.execute("SELECT count(*) FROM runs WHERE run_id = %s", [run_id])
            assert found.fetchone() == (1,)
        with project_instance(tmp_path / "home2") as again:  # a process dagster dev started
            assert again.has_run(run_id)
        assert STORAGE_URL_ENV not in said(capfd, caplog)  # said once per command
    finally:
        stop_embedded_postgres(tmp_path / ".d1_migration")


def test_a_missing_database_named_by_dagster_pg_url_is_created(
    tmp_path, monkeypatch, unsaid, pg_admin_url, capfd, caplog
):
    name = f"d1mt_storage_{uuid.uuid4().hex[:8]}"
    url = as_url(make_conninfo(pg_admin_url, dbname=name))
    monkeypatch.setenv(STORAGE_URL_ENV, url)
    try:
        with project_instance(tmp_path / "home") as instance:
            assert materialize([trivial], instance=instance).success
            assert len(instance.get_runs()) == 1
        assert said(capfd, caplog).count(f"Created database {name} for Dagster's storage") == 1
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("server", ["unreachable", "unknown role"])
def test_an_unusable_storage_server_stops_with_one_line_without_the_password(
    tmp_path, monkeypatch, unsaid, pg_admin_url, server
):
    params = conninfo_to_dict(pg_admin_url)
    host, port = params["host"], params.get("port", "5432")
    if server == "unreachable":
        host, port = "127.0.0.1", closed_port()
    password = "s3cret-Pw-9f2"
    user = f"norole_{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv(STORAGE_URL_ENV, f"postgresql://{user}:{password}@{host}:{port}/dagster")
    with pytest.raises(SystemExit) as stopped:
        project_instance(tmp_path / "home").run_storage  # noqa: B018 (the storage is lazy)
    message = str(stopped.value.code)
    assert message.startswith(
        f"Cannot use Dagster's storage host={host} port={port} dbname=dagster"
    )
    assert f"({STORAGE_URL_ENV})" in message and "\n" not in message
    assert password not in message
