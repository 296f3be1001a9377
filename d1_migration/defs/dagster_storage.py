"""Dagster's own storage in Postgres, holding its connections open.

dagster-postgres opens a new connection for every statement outside the webserver (its pool is
a NullPool, so that idle processes hold none). A sync run records about 770 events, and each
event costs several statements: measured at 2.16M rows, a no-change re-sync took 13.5 s with
it, 4.5 s with the pooled connections the webserver itself gets (``optimize_for_webserver``).
``dagster.yaml`` names this class as the storage, so runs, the daemon and the webserver all
use it; a process holds one connection, plus short-lived extra ones while threads need them.

dagster-postgres has no public setting for this, so this is the one module of the project
built on Dagster internals (``dagster._serdes.ConfigurableClassData``, ``from_config_value``,
``optimize_for_webserver``); test_dagster_storage.py fails on an upgrade that breaks them.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from dagster import DagsterInstance
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage

from d1_migration.target.connection import refuse_stray_at

POOL_RECYCLE_SECONDS = 3600
MAX_OVERFLOW = 10


class PooledPostgresStorage(DagsterPostgresStorage):
    """``storage: postgres`` of dagster-postgres, with pooled connections."""

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> DagsterPostgresStorage:
        if isinstance(config_value.get("postgres_url"), str):  # before dagster-postgres logs it
            refuse_stray_at(config_value["postgres_url"], "DAGSTER_PG_URL")
        storage = super().from_config_value(inst_data, config_value)
        for part in (storage.run_storage, storage.event_log_storage, storage.schedule_storage):
            part.optimize_for_webserver(  # type: ignore[attr-defined]
                statement_timeout=0,  # no limit, as with dagster-postgres's default engine
                pool_recycle=POOL_RECYCLE_SECONDS,
                max_overflow=MAX_OVERFLOW,
            )
        return storage


def pooled_instance(home: Path, postgres_url: str) -> DagsterInstance:
    """An instance whose dagster.yaml, written in ``home``, puts its storage in
    ``postgres_url`` through this class, as the project's dagster.yaml does."""
    storage = {"module": __name__, "class": PooledPostgresStorage.__name__}
    config = {"storage": {"custom": {**storage, "config": {"postgres_url": postgres_url}}}}
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return DagsterInstance.from_config(str(home))
