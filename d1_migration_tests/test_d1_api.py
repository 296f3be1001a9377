"""The live D1 source against a local server speaking D1's REST API over a real SQLite file.

The fake answers as the real D1 does on every point the copy depends on: the database holds
D1's own ``_cf_KV`` table (first in ``sqlite_master``, ``WITHOUT ROWID``) and refuses to read
it; every refusal is D1's JSON error body (``{"errors": [{"code": 7500, "message": ...}]}``);
numbers travel as JSON float64 (integers beyond 2^53 rounded) and BLOBs as arrays of byte
values, in results and in bound parameters, so only a query that asks for exact forms gets
exact values; a result too large, or a statement too slow, is refused with D1's limit errors.
"""

import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.demo.sample_data import build_sample_db, sqlite_ddl
from d1_migration.runner import materialize_all
from d1_migration.source.d1_api import D1Api, D1ApiError, D1Database, copy_database
from d1_migration.spec.model import q
from d1_migration.spec.tables import SCHEMA
from d1_migration.verify import cutover
from d1_migration_tests.helpers import dump, sync

TOKEN = "test-token-5f2c"  # must never show up in errors or logs
PREFIX = "/client/v4/accounts/acc1/d1/database/db1"
CF_KV = "CREATE TABLE _cf_KV (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID"
# D1's documented errors for a statement that ran out of memory (a result too large) or time.
MEMORY_LIMIT = "D1 DB's isolate exceeded its memory limit and was reset."
CPU_LIMIT = "D1 DB exceeded its CPU time limit and was reset."
OVERLOADED = "D1 DB is overloaded. Too many requests queued."


def d1_shaped(path: Path) -> None:
    """Rewrite the SQLite file at ``path`` as D1 keeps a database: its own ``_cf_KV`` table
    first in ``sqlite_master`` (with a row in it), then every table with its rows and rowids,
    then the indexes."""
    with closing(sqlite3.connect(path)) as conn:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = '_cf_KV'").fetchone():
            return
    shaped = path.with_name(f"{path.name}.d1")
    shaped.unlink(missing_ok=True)
    with closing(sqlite3.connect(shaped, isolation_level=None)) as conn:
        conn.execute(CF_KV)
        conn.execute("INSERT INTO _cf_KV VALUES ('__d1_meta', X'01')")
        conn.execute("ATTACH ? AS app", [str(path)])
        conn.execute("BEGIN")
        objects = conn.execute(
            "SELECT type, name, sql FROM app.sqlite_master WHERE sql IS NOT NULL "
            "AND name NOT LIKE 'sqlite_%' ORDER BY type != 'table', rowid"
        ).fetchall()
        without_rowid = {r[1] for r in conn.execute("PRAGMA app.table_list") if r[4]}
        for kind, name, sql in objects:
            conn.execute(sql)
            if kind == "table":
                columns = ", ".join(
                    q(r[1]) for r in conn.execute(f"PRAGMA app.table_info({q(name)})")
                )
                keyed = columns if name in without_rowid else f"rowid, {columns}"
                conn.execute(
                    f"INSERT INTO main.{q(name)} ({keyed}) SELECT {keyed} FROM app.{q(name)}"
                )
        conn.execute("COMMIT")
    os.replace(shaped, path)


def as_json(value: object) -> object:
    """A SQLite value as D1's JSON carries it: numbers as JavaScript's float64 (written as JS
    writes them, so 3.0 is ``3`` and 2^53 + 1 is ``9007199254740992``), BLOBs as arrays of
    byte values."""
    if isinstance(value, bytes):
        return list(value)
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number):
            return None  # as JSON.stringify writes Infinity
        return int(number) if number.is_integer() and abs(number) < 1e21 else number
    return value


