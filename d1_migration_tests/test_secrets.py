"""Secrets: no password in any error, no raw session token in the shadow, private state files.

The URLs carry a recognisable password, spelt into every malformed position an operator may
produce; each error is rendered as Python and Dagster would show it (with its chained
tracebacks) and searched for every fragment of the password.
"""

import hashlib
import logging
import os
import socket
import sqlite3
import stat
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterInstance, serialize_value

from d1_migration.defs.dagster_storage import pooled_instance
from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.runner import materialize_all
from d1_migration.source import export
from d1_migration.source.d1_api import copy_database
from d1_migration.source.snapshot import SqliteSource
from d1_migration.spec.model import Schema
from d1_migration.spec.tables import SCHEMA
from d1_migration.sync.shadow import Shadow
from d1_migration.target.connection import TargetError
from d1_migration_tests.helpers import assert_like_fresh_migration, mutate, new_d1, sync
from d1_migration_tests.test_d1_api import api_for, fake_d1
from d1_migration_tests.wrangler import write_export

HEAD, TAIL = "Hunter2x", "s3cretTail"  # the password is HEAD + separator + TAIL
PASSWORD = f"{HEAD}{TAIL}"
DIGITS = ("86753091", "31415926")  # a password of digits: libpq takes the first part as a port

MALFORMED = {
    "misspelt scheme": f"postgresq://app:{PASSWORD}@127.0.0.1:5432/app",
    "no scheme": f"app:{PASSWORD}@127.0.0.1:5432/app",
    "unescaped @": f"postgresql://app:{HEAD}@{TAIL}@127.0.0.1:5432/app",
    "unescaped /": f"postgresql://app:{HEAD}/{TAIL}@127.0.0.1:5432/app",
    "unescaped / in digits": f"postgresql://app:{DIGITS[0]}/{DIGITS[1]}@127.0.0.1:5432/app",
    "bad percent-encoding": f"postgresql://app:{PASSWORD}%zz@127.0.0.1:5432/app",
    "unescaped space": f"postgresql://app:{HEAD} {TAIL}@127.0.0.1:5432/app",
    "unclosed IPv6 host": f"postgresql://app:{PASSWORD}@[::1/app",
    "keywords without =": f"host=127.0.0.1 password={HEAD} {TAIL}",
}


def assert_no_secret(text: str, fragments: tuple[str, ...] = (HEAD, TAIL)) -> None:
    for fragment in fragments:
        assert fragment not in text


def rendered(error: BaseException) -> str:
    """The error as a traceback shows it, chained exceptions included."""
    return "".join(traceback.format_exception(error))


