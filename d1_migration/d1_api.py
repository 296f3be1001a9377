"""Live D1 over Cloudflare's REST API, copied into a local SQLite file that is then migrated.

Each table is read in keyset pages (``WHERE rowid > ? ORDER BY rowid LIMIT n``, never OFFSET)
through ``POST /accounts/{account}/d1/database/{database}/raw``. Values come back exactly:
every column as its ``typeof()`` plus a text form (integers as text, so nothing beyond 2^53 is
rounded in JSON; BLOBs as ``hex()``), rebuilt into the same SQLite types locally. Requests stay
within D1's limits (one bound parameter, small statements, pages sized by ``page_rows``), and
HTTP 429 (honouring Retry-After), 5xx and timeouts are retried with exponential backoff and
jitter. The API token is sent only in the Authorization header: never logged, never in errors.
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

from d1_migration.ddl import q
from d1_migration.private_files import private_dir, private_file

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.cloudflare.com/client/v4"


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
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.load(response)
                if not payload.get("success", False):
                    raise D1ApiError(f"D1 API {path}: {payload.get('errors')}")
                return payload["result"]
            except urllib.error.HTTPError as error:
                if error.code != 429 and error.code < 500:
                    raise D1ApiError(
                        f"D1 API {path}: HTTP {error.code} {error.reason}",
                        too_big=error.code in (400, 413),
                    ) from None
                wait = _retry_after(error) if error.code == 429 else None
                problem = f"HTTP {error.code}"
            except (TimeoutError, urllib.error.URLError, ConnectionError) as error:
                wait, problem = None, type(error).__name__
            if attempt == self.attempts:
                raise D1ApiError(
                    f"D1 API {path}: gave up after {attempt} attempts, last: {problem}",
                    too_big=problem == "TimeoutError",
                ) from None
            delay = wait if wait is not None else self.backoff * 2 ** (attempt - 1)
            delay *= 1 + random.random() / 2  # jitter, so retries of parallel runs spread out
            log.warning("D1 API %s: %s, retrying in %.1f s", path, problem, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def query(self, sql: str, params: list | None = None) -> tuple[list[str], list[list]]:
        result = self._request("POST", "/raw", {"sql": sql, "params": params or []})
        return result[0]["results"]["columns"], result[0]["results"]["rows"]

    def bookmark(self) -> str:
        """The Time Travel bookmark of the state about to be copied."""
        return self._request("GET", "/time_travel/bookmark")["bookmark"]


def _retry_after(error: urllib.error.HTTPError) -> float | None:
    try:
        return float(error.headers.get("Retry-After", ""))
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
    """Rows of ``SELECT rowid, <select> FROM <source>`` in keyset pages. A page shorter than
    asked (a result size cap) is not the end: only an empty page is. A page D1 refuses as too
    large or too slow is asked again half as big, down to one row."""
    last = None
    while True:
        where = "" if last is None else "WHERE rowid > ?"
        try:
            _, rows = api.query(
                f"SELECT rowid, {select} FROM {source} {where} ORDER BY rowid LIMIT {page_rows}",
                [] if last is None else [last],
            )
        except D1ApiError as error:
            if not error.too_big or page_rows == 1:
                raise
            page_rows //= 2
            log.warning("D1 API: %s; asking %d rows per page instead", error, page_rows)
            continue
        if not rows:
            return
        yield from rows
        last = rows[-1][0]


def copy_database(api: D1Api, target: Path, page_rows: int = 500) -> str:
    """Copy every table (schema, rows, indexes) into a new SQLite file; returns the Time Travel
    bookmark of the state copied."""
    bookmark = api.bookmark()
    objects = list(pages(api, "type, name, sql", "sqlite_master", page_rows))
    private_dir(target.parent)
    target.unlink(missing_ok=True)
    conn = sqlite3.connect(private_file(target), isolation_level=None)
    conn.execute("BEGIN")
    try:
        for kind in ("table", "index"):  # tables first: indexes refer to them
            for _, object_kind, name, sql in objects:
                if object_kind != kind or sql is None or name.startswith("sqlite_"):
                    continue
                conn.execute(sql)
                if kind == "table":
                    _copy_table(api, conn, name, page_rows)
        conn.execute("COMMIT")
    finally:
        conn.close()
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
        conn.execute(insert, [row[0], *values])
