"""Secrets: no password in any error, no raw session token in the shadow, private state files.

The URLs carry a recognisable password, spelt into every malformed position an operator may
produce; each error is rendered as Python and Dagster would show it (with its chained
tracebacks) and searched for every fragment of the password.
"""

import logging
import socket
import traceback
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterInstance, serialize_value

from d1_migration.resources import D1Source, PostgresTarget, SyncSettings, TargetError
from d1_migration.runner import materialize_all
from d1_migration_tests.helpers import new_d1

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
