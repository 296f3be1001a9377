"""Live D1 over Cloudflare's REST API, copied into a local SQLite file that is then migrated.

Each table is read in keyset pages (``WHERE rowid > ? ORDER BY rowid LIMIT n``, never OFFSET)
through ``POST /accounts/{account}/d1/database/{database}/raw``. D1's JSON carries numbers as
float64 and BLOBs as arrays of bytes, so values are asked for in exact forms: every column as
its ``typeof()`` plus a text form (integers and rowids as text, so nothing beyond 2^53 is
rounded; BLOBs as ``hex()``), rebuilt into the same SQLite types locally. D1's own tables
(``_cf_KV``, which D1 refuses to read) are never read: source.skipped_table decides, for every
reader. Requests stay within D1's limits (one bound parameter, small statements, pages sized
by ``page_rows``); HTTP 429 (honouring Retry-After), 5xx and timeouts are retried with
exponential backoff and jitter; every failure says what D1 said (its error codes and
messages). The API token is sent only in the Authorization header: never logged, never in
errors, even when a response echoes it.
"""

import json
import logging
import random
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from d1_migration.private_files import private_dir, private_file
from d1_migration.source.snapshot import skipped_table
from d1_migration.spec.model import q

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.cloudflare.com/client/v4"

# D1's documented errors for a statement that ran out of memory (a result too large) or of
# time: the same read over fewer rows may pass. Any other refusal would only repeat.
LIMIT_ERRORS = (
    "exceeded its memory limit",
    "exceeded its CPU time limit",
    "storage operation exceeded timeout",
)


class D1ApiError(RuntimeError):
    """The API could not be read; the message never contains the token."""

    def __init__(self, message: str, too_big: bool = False) -> None:
        super().__init__(message)
        self.too_big = too_big  # refused as too large or too slow: a smaller page may pass


@dataclass(frozen=True)
class D1Database:
    account_id: str
    database_id: str

    @classmethod
    def parse(cls, url: str) -> "D1Database":
        """``d1://<account_id>/<database_id>``."""
        parts = url.removeprefix("d1://").strip("/").split("/")
        if not url.startswith("d1://") or len(parts) != 2 or not all(parts):
            raise ValueError(f"expected d1://<account_id>/<database_id>, got {url!r}")
        return cls(*parts)


