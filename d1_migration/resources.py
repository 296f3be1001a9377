"""Dagster resources: where D1 is read from and where Postgres is written to.

The target URL comes from ``D1_MIGRATION_TARGET_URL`` through ``EnvVar``, so Dagster never shows
it; with no URL an embedded PostgreSQL (pgserver) is started in a project-local directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Literal

import psycopg
from dagster import ConfigurableResource
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field, PrivateAttr

from d1_migration.d1_api import DEFAULT_API_BASE, D1Api, D1Database, copy_database
from d1_migration.export import replayed_path
from d1_migration.source import Snapshot, SqliteSource

log = logging.getLogger(__name__)

DEFAULT_WORKDIR = Path(".d1_migration")
EMBEDDED_DATABASE = "d1_target"


class D1Source(ConfigurableResource):
    """The D1 database: a SQLite file (a copy of production, or wrangler's local state file),
    a `wrangler d1 export` .sql file, or the live database as d1://<account_id>/<database_id>."""

    path: str = Field(
        default=str(DEFAULT_WORKDIR / "demo.sqlite"),
        description="A D1 SQLite file, a .sql export or d1://<account>/<database> "
        "(env D1_MIGRATION_SOURCE).",
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

    def _settle(self) -> dict:
        cache = Path(self.copy_dir)
        if self.path.startswith("d1://"):
            database = D1Database.parse(self.path)
            token = self.api_token or os.environ.get("CLOUDFLARE_API_TOKEN")
            if not token:
                raise ValueError("A d1:// source needs CLOUDFLARE_API_TOKEN")
            local = cache / f"d1-{database.database_id}.sqlite"
            api = D1Api(database, token, self.api_base_url)
            bookmark = copy_database(api, local, self.api_page_rows)
            log.info("Copied live D1 %s at Time Travel bookmark %s", database.database_id, bookmark)
            return {"path": local, "bookmark": bookmark}
        path = Path(self.path)
        if not path.is_file():
            raise FileNotFoundError(
                f"No D1 database at {self.path}. Set D1_MIGRATION_SOURCE to your D1 SQLite file "
                "or `wrangler d1 export` file, or run `d1-migration demo` to build a sample."
            )
        if path.suffix.lower() == ".sql":
            return {"path": replayed_path(path, cache)}
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
    cache.mkdir(parents=True, exist_ok=True)
    target = (
        cache / f"snapshot-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}.sqlite"
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


def stop_embedded_postgres(workdir: Path) -> None:
    """Stop the embedded server under ``workdir`` (it outlives runs on purpose)."""
    import pgserver

    server = pgserver.get_server((workdir / "pgdata").resolve())
    server.cleanup_mode = "stop"  # the handle was opened to keep the server running
    server.cleanup()


def redacted(url: str) -> str:
    """A URL fit for logs and metadata: host, port and database, never credentials."""
    params = conninfo_to_dict(url)
    return make_conninfo(**{k: params[k] for k in ("host", "port", "dbname") if k in params})


class PostgresTarget(ConfigurableResource):
    """The target Postgres database (env D1_MIGRATION_TARGET_URL); embedded when unset."""

    url: str | None = Field(default=None, description="libpq URL of the target database.")
    workdir: str = Field(
        default=str(DEFAULT_WORKDIR),
        description="Where the embedded PostgreSQL keeps its data when no URL is given.",
    )

    def resolved_url(self) -> str:
        return self.url or embedded_postgres_url(Path(self.workdir))

    def describe(self) -> str:
        return redacted(self.resolved_url())

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        with psycopg.connect(self.resolved_url(), autocommit=True) as conn:
            yield conn


class SyncSettings(ConfigurableResource):
    """How tables are brought up to date: one setting for all 66 assets.

    ``incremental`` processes only what changed since the last sync (the first sync of a
    target is full either way); ``full`` re-reads and re-checks every row.
    """

    mode: Literal["incremental", "full"] = Field(
        default="incremental", description="incremental (default) or full"
    )
    state_dir: str = Field(
        default=str(DEFAULT_WORKDIR / "sync"),
        description="Where the shadow of each target is kept (env D1_MIGRATION_STATE_DIR); "
        "keep it on persistent disk, or every sync is a full one.",
    )
    lock_timeout_seconds: float | None = Field(
        default=None,
        description="How long a sync waits for another sync of the same target to finish "
        "before it gives up without writing anything; unset: as long as it takes.",
    )

    def shadow_path(self, conn: psycopg.Connection) -> Path:
        """One shadow per target database, named by the target's sync token (which the
        bookkeeping schema creates: ensure the schema first)."""
        token = conn.execute("SELECT token FROM d1_migration.sync_token").fetchone()[0]
        return Path(self.state_dir) / f"shadow-{token}.sqlite"
