"""The live D1 source against a local server speaking D1's REST API over a real SQLite file."""

import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from d1_migration import cutover
from d1_migration.d1_api import D1Api, D1ApiError, D1Database, copy_database
from d1_migration.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.runner import materialize_all
from d1_migration.sample_data import build_sample_db, sqlite_ddl
from d1_migration.tables import SCHEMA
from d1_migration_tests.helpers import dump, sync

TOKEN = "test-token-5f2c"  # must never show up in errors or logs
PREFIX = "/client/v4/accounts/acc1/d1/database/db1"


class FakeD1(ThreadingHTTPServer):
    """POST .../raw runs SQL on the file; GET .../time_travel/bookmark gives a bookmark.

    ``faults`` is a script consumed one request at a time: '429', '503', 'slow' (longer than
    the client's timeout), 'short' (half a page, as a result size cap would), or 'ok'."""

    def __init__(self, database: Path, faults: list[str]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.database, self.faults, self.requests = database, faults, 0
        self.max_page = 10**9
        self.lock = threading.Lock()

    def next_fault(self) -> str:
        with self.lock:
            self.requests += 1
            return self.faults.pop(0) if self.faults else "ok"


class Handler(BaseHTTPRequestHandler):
    server: FakeD1

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _reply(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _guard(self) -> str | None:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._reply(401, {"success": False, "errors": [{"message": "bad token"}]})
            return None
        fault = self.server.next_fault()
        if fault == "429":
            self._reply(429, {"success": False}, {"Retry-After": "0"})
            return None
        if fault == "503":
            self._reply(503, {"success": False})
            return None
        if fault == "slow":
            time.sleep(0.6)
        return fault

    def do_GET(self) -> None:
        if self._guard() is not None and self.path == f"{PREFIX}/time_travel/bookmark":
            self._reply(200, {"success": True, "result": {"bookmark": "0000002a-bookmark"}})

    def do_POST(self) -> None:
        fault = self._guard()
        if fault is None or self.path != f"{PREFIX}/raw":
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with sqlite3.connect(f"file:{self.server.database}?mode=ro", uri=True) as d1:
            cursor = d1.execute(body["sql"], body["params"])
            rows = [list(r) for r in cursor.fetchall()]
            columns = [d[0] for d in cursor.description or []]
        limit = re.search(r"LIMIT (\d+)", body["sql"])
        if limit and int(limit.group(1)) > self.server.max_page:  # D1's result size cap
            self._reply(413, {"success": False, "errors": [{"message": "result too large"}]})
            return
        if fault == "short" and len(rows) > 1:
            rows = rows[: len(rows) // 2]
        result = {"results": {"columns": columns, "rows": rows}, "success": True}
        self._reply(200, {"success": True, "errors": [], "result": [result]})


@contextmanager
def fake_d1(database: Path, faults: list[str]) -> Iterator[FakeD1]:
    server = FakeD1(database, faults)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def sample_for_json(path: Path, **kwargs) -> None:
    """A sample D1 without the text no JSON API can carry (bytes that are not UTF-8)."""
    build_sample_db(path, **kwargs)
    with sqlite3.connect(path) as d1:
        d1.execute("DELETE FROM ideas WHERE CAST(content AS BLOB) = X'66ff6f'")


def api_for(server: FakeD1, **kwargs) -> D1Api:
    base = f"http://127.0.0.1:{server.server_address[1]}/client/v4"
    return D1Api(D1Database("acc1", "db1"), TOKEN, base, backoff=0.01, **kwargs)


def test_live_d1_migrates_like_the_file_despite_faults(tmp_path, new_database):
    database = tmp_path / "d1.sqlite"
    sample_for_json(database, users=20, seed=7)
    with sqlite3.connect(database) as d1:  # exact values the JSON API must not round
        d1.execute("UPDATE accounts SET expires_at = 9007199254740993 WHERE rowid = 1")
    faults = ["429", "429", "429", "503", "ok", "slow", "short", "ok", "503", "short"] * 6
    with fake_d1(database, faults) as server:
        bookmark = copy_database(
            api_for(server, timeout=0.3), tmp_path / "copy.sqlite", page_rows=97
        )
    assert bookmark == "0000002a-bookmark"
    assert not faults  # every fault was met and survived

    from_file, from_api = new_database(), new_database()
    sync(from_file, database, None, incremental=False)
    sync(from_api, tmp_path / "copy.sqlite", None, incremental=False)
    assert dump(from_api) == dump(from_file)


def test_retries_run_out_with_a_clear_error_and_no_token(tmp_path, caplog):
    database = tmp_path / "d1.sqlite"
    sqlite3.connect(database).close()
    caplog.set_level(logging.DEBUG)
    with fake_d1(database, ["503"] * 10) as server, pytest.raises(D1ApiError) as error:
        api_for(server, attempts=4).bookmark()
    assert "gave up after 4 attempts, last: HTTP 503" in str(error.value)
    assert TOKEN not in str(error.value) and TOKEN not in caplog.text
    assert server.requests == 4


def test_dagster_migrates_from_a_d1_url(tmp_path, pg_url, monkeypatch):
    database = tmp_path / "d1.sqlite"
    sample_for_json(database, users=12, seed=3)
    with fake_d1(database, ["429", "short"]) as server:
        source = D1Source(
            path="d1://acc1/db1",
            api_token=TOKEN,
            api_base_url=f"http://127.0.0.1:{server.server_address[1]}/client/v4",
            copy_dir=str(tmp_path / "copies"),
        )
        summary = materialize_all(
            source, PostgresTarget(url=pg_url), sync=SyncSettings(state_dir=str(tmp_path / "sync"))
        )
        requests = server.requests
    assert summary.success
    assert all(m["d1_bookmark"] == "0000002a-bookmark" for m in summary.tables.values())
    # copied once for the whole run, not once per table: 1 bookmark + schema + 66 tables' pages
    assert requests < 66 * 3


def test_cutover_gate_sees_a_live_d1_still_being_written(tmp_path, pg_url, monkeypatch):
    database = tmp_path / "d1.sqlite"
    with sqlite3.connect(database) as d1:
        d1.executescript(sqlite_ddl(SCHEMA))
        d1.execute("INSERT INTO users (id, email) VALUES ('u1', 'a@x')")
    real_refresh = D1Source.refresh

    def app_still_writing(self):  # between the final sync and the quiet check, in live D1
        with sqlite3.connect(database) as d1:
            d1.execute("INSERT INTO users (id, email) VALUES ('u2', 'b@x')")
        real_refresh(self)

    monkeypatch.setattr(D1Source, "refresh", app_still_writing)
    with fake_d1(database, []) as server:
        source = D1Source(
            path="d1://acc1/db1",
            api_token=TOKEN,
            api_base_url=f"http://127.0.0.1:{server.server_address[1]}/client/v4",
            copy_dir=str(tmp_path / "copies"),
        )
        verdict = cutover.cutover_check(
            source, PostgresTarget(url=pg_url), SyncSettings(state_dir=str(tmp_path / "s")), SCHEMA
        )
    assert not verdict.ready
    assert any("still changing" in r and "users (1 rows)" in r for r in verdict.reasons)


def test_pages_shrink_when_d1_refuses_them_as_too_large(tmp_path, new_database):
    database = tmp_path / "d1.sqlite"
    sample_for_json(database, users=12, seed=5)
    with fake_d1(database, []) as server:
        server.max_page = 40
        copy_database(api_for(server), tmp_path / "copy.sqlite", page_rows=1000)
    from_file, from_api = new_database(), new_database()
    sync(from_file, database, None, incremental=False)
    sync(from_api, tmp_path / "copy.sqlite", None, incremental=False)
    assert dump(from_api) == dump(from_file)