class D1Api:
    def __init__(
        self,
        database: D1Database,
        token: str,
        base_url: str = DEFAULT_API_BASE,
        attempts: int = 8,
        timeout: float = 30.0,
        backoff: float = 0.5,
    ) -> None:
        self.database, self._token = database, token
        self.base = (
            f"{base_url.rstrip('/')}/accounts/{database.account_id}/d1/database/"
            f"{database.database_id}"
        )
        self.attempts, self.timeout, self.backoff = attempts, timeout, backoff

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(
                self.base + path,
                data=data,
                method=method,
                headers={
                    "Authorization": f"Bearer {self._token}",
                    "Content-Type": "application/json",
                },
            )
            try:
                status, payload, retry_after = self._send(request)
            except (TimeoutError, urllib.error.URLError, ConnectionError) as error:
                wait, problem, too_big = None, type(error).__name__, isinstance(error, TimeoutError)
            else:
                if status == 200 and isinstance(payload, dict) and payload.get("success"):
                    return payload["result"]
                said = self._said(payload)
                problem = f"HTTP {status}: {said}"
                too_big = any(limit in said for limit in LIMIT_ERRORS)
                if too_big or (status != 429 and status < 500):
                    raise D1ApiError(f"D1 API {path}: {problem}", too_big) from None
                wait = _seconds(retry_after) if status == 429 else None
            if attempt == self.attempts:
                raise D1ApiError(
                    f"D1 API {path}: gave up after {attempt} attempts, last: {problem}", too_big
                ) from None
            delay = wait if wait is not None else self.backoff * 2 ** (attempt - 1)
            delay *= 1 + random.random() / 2  # jitter, so retries of parallel runs spread out
            log.warning("D1 API %s: %s, retrying in %.1f s", path, problem, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _send(self, request: urllib.request.Request) -> tuple[int, object, str | None]:
        """Status, body (JSON when it is) and Retry-After of a response, error or not: D1
        explains its refusals in the body."""
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, raw, retry_after = response.status, response.read(), None
        except urllib.error.HTTPError as error:
            with error:
                status, raw = error.code, error.read()
                retry_after = error.headers.get("Retry-After")
        try:
            return status, json.loads(raw), retry_after
        except ValueError:
            return status, raw.decode(errors="replace"), retry_after

    def _said(self, payload: object) -> str:
        """What D1 said: each error's message and code (as wrangler shows them), or the start
        of a body that is not Cloudflare's JSON (a proxy's page); never the token, should a
        response echo it."""
        errors = payload.get("errors") if isinstance(payload, dict) else None
        if isinstance(errors, list) and errors:
            said = "; ".join(
                f"{e.get('message')} [code: {e.get('code')}]" if isinstance(e, dict) else str(e)
                for e in errors
            )
        else:
            said = str(payload)[:300] or "empty response"
        return said.replace(self._token, "[token]") if self._token else said

    def query(self, sql: str, params: list | None = None) -> tuple[list[str], list[list]]:
        result = self._request("POST", "/raw", {"sql": sql, "params": params or []})
        return result[0]["results"]["columns"], result[0]["results"]["rows"]

    def bookmark(self) -> str:
        """The Time Travel bookmark of the state about to be copied."""
        return self._request("GET", "/time_travel/bookmark")["bookmark"]


def _seconds(retry_after: str | None) -> float | None:
    try:
        return float(retry_after or "")
    except ValueError:
        return None


def _value(storage: str, text: str | None) -> object:
    if storage == "null":
        return None
    if storage == "integer":
        return int(text)
    if storage == "real":
        return float(text)
    if storage == "blob":
        return bytes.fromhex(text)
    return text


def pages(api: D1Api, select: str, source: str, page_rows: int) -> Iterator[list]:
    """Rows of ``SELECT rowid, <select> FROM <source>`` in keyset pages, the rowid as text (and
    bound as text) since D1's JSON numbers are float64. A page shorter than asked (a result
    size cap) is not the end: only an empty page is. A page D1 refuses as too large or too
    slow is asked again half as big, down to one row; any other refusal ends the copy."""
    last = None
    while True:
        where = "" if last is None else "WHERE rowid > CAST(? AS INTEGER)"
        try:
            _, rows = api.query(
                f"SELECT CAST(rowid AS TEXT), {select} FROM {source} {where} "
                f"ORDER BY rowid LIMIT {page_rows}",
                [] if last is None else [last],
            )
        except D1ApiError as error:
            if not error.too_big or page_rows == 1:
                raise D1ApiError(f"reading {source}: {error}") from None
            page_rows //= 2
            log.warning("D1 API: %s; asking %d rows per page instead", error, page_rows)
            continue
        if not rows:
            return
        yield from rows
        last = rows[-1][0]


def copy_database(
    api: D1Api, target: Path, page_rows: int = 500, skip: tuple[str, ...] = ()
) -> str:
    """Copy every table (schema, rows, indexes) into a new SQLite file; returns the Time Travel
    bookmark of the state copied. Tables no reader migrates (D1's own, and ``skip``) are created
    without rows: D1 refuses reads of ``_cf_KV``, yet the copy lists every table D1 has, so
    that drift names them as skipped exactly as it does for a file."""
    bookmark = api.bookmark()
    objects = list(pages(api, "type, name, sql", "sqlite_master", page_rows))
    private_dir(target.parent)
    target.unlink(missing_ok=True)
    conn = sqlite3.connect(private_file(target), isolation_level=None)
    conn.execute("BEGIN")
    empty: list[str] = []
    try:
        for kind in ("table", "index"):  # tables first: indexes refer to them
            for _, object_kind, name, sql in objects:
                # SQLite makes its own sqlite_* objects (sqlite_sequence, sqlite_stat1)
                if object_kind != kind or sql is None or name.startswith("sqlite_"):
                    continue
                conn.execute(sql)
                if kind != "table":
                    continue
                if skipped_table(name, skip):
                    empty.append(name)
                else:
                    _copy_table(api, conn, name, page_rows)
        conn.execute("COMMIT")
    finally:
        conn.close()
    if empty:
        log.info("D1 tables copied without their rows (not migrated): %s", ", ".join(empty))
    return bookmark


def _copy_table(api: D1Api, conn: sqlite3.Connection, table: str, page_rows: int) -> None:
    columns = [r[1] for r in conn.execute(f"PRAGMA table_info({q(table)})")]
    typed = ", ".join(
        f"typeof({q(c)}), CASE typeof({q(c)}) WHEN 'blob' THEN hex({q(c)}) "
        f"WHEN 'integer' THEN CAST({q(c)} AS TEXT) WHEN 'real' THEN printf('%!.17g', {q(c)}) "
        f"ELSE {q(c)} END"
        for c in columns
    )
    insert = (
        f"INSERT INTO {q(table)} (rowid, {', '.join(map(q, columns))}) "
        f"VALUES ({', '.join('?' * (len(columns) + 1))})"
    )
    for row in pages(api, typed, q(table), page_rows):
        pairs = row[1:]
        values = [_value(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2)]
        conn.execute(insert, [int(row[0]), *values])
