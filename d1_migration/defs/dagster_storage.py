"""Dagster's own storage in Postgres, holding its connections open.

dagster-postgres opens a new connection for every statement outside the webserver (its pool is
a NullPool, so that idle processes hold none). A sync run records about 770 events, and each
event costs several statements: measured at 2.16M rows, a no-change re-sync took 13.5 s with
it, 4.5 s with the pooled connections the webserver itself gets (``optimize_for_webserver``).
``dagster.yaml`` names this class as the storage, so runs, the daemon and the webserver all
use it; a process holds one connection, plus short-lived extra ones while threads need them.

dagster-postgres has no public setting for this, so this is the one module of the project
built on Dagster internals (``dagster._serdes.ConfigurableClassData``, ``from_config_value``,
``optimize_for_webserver``, and the event log's SCHEMA_QUESTIONS); test_dagster_storage.py
fails on an upgrade that breaks them.

Where: ``postgres_url`` when the config gives one, else DAGSTER_PG_URL (its database created
when the server has none of that name), else the embedded PostgreSQL under .d1_migration,
database ``dagster``, where ``d1-migration demo`` records its runs too: so ``dagster dev`` in
a fresh clone, with no variable set, works and shows the demo's runs.
"""

import contextlib
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
import yaml
from dagster import DagsterInstance, Field, StringSource
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from d1_migration.defs.resources import DEFAULT_WORKDIR
from d1_migration.target.connection import redacted, refuse_stray_at
from d1_migration.target.embedded import embedded_postgres_url

STORAGE_URL_ENV = "DAGSTER_PG_URL"
EMBEDDED_STORAGE_DATABASE = "dagster"  # in the embedded server; the demo's runs are there too
_SAID_ENV = "_D1_MIGRATION_STORAGE_SAID"  # inherited by dagster dev's children; internal
log = logging.getLogger("dagster")  # what `dagster dev` prints

POOL_RECYCLE_SECONDS = 3600
MAX_OVERFLOW = 10


class PooledPostgresStorage(DagsterPostgresStorage):
    """``storage: postgres`` of dagster-postgres, with pooled connections."""

    @classmethod
    def config_type(cls) -> Any:
        # Optional, and read here rather than as {env: DAGSTER_PG_URL} in dagster.yaml: Dagster
        # fails on an unset variable while it processes the config, before this class runs.
        return {"postgres_url": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> DagsterPostgresStorage:
        url = config_value.get("postgres_url") or os.environ.get(STORAGE_URL_ENV)
        if url:
            refuse_stray_at(url, STORAGE_URL_ENV)  # before dagster-postgres logs it
            ensure_database(url)
        else:
            url = embedded_postgres_url(DEFAULT_WORKDIR, EMBEDDED_STORAGE_DATABASE)
            say_once(
                f"{STORAGE_URL_ENV} is not set: Dagster's storage is the embedded PostgreSQL "
                f"in {(DEFAULT_WORKDIR / 'pgdata').resolve()} (database "
                f"{EMBEDDED_STORAGE_DATABASE}); stop it with `d1-migration embedded stop`"
            )
        storage = DagsterPostgresStorage(inst_data=inst_data, postgres_url=url)
        for part in (storage.run_storage, storage.event_log_storage, storage.schedule_storage):
            part.optimize_for_webserver(  # type: ignore[attr-defined]
                statement_timeout=0,  # no limit, as with dagster-postgres's default engine
                pool_recycle=POOL_RECYCLE_SECONDS,
                max_overflow=MAX_OVERFLOW,
            )
        remember_schema(storage.event_log_storage)
        return storage


# What the event log asks Postgres's catalog (SQLAlchemy reflection) before it stores an asset
# event: whether a table (asset_event_tags) and a column of asset_keys exist. Remembered, a
# 70k-row Materialize all took 13.1-15.0 s against 16.0-17.3 s (3 interleaved pairs,
# profile.md); a no-change re-sync stores as many events.
SCHEMA_QUESTIONS = ("has_table", "_has_asset_key_col_on_connection")


def remember_schema(events: Any) -> None:
    """Answer ``events``' schema questions (SCHEMA_QUESTIONS) from the first yes: a table or a
    column, once there, stays (Dagster's migrations only add; a wipe keeps the tables). A no is
    asked again, so that storage migrated meanwhile (``dagster instance migrate``) is seen."""
    for name in SCHEMA_QUESTIONS:
        ask = getattr(events, name)  # an upgrade that renames one fails here, loudly
        known: set[tuple] = set()

        def remembered(*args: Any, _ask=ask, _known=known) -> bool:
            key = tuple(a for a in args if isinstance(a, str))  # the names, not the connection
            if key in _known:
                return True
            found = _ask(*args)
            if found:
                _known.add(key)
            return found

        setattr(events, name, remembered)


def say_once(line: str) -> None:
    """Print ``line`` once per command: `dagster dev` builds an instance in its own process
    first, then starts the webserver, daemon and code servers, which inherit the mark and so
    do not say it again."""
    if os.environ.get(_SAID_ENV):
        return
    os.environ[_SAID_ENV] = "1"
    if logging.getLogger("dagster").handlers:
        log.info(line)
    else:  # `dagster asset materialize` has not set up Dagster's logging yet
        print(line, file=sys.stderr)


def ensure_database(url: str) -> None:
    """Create Dagster's database when the server has none of that name, saying so in one line;
    a server that cannot be used stops the command with one line (no password in it) instead
    of dagster-postgres's retries and traceback. libpq reports a missing database as a plain
    connection failure (no SQLSTATE), so the server's catalog is asked, through ``postgres``."""
    url = url.replace("postgresql+psycopg2://", "postgresql://", 1)  # SQLAlchemy's spelling
    params = conninfo_to_dict(url)
    try:
        psycopg.connect(make_conninfo(url, connect_timeout="10")).close()
        return
    except psycopg.OperationalError as error:
        reason = _masked(error, params.get("password"))
    database = params.get("dbname")
    admin = make_conninfo(url, dbname="postgres", connect_timeout="10")
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database])
            if database and found.fetchone() is None:
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # a peer was first
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                say_once(f"Created database {database} for Dagster's storage ({redacted(url)})")
                return
    except psycopg.Error as error:
        if (admin_reason := _masked(error, params.get("password"))) != reason:
            reason += f"; through database postgres: {admin_reason}"
    raise SystemExit(f"Cannot use Dagster's storage {redacted(url)} ({STORAGE_URL_ENV}): {reason}")


def _masked(error: Exception, password: str | None) -> str:
    """The error on one line, the password (should libpq ever quote it) as ***."""
    reason = " ".join(str(error).split())
    return reason.replace(password, "***") if password else reason


def pooled_instance(home: Path, postgres_url: str) -> DagsterInstance:
    """An instance whose dagster.yaml, written in ``home``, puts its storage in
    ``postgres_url`` through this class, as the project's dagster.yaml does. Telemetry is off
    from the start, as there: an instance with it on prints Dagster's banner on a machine's
    first run (until ~/.dagster/.telemetry holds an id), and `dagster dev` reads this file too."""
    storage = {"module": __name__, "class": PooledPostgresStorage.__name__}
    config = {
        "storage": {"custom": {**storage, "config": {"postgres_url": postgres_url}}},
        "telemetry": {"enabled": False},
    }
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return DagsterInstance.from_config(str(home))