class FakeD1(ThreadingHTTPServer):
    """POST .../raw runs SQL on the file; GET .../time_travel/bookmark gives a bookmark.

    ``refused`` tables (D1's ``_cf_KV``) are read-protected by SQLite's authorizer, as D1
    protects its own; ``max_result_bytes`` is D1's result size cap, answered with D1's memory
    limit error and ``limit_status``. ``faults`` is a script consumed one request at a time:
    '429', '503' (D1 overloaded), 'slow' (longer than the client's timeout), 'short' (half a
    page, as a result size cap would), 'cpu' (D1's CPU time limit error), 'echo' (a proxy's 502
    that echoes the request headers), or 'ok'. ``refusals`` lists every D1 error answered, with
    the request it answered."""

    def __init__(self, database: Path, faults: list[str]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        d1_shaped(database)
        self.database, self.faults, self.requests = database, faults, 0
        self.refused = {"_cf_KV"}
        self.max_result_bytes = 10**9
        self.limit_status = 400
        self.refusals: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def next_fault(self) -> str:
        with self.lock:
            self.requests += 1
            return self.faults.pop(0) if self.faults else "ok"


class Handler(BaseHTTPRequestHandler):
    server: FakeD1

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _reply(self, status: int, body: dict | bytes, headers: dict | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: int, message: str, headers: dict | None = None) -> None:
        """Cloudflare's error envelope, as D1's API answers every refusal."""
        with self.server.lock:
            self.server.refusals.append((message, self.body))
        body = {"result": None, "success": False, "errors": [{"code": code, "message": message}]}
        self._reply(status, {**body, "messages": []}, headers)

    def _guard(self) -> str | None:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._error(403, 10000, "Authentication error")
            return None
        fault = self.server.next_fault()
        if fault == "429":
            self._error(
                429,
                971,
                "Please wait and consider throttling your request speed",
                {"Retry-After": "0"},
            )
            return None
        if fault == "503":
            self._error(503, 7500, OVERLOADED)
            return None
        if fault == "cpu":
            self._error(self.server.limit_status, 7500, CPU_LIMIT)
            return None
        if fault == "echo":
            self._reply(502, f"bad gateway for request with {self.headers}".encode())
            return None
        if fault == "slow":
            time.sleep(0.6)
        return fault

    def do_GET(self) -> None:
        self.body = b""
        if self._guard() is not None and self.path == f"{PREFIX}/time_travel/bookmark":
            self._reply(200, {"success": True, "result": {"bookmark": "0000002a-bookmark"}})

    def do_POST(self) -> None:
        self.body = self.rfile.read(int(self.headers["Content-Length"]))
        fault = self._guard()
        if fault is None or self.path != f"{PREFIX}/raw":
            return
        body = json.loads(self.body)
        params = [as_json(p) for p in body.get("params", [])]  # bound as D1 reads them: JSON
        with closing(sqlite3.connect(f"file:{self.server.database}?mode=ro", uri=True)) as d1:
            refused = self.server.refused
            d1.set_authorizer(
                lambda action, table, *_: (
                    sqlite3.SQLITE_DENY
                    if action == sqlite3.SQLITE_READ and table in refused
                    else sqlite3.SQLITE_OK
                )
            )
            try:
                cursor = d1.execute(body["sql"], params)
                rows = [[as_json(v) for v in r] for r in cursor.fetchall()]
            except sqlite3.Error as error:  # D1's form: SQLite's message and its code name
                self._error(400, 7500, f"{error}: {error.sqlite_errorname}")
                return
            columns = [d[0] for d in cursor.description or []]
        if len(json.dumps(rows)) > self.server.max_result_bytes:
            self._error(self.server.limit_status, 7500, MEMORY_LIMIT)
            return
        if fault == "short" and len(rows) > 1:
            rows = rows[: len(rows) // 2]
        result = {"results": {"columns": columns, "rows": rows}, "success": True, "meta": {}}
        self._reply(200, {"success": True, "errors": [], "messages": [], "result": [result]})


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


def base_url(server: FakeD1) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/client/v4"


def api_for(server: FakeD1, token: str = TOKEN, **kwargs) -> D1Api:
    return D1Api(D1Database("acc1", "db1"), token, base_url(server), backoff=0.01, **kwargs)


def exact_rows(path: Path) -> dict[str, list]:
    """Every app table's rows with their rowids, each value with its SQLite storage class."""
    with closing(sqlite3.connect(path)) as d1:
        return {
            t.name: [
                [(type(v).__name__, repr(v)) for v in row]
                for row in d1.execute(f"SELECT rowid, * FROM {q(t.name)} ORDER BY rowid")
            ]
            for t in SCHEMA.tables
        }


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


def test_the_copy_is_value_for_value_though_d1_sends_numbers_as_float64(tmp_path):
    database = tmp_path / "d1.sqlite"
    sample_for_json(database, users=12, seed=11)
    with sqlite3.connect(database) as d1:  # what float64 JSON and byte arrays cannot carry
        d1.execute(
            "INSERT INTO users (rowid, id, email, name) "
            "VALUES (9007199254740993, 'u-big-1', 'big1@x', 'a'), "
            "(9007199254740995, 'u-big-2', 'big2@x', X'00ff7f'), "
            "(9223372036854775807, 'u-max', 'max@x', 3.0)"
        )
        d1.execute("UPDATE accounts SET expires_at = 9223372036854775807 WHERE rowid = 1")
        d1.execute("UPDATE accounts SET expires_at = 0.1 WHERE rowid = 2")
        d1.execute("UPDATE accounts SET expires_at = -0.0 WHERE rowid = 3")
    with fake_d1(database, []) as server:
        copy_database(api_for(server), tmp_path / "copy.sqlite", page_rows=7)
    assert exact_rows(tmp_path / "copy.sqlite") == exact_rows(database)


def test_d1_refusals_carry_d1s_code_and_message_and_pages_do_not_shrink(tmp_path, caplog):
    database = tmp_path / "d1.sqlite"
    sample_for_json(database, users=12, seed=5)
    caplog.set_level(logging.DEBUG)
    with fake_d1(database, []) as server:
        with pytest.raises(D1ApiError) as refused:
            api_for(server).query("SELECT key, value FROM _cf_KV")
        server.refused.add("habits")  # as D1 refuses _cf_KV: no smaller page can pass
        server.refusals.clear()
        with pytest.raises(D1ApiError) as copying:
            copy_database(api_for(server), tmp_path / "copy.sqlite", page_rows=1000)
        refusals = server.refusals
    assert "access to _cf_KV.key is prohibited: SQLITE_AUTH [code: 7500]" in str(refused.value)
    message = str(copying.value)
    assert "habits" in message and "prohibited: SQLITE_AUTH [code: 7500]" in message
    assert len(refusals) == 1  # asked once, refused once: no halving down to one row
    assert TOKEN not in message and TOKEN not in caplog.text


@pytest.mark.parametrize("status", [400, 500])
def test_pages_shrink_when_d1_refuses_them_as_too_large_or_too_slow(tmp_path, new_database, status):
    database = tmp_path / "d1.sqlite"
    sample_for_json(database, users=12, seed=5)
    with fake_d1(database, ["ok", "ok", "ok", "cpu"]) as server:
        server.max_result_bytes, server.limit_status = 6000, status
        copy_database(api_for(server), tmp_path / "copy.sqlite", page_rows=1000)
        refusals = server.refusals
    assert {MEMORY_LIMIT, CPU_LIMIT} == {message for message, _ in refusals}  # both were met
    assert len(set(refusals)) == len(refusals)  # a page refused is asked smaller, not again
    assert exact_rows(tmp_path / "copy.sqlite") == exact_rows(database)
    from_file, from_api = new_database(), new_database()
    sync(from_file, database, None, incremental=False)
    sync(from_api, tmp_path / "copy.sqlite", None, incremental=False)
    assert dump(from_api) == dump(from_file)


def test_retries_run_out_with_d1s_error_and_no_token(tmp_path, caplog):
    database = tmp_path / "d1.sqlite"
    sqlite3.connect(database).close()
    caplog.set_level(logging.DEBUG)
    with fake_d1(database, ["503"] * 10) as server, pytest.raises(D1ApiError) as error:
        api_for(server, attempts=4).bookmark()
    message = str(error.value)
    assert "gave up after 4 attempts, last: HTTP 503" in message
    assert f"{OVERLOADED} [code: 7500]" in message
    assert TOKEN not in message and TOKEN not in caplog.text
    assert server.requests == 4


def test_no_token_in_errors_even_when_a_response_echoes_it(tmp_path, caplog):
    database = tmp_path / "d1.sqlite"
    sqlite3.connect(database).close()
    caplog.set_level(logging.DEBUG)
    with fake_d1(database, ["echo"] * 3) as server:
        with pytest.raises(D1ApiError) as echoed:
            api_for(server, attempts=3).bookmark()
        with pytest.raises(D1ApiError) as denied:
            api_for(server, token="wrong-token-77").bookmark()
    assert "HTTP 502" in str(echoed.value) and "bad gateway" in str(echoed.value)
    assert "HTTP 403" in str(denied.value) and "Authentication error [code: 10000]" in str(
        denied.value
    )
    assert "wrong-token-77" not in str(denied.value)
    assert TOKEN not in str(echoed.value) and TOKEN not in caplog.text


def test_dagster_migrates_from_a_d1_url(tmp_path, pg_url, monkeypatch):
    database = tmp_path / "d1.sqlite"
    sample_for_json(database, users=12, seed=3)
    with sqlite3.connect(database) as d1:  # more tables no reader may read
        d1.execute("CREATE TABLE d1_migrations (id INTEGER PRIMARY KEY, name TEXT)")
        d1.execute("INSERT INTO d1_migrations (name) VALUES ('0100_master_reset.sql')")
        d1.execute("CREATE TABLE legacy_audit (id TEXT PRIMARY KEY, what TEXT) WITHOUT ROWID")
        d1.execute("INSERT INTO legacy_audit VALUES ('a1', 'login')")
    with fake_d1(database, ["429", "short"]) as server:
        server.refused.add("legacy_audit")
        source = D1Source(
            path="d1://acc1/db1",
            api_token=TOKEN,
            api_base_url=base_url(server),
            copy_dir=str(tmp_path / "copies"),
            skip_tables=["legacy_*"],
        )
        summary = materialize_all(
            source, PostgresTarget(url=pg_url), sync=SyncSettings(state_dir=str(tmp_path / "sync"))
        )
        requests = server.requests
    assert summary.success, summary.failure
    for metadata in summary.tables.values():
        assert metadata["d1_bookmark"] == "0000002a-bookmark"
        assert metadata["d1_internal_tables_skipped"] == ["_cf_KV", "d1_migrations", "legacy_audit"]
    # copied once for the whole run, not once per table: 1 bookmark + schema + 66 tables' pages
    assert requests < 66 * 3


def test_a_run_d1_refuses_fails_saying_what_d1_said(tmp_path, pg_url):
    database = tmp_path / "d1.sqlite"
    sample_for_json(database, users=10, seed=2)
    with fake_d1(database, []) as server:
        server.refused.add("habits")
        source = D1Source(
            path="d1://acc1/db1",
            api_token=TOKEN,
            api_base_url=base_url(server),
            copy_dir=str(tmp_path / "copies"),
        )
        summary = materialize_all(
            source, PostgresTarget(url=pg_url), sync=SyncSettings(state_dir=str(tmp_path / "sync"))
        )
    assert not summary.success and not summary.tables
    assert "habits" in summary.failure
    assert "prohibited: SQLITE_AUTH [code: 7500]" in summary.failure
    assert TOKEN not in summary.failure


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
            api_base_url=base_url(server),
            copy_dir=str(tmp_path / "copies"),
        )
        verdict = cutover.cutover_check(
            source, PostgresTarget(url=pg_url), SyncSettings(state_dir=str(tmp_path / "s")), SCHEMA
        )
    assert not verdict.ready
    assert any("still changing" in r and "users (1 rows)" in r for r in verdict.reasons)