@pytest.fixture
def tiny_d1(tmp_path: Path) -> Path:
    return new_d1(tmp_path / "d1.sqlite", ["INSERT INTO users (id, email) VALUES ('u1', 'a@x')"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("url", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_target_url_is_refused_without_its_text(url):
    target = PostgresTarget(url=url)
    for use in (target.describe, lambda: target.connect().__enter__()):
        with pytest.raises(TargetError, match="malformed") as error:
            use()
        assert_no_secret(rendered(error.value), (HEAD, TAIL, *DIGITS))


def test_connect_errors_name_host_port_and_database_only(pg_url):
    database = psycopg.conninfo.conninfo_to_dict(pg_url)
    host, port = database["host"], database.get("port", "5432")
    refused = free_port()
    cases = {
        f"postgresql://app:{PASSWORD}@127.0.0.1:{refused}/app": (
            f"host=127.0.0.1 port={refused} dbname=app",
            "refused",
        ),
        f"postgresql://postgres:{PASSWORD}@{host}:{port}/no_such_db": (
            f"host={host} port={port} dbname=no_such_db",
            'database "no_such_db" does not exist',
        ),
        # A password pasted as the user name too: the server's reason quotes the role.
        f"postgresql://{PASSWORD}:{PASSWORD}@{host}:{port}/app": (
            f"host={host} port={port} dbname=app",
            'role "***" does not exist',
        ),
    }
    for url, (shown, reason) in cases.items():
        with pytest.raises(TargetError) as error, PostgresTarget(url=url).connect():
            pass
        assert shown in str(error.value) and reason in str(error.value)
        assert_no_secret(rendered(error.value))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (MALFORMED["unescaped @"], "URL is malformed"),
        (MALFORMED["bad percent-encoding"], "URL is malformed"),
        ("refused", "Cannot connect to the target (host=127.0.0.1 port="),
    ],
    ids=["unescaped @", "bad percent-encoding", "refused"],
)
def test_a_dagster_run_with_a_bad_target_url_shows_no_password(
    tmp_path, tiny_d1, url, shown, capfd, caplog
):
    if url == "refused":
        url = f"postgresql://app:{PASSWORD}@127.0.0.1:{free_port()}/app"
    caplog.set_level(logging.DEBUG)
    with DagsterInstance.ephemeral() as instance:
        summary = materialize_all(
            D1Source(path=str(tiny_d1), copy_dir=str(tmp_path / "copies")),
            PostgresTarget(url=url),
            instance,
            SyncSettings(state_dir=str(tmp_path / "sync")),
        )
        runs = instance.get_runs()
        recorded = [serialize_value(run) for run in runs] + [
            serialize_value(entry) for run in runs for entry in instance.all_logs(run.run_id)
        ]
    assert not summary.success and len(runs) == 1
    assert shown in "".join(recorded)  # the step failure says what is wrong
    output = capfd.readouterr()
    for text in (summary.failure, *recorded, output.out, output.err, caplog.text):
        assert_no_secret(text)


@pytest.mark.parametrize("misplaced", ["@", "/"])
def test_a_dagster_storage_url_with_a_stray_at_is_refused_before_any_connection(
    tmp_path, misplaced, caplog
):
    """dagster-postgres would log its connection retries, naming the host: the password's
    tail, when an unescaped '@' made it part of the host."""
    caplog.set_level(logging.DEBUG)
    url = f"postgresql://app:{HEAD}{misplaced}{TAIL}@127.0.0.1:5432/dagster"
    with pytest.raises(TargetError, match="DAGSTER_PG_URL is malformed") as error:
        pooled_instance(tmp_path / "home", url)
    for text in (rendered(error.value), caplog.text):
        assert_no_secret(text)


TOKEN, NEW_TOKEN = "raw-session-token-0f3b9a", "raw-session-token-77c1de"
AUTH = Schema(SCHEMA.enums, (SCHEMA.table("users"), SCHEMA.table("sessions")))


def shadow_bytes(shadow: Path) -> bytes:
    return b"".join(p.read_bytes() for p in shadow.parent.glob(f"{shadow.name}*"))


def test_the_shadow_keeps_only_a_digest_of_session_tokens_and_sees_them_change(
    tmp_path, new_database
):
    source = new_d1(
        tmp_path / "d1.sqlite",
        [
            "INSERT INTO users (id, email) VALUES ('u1', 'a@x')",
            "INSERT INTO sessions (id, sessionToken, userId, expires) "
            f"VALUES ('s1', '{TOKEN}', 'u1', '2026-03-01 10:00:00')",
            "INSERT INTO sessions (id, sessionToken, userId, expires) "
            "VALUES ('s2', 'other-token', 'u1', '2026-03-01 10:00:00')",
            "INSERT INTO sessions (id, sessionToken, userId, expires) "  # not UTF-8
            "VALUES ('s3', CAST(X'74ff6f' AS TEXT), 'u1', '2026-03-01 10:00:00')",
        ],
    )
    synced, shadow = new_database(), tmp_path / "sync" / "shadow.sqlite"
    assert sync(synced, source, shadow, incremental=True, schema=AUTH)["sessions"].mode == "full"
    assert TOKEN.encode() not in shadow_bytes(shadow)

    mutate(source, [f"UPDATE sessions SET sessionToken = '{NEW_TOKEN}' WHERE id = 's1'"])
    again = sync(synced, source, shadow, incremental=True, schema=AUTH)["sessions"]
    assert again.mode == "incremental" and again.updated == 1 and again.considered == 1
    assert NEW_TOKEN.encode() not in shadow_bytes(shadow)
    with psycopg.connect(synced) as conn:
        stored = conn.execute(
            "SELECT token_hash FROM sessions WHERE token_hash = %s",
            [hashlib.sha256(NEW_TOKEN.encode()).digest()],
        ).fetchall()
    assert len(stored) == 1
    assert_like_fresh_migration(synced, source, new_database(), schema=AUTH)

    # The same bytes as a BLOB are another value to D1, so they are a change too.
    mutate(source, ["UPDATE sessions SET sessionToken = CAST(sessionToken AS BLOB)"])
    retyped = sync(synced, source, shadow, incremental=True, schema=AUTH)["sessions"]
    assert retyped.considered == 3
    assert_like_fresh_migration(synced, source, new_database(), schema=AUTH)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """A umask that would leave new files 0644 and directories 0755."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def wal_backup(tmp_path: Path, copies: Path) -> Path:
    database = new_d1(tmp_path / "wal.sqlite", [])
    with sqlite3.connect(database) as d1:
        d1.execute("PRAGMA journal_mode = WAL")
    return D1Source(path=str(database), copy_dir=str(copies)).run_copy()["path"]


def replayed_export(tmp_path: Path, copies: Path) -> Path:
    export = tmp_path / "d1.sql"
    write_export(new_d1(tmp_path / "exported.sqlite", []), export)
    return D1Source(path=str(export), copy_dir=str(copies)).run_copy()["path"]


def live_copy(tmp_path: Path, copies: Path) -> Path:
    with fake_d1(new_d1(tmp_path / "live.sqlite", []), []) as server:
        copy_database(api_for(server), copies / "d1-db1.sqlite")
    return copies / "d1-db1.sqlite"


@pytest.mark.parametrize("make", [wal_backup, replayed_export, live_copy])
def test_copies_of_d1_are_private(tmp_path, usual_umask, make: Callable[[Path, Path], Path]):
    (tmp_path / "work").mkdir(mode=0o755)
    copies = tmp_path / "work" / "cache" / "copies"
    copy = make(tmp_path, copies)
    assert copy.parent == copies and mode(copy) == 0o600
    assert mode(copies) == mode(copies.parent) == 0o700
    assert mode(tmp_path / "work") == 0o755  # not the project's to narrow


def test_an_export_is_replayed_into_a_private_file(tmp_path, usual_umask, monkeypatch):
    modes_while_replaying = []

    def replay(export_path: Path, database: Path) -> int:
        modes_while_replaying.append(mode(database))
        return real_replay(export_path, database)

    real_replay = export.replay
    monkeypatch.setattr(export, "replay", replay)
    copy = replayed_export(tmp_path, tmp_path / "copies")
    assert modes_while_replaying == [0o600] and mode(copy) == 0o600

    copy.chmod(0o644)  # as an earlier version left its cache
    again = D1Source(path=str(tmp_path / "d1.sql"), copy_dir=str(tmp_path / "copies"))
    assert again.run_copy()["path"] == copy and mode(copy) == 0o600
    assert len(modes_while_replaying) == 1  # the cached replay was used


def test_the_shadow_and_its_log_files_are_private(tmp_path, tiny_d1, usual_umask):
    shadow_path = tmp_path / "state" / "sync" / "shadow.sqlite"
    with SqliteSource(tiny_d1).snapshot() as snapshot:
        shadow = Shadow(snapshot, shadow_path)
        shadow.replace_all(SCHEMA.table("users"), 1)
        shadow.commit()
        side_files = [shadow_path.with_name(f"shadow.sqlite{s}") for s in ("-wal", "-shm")]
        assert all(f.is_file() and mode(f) == 0o600 for f in side_files)
    assert mode(shadow_path) == 0o600
    assert mode(shadow_path.parent) == mode(shadow_path.parent.parent) == 0o700

    shadow_path.chmod(0o644)  # as an earlier version left it
    with SqliteSource(tiny_d1).snapshot() as snapshot:
        Shadow(snapshot, shadow_path)
        assert mode(shadow_path) == 0o600
