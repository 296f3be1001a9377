"""Dagster resources: where D1 is read from, where Postgres is written to, where sync state lives.

Each setting is read from its resource field when set, else from its environment variable at
run time, so a job or launchpad config that sets one field of a resource never loses the
others (Dagster replaces a resource's whole config). With neither source nor target set the
demo applies: the demo D1 file and an embedded PostgreSQL (pgserver) in a project-local
directory; a target with no source is refused, so the demo never overwrites a real database.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import psycopg
from dagster import ConfigurableResource, get_dagster_logger
from pydantic import Field, PrivateAttr

from d1_migration.private_files import private_dir, private_file
from d1_migration.source.d1_api import DEFAULT_API_BASE, D1Api, D1Database, copy_database
from d1_migration.source.export import replayed_path
from d1_migration.source.snapshot import Snapshot, SqliteSource
from d1_migration.sync.shadow import shadow_file_in
from d1_migration.target.connection import connect_target, redacted
from d1_migration.target.embedded import embedded_postgres_url

log = logging.getLogger(__name__)

DEFAULT_WORKDIR = Path(".d1_migration")
DEMO_SOURCE = DEFAULT_WORKDIR / "demo.sqlite"
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
        if not path.is_file() and self.configured_source() is None:
            build_demo_source(path)  # a fresh clone's Materialize all: the demo, as the CLI's
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


def build_demo_source(path: Path) -> None:
    """Write the demo's sample D1 file at ``path``, built beside it and renamed into place, so
    that a run reading it at the same time never sees half a file."""
    from d1_migration.demo.sample_data import build_sample_db  # only the demo needs it

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    build_sample_db(partial)
    partial.replace(path)
    get_dagster_logger().info(
        "Built the demo D1 database %s (no %s set)", path.resolve(), SOURCE_ENV
    )


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
        """The target's shadow file (shadow_file_in)."""
        return shadow_file_in(self.resolved_state_dir())(conn)


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
