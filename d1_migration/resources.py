"""Dagster resources: where D1 is read from, where Postgres is written to, where sync state lives.

Each setting is read from its resource field when set, else from its environment variable at
run time, so a job or launchpad config that sets one field of a resource never loses the
others (Dagster replaces a resource's whole config). With neither source nor target set the
demo applies: the demo D1 file and an embedded PostgreSQL (pgserver) in a project-local
directory; a target with no source is refused, so the demo never overwrites a real database.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import psycopg
from dagster import ConfigurableResource
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field, PrivateAttr

from d1_migration.private_files import private_dir, private_file
from d1_migration.source.d1_api import DEFAULT_API_BASE, D1Api, D1Database, copy_database
from d1_migration.source.export import replayed_path
from d1_migration.source.snapshot import Snapshot, SqliteSource

log = logging.getLogger(__name__)

DEFAULT_WORKDIR = Path(".d1_migration")
DEMO_SOURCE = DEFAULT_WORKDIR / "demo.sqlite"
EMBEDDED_DATABASE = "d1_target"
SOURCE_ENV = "D1_MIGRATION_SOURCE"
TARGET_ENV = "D1_MIGRATION_TARGET_URL"
STATE_DIR_ENV = "D1_MIGRATION_STATE_DIR"
TOKEN_ENV = "CLOUDFLARE_API_TOKEN"
SQLITE_HEADER = b"SQLite format 3\x00"


class NotConfigured(Exception):
    """A setting that must be given is missing; nothing was read or written."""


def configured_target(url: str | None) -> str | None:
    """The target URL a run uses: the resource's, else the environment's; None: embedded."""
    return url or os.environ.get(TARGET_ENV) or None


class D1Source(ConfigurableResource):
    """The D1 database: a SQLite file (a copy of production, or wrangler's local state file),
    a `wrangler d1 export` .sql file, or the live database as d1://<account_id>/<database_id>."""

    path: str | None = Field(
        default=None,
        description="A D1 SQLite file, a .sql export or d1://<account>/<database>; unset: "
        f"env {SOURCE_ENV}, else the demo file {DEMO_SOURCE} when no target is configured "
        "either.",
    )

    copy_dir: str = Field(
        default=str(DEFAULT_WORKDIR / "copies"),
        description="Where a run's copy of the source is kept: a replayed .sql export (once "
        "per version of the file), live D1 copied through the API, a WAL-mode file's backup.",
    )
    skip_tables: list[str] = Field(
        default=[],
        description="More D1 tables (glob patterns) not to migrate, besides D1's internal "
        "_cf_*, sqlite_* and d1_migrations.",
    )

    api_token: str | None = Field(
        default=None,
        description="Cloudflare API token for d1:// sources (env CLOUDFLARE_API_TOKEN).",
    )
    api_base_url: str = Field(default=DEFAULT_API_BASE, description="Cloudflare API base URL.")
    api_page_rows: int = Field(
        default=1000,
        description="Rows per API request for d1:// sources: fewer requests against D1's "
        "1,200 per 5 minutes, but each response must stay under D1's result size cap.",
    )
    _copy: dict | None = PrivateAttr(default=None)

    def run_copy(self) -> dict:
        """The SQLite file this run reads, settled once per run so that every table is read
        from one consistent state: live D1 copied through the API (with the Time Travel
        bookmark of what was copied), an export replayed, a file in WAL mode (perhaps being
        written, like wrangler's local state) copied with SQLite's backup API, or the file."""
        if self._copy is None:
            self._copy = self._settle()
        return self._copy

    def configured_source(self) -> str | None:
        return self.path or os.environ.get(SOURCE_ENV) or None

    def source(self) -> str:
        """The D1 database this run reads: the demo file when none is configured (allowed
        only without a configured target: see require_source)."""
        return self.configured_source() or str(DEMO_SOURCE)

    def _settle(self) -> dict:
        cache = Path(self.copy_dir)
        source = self.source()
        if source.startswith("d1://"):
            database = D1Database.parse(source)
            token = self.api_token or os.environ.get(TOKEN_ENV)
            if not token:
                raise NotConfigured(f"A d1:// source needs {TOKEN_ENV}")
            local = cache / f"d1-{database.database_id}.sqlite"
            api = D1Api(database, token, self.api_base_url)
            bookmark = copy_database(api, local, self.api_page_rows, tuple(self.skip_tables))
            log.info("Copied live D1 %s at Time Travel bookmark %s", database.database_id, bookmark)
            return {"path": local, "bookmark": bookmark}
        path = Path(source)
        if not path.is_file():
            raise NotConfigured(
                f"No D1 database at {source}. Set {SOURCE_ENV} to your D1 SQLite file "
                "or `wrangler d1 export` file, or run `d1-migration demo` to build a sample."
            )
        if path.suffix.lower() == ".sql":
            return {"path": replayed_path(path, cache)}
        with path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
        if header != SQLITE_HEADER:
            what = "is empty (0 bytes)" if not header else "is not a SQLite database"
            raise NotConfigured(
                f"The D1 source {path} {what}: point {SOURCE_ENV} at a D1 SQLite file, a "
                "`wrangler d1 export` .sql file or d1://<account_id>/<database_id>"
            )
        if journal_mode(path) == "wal":
            return {"path": backup(path, cache)}
        return {"path": path}

    def refresh(self) -> None:
        """Forget this run's copy, so that the next snapshot reads D1 as it is now."""
        self._copy = None

    def run_metadata(self) -> dict:
        """What to record about the source state a run copied (the bookmark, for d1://)."""
        copy = self.run_copy()
        return {"d1_bookmark": copy["bookmark"]} if "bookmark" in copy else {}

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        with SqliteSource(self.run_copy()["path"]).snapshot() as snapshot:
            yield snapshot


def journal_mode(path: Path) -> str:
    with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        return conn.execute("PRAGMA journal_mode").fetchone()[0].lower()


def backup(path: Path, cache: Path) -> Path:
    """A consistent copy of a database that may be being written (SQLite's online backup)."""
    target = private_file(
        private_dir(cache)
        / f"snapshot-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}.sqlite"
    )
    with (
        closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as source,
        closing(sqlite3.connect(target)) as copy,
    ):
        source.backup(copy)
        # The copy inherits WAL mode; as a plain file its pages can be read (Snapshot.leaf_pages).
        copy.execute("PRAGMA journal_mode = DELETE")
    return target


def embedded_postgres_url(workdir: Path, database: str = EMBEDDED_DATABASE) -> str:
    """Start (or reuse) the embedded server under ``workdir`` and make sure ``database`` exists."""
    import pgserver  # imported lazily: only machines without a configured target need it

    data_dir = (workdir / "pgdata").resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode=None)  # keep running for later runs
    admin_url = server.get_uri("postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')
    log.info("Using embedded PostgreSQL with data directory %s", data_dir)
    return server.get_uri(database)


def stop_embedded_postgres(workdir: Path, timeout: float = 60.0) -> None:
    """Stop the embedded server under ``workdir`` (it outlives runs on purpose): a fast
    shutdown (SIGINT to the postmaster named in postmaster.pid, what ``pg_ctl stop -m fast``
    sends), waiting until it has exited. Not through pg_ctl: as root, pgserver runs it as
    another user, who may no longer reach the data directory (pytest makes its temporary root
    0700 again whenever a session starts), and pgserver's own cleanup() skips the stop unless
    it counts this process's handle as the last one."""
    pid_file = (workdir / "pgdata" / "postmaster.pid").resolve()
    try:
        pid = int(pid_file.read_text().split()[0])
    except FileNotFoundError:
        return  # not running
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # ProcessLookupError once it has exited
            time.sleep(0.1)
        raise TimeoutError(f"the embedded PostgreSQL (pid {pid}) did not stop in {timeout} s")


TARGET_URL = "The target database URL"


class TargetError(RuntimeError):
    """The target cannot be used (a malformed URL, a failed connection); the message names at
    most its host, port and database, as it ends up in Dagster's event log and the UI."""


class TargetUnreachable(TargetError):
    """The connection to the target failed (perhaps a server still restarting): a run started
    by Dagster tries again, while a malformed URL (a plain TargetError) never mends by itself.
    (A wrong password is retried too: psycopg's connect errors carry no SQLSTATE to tell it
    from a server that is starting up or shutting down.)"""


def _malformed(problem: str, name: str = TARGET_URL) -> TargetError:
    return TargetError(
        f"{name} is malformed: {problem}. Its text is not shown because it may hold a password."
    )


def refuse_stray_at(url: str, name: str = TARGET_URL) -> None:
    """Refuse a URL with an ``@`` after its user:password part: libpq (and SQLAlchemy, for
    Dagster's storage) takes the text after the first ``@`` as the host, or after a ``/`` as
    the database, and its errors would show the rest of an unescaped password as a host name."""
    authority, slash, rest = url.partition("://")[2].partition("/")
    if authority.count("@") > 1 or (slash and "@" in rest):
        raise _malformed(
            "an '@' outside user:password (percent-encode it in a password as %40)", name
        )


def _parsed(url: str) -> dict[str, str]:
    """The URL's parameters. libpq's own parse errors quote the URL, password included, so
    they are replaced by a message without its text (``from None``: no chained traceback
    carries it either)."""
    refuse_stray_at(url)
    try:
        return conninfo_to_dict(url)
    except Exception:
        raise _malformed(
            "libpq cannot parse it; expected postgresql://user:password@host:port/dbname, "
            "with reserved characters of the password percent-encoded"
        ) from None


def redacted(url: str) -> str:
    """A URL fit for logs and metadata: host, port and database, never credentials."""
    params = _parsed(url)
    return make_conninfo(**{k: params[k] for k in ("host", "port", "dbname") if k in params})


def connect_target(url: str, **options: str) -> psycopg.Connection:
    """``psycopg.connect`` (autocommit, libpq ``options`` such as application_name), whose
    errors may quote the URL: re-raised naming host, port and database only, with the server's
    reason stripped of the password."""
    shown = redacted(url)
    try:
        return psycopg.connect(url, autocommit=True, **options)
    except Exception as error:
        reason = str(error).strip()
        password = _parsed(url).get("password")
        for secret in (url, password):
            if secret:
                reason = reason.replace(secret, "***")
        raise TargetUnreachable(f"Cannot connect to the target ({shown}): {reason}") from None


class PostgresTarget(ConfigurableResource):
    """The target Postgres database (env D1_MIGRATION_TARGET_URL); embedded when unset."""

    url: str | None = Field(default=None, description="libpq URL of the target database.")
    workdir: str = Field(
        default=str(DEFAULT_WORKDIR),
        description="Where the embedded PostgreSQL keeps its data when no URL is given.",
    )

    def resolved_url(self) -> str:
        url = configured_target(self.url)
        if url is None:
            url = embedded_postgres_url(Path(self.workdir))
            log.info("No %s set: using the embedded target in %s", TARGET_ENV, self.workdir)
        return url

    def describe(self) -> str:
        return redacted(self.resolved_url())

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        with connect_target(self.resolved_url()) as conn:
            yield conn


class SyncSettings(ConfigurableResource):
    """Where sync state is kept. (How a run syncs, incremental or full, is the table step's
    run config: assets.SyncConfig.)"""

    state_dir: str | None = Field(
        default=None,
        description="Where the shadow of each target is kept; unset: env "
        f"{STATE_DIR_ENV}, else {DEFAULT_WORKDIR / 'sync'}. Keep it on persistent disk, or "
        "every sync is a full one.",
    )
    lock_timeout_seconds: float | None = Field(
        default=None,
        description="How long a sync waits for another sync of the same target to finish "
        "before it gives up without writing anything; unset: as long as it takes.",
    )

    def resolved_state_dir(self) -> Path:
        return Path(self.state_dir or os.environ.get(STATE_DIR_ENV) or DEFAULT_WORKDIR / "sync")

    def shadow_path(self, conn: psycopg.Connection) -> Path:
        """One shadow per target database, named by the target's sync token (which the
        bookkeeping schema creates: ensure the schema first)."""
        token = conn.execute("SELECT token FROM d1_migration.sync_token").fetchone()[0]
        return self.resolved_state_dir() / f"shadow-{token}.sqlite"


def require_source(d1: D1Source, postgres: PostgresTarget) -> str:
    """Refuse a configured target with no configured source, before anything is read or
    written: the demo file must never be synced into a real database (a sync deletes every
    target row the source lacks). Returns how the run's endpoints were chosen, for logs."""
    source, target = d1.configured_source(), configured_target(postgres.url)
    if target and not source:
        raise NotConfigured(
            f"{SOURCE_ENV} is not set, but a target database is ({TARGET_ENV} or the postgres "
            f"resource): set {SOURCE_ENV} to your D1 database; nothing was read or written"
        )
    described = [f"source {source}" if source else f"demo source {DEMO_SOURCE.resolve()}"]
    described.append(
        f"target {redacted(target)}"
        if target
        else f"embedded target in {(Path(postgres.workdir) / 'pgdata').resolve()}"
    )
    return ", ".join(described)
