"""The pooled Dagster storage: the one module built on Dagster internals, guarded here.

dagster_storage.py relies on names dagster-postgres does not document (``from_config_value``
with ``dagster._serdes.ConfigurableClassData``, and each storage part's
``optimize_for_webserver``). A Dagster upgrade that renames them fails the import or the
instance's creation here; one that keeps the names but stops pooling fails the check that the
same server sessions serve one run after another.
"""

import psycopg
from dagster import asset, materialize
from psycopg.conninfo import conninfo_to_dict

from d1_migration.defs.dagster_storage import pooled_instance
from d1_migration_tests.helpers import as_url


@asset
def trivial() -> int:
    return 1


def _sessions(admin: psycopg.Connection, database: str) -> set[int]:
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        [database],
    ).fetchall()
    return {pid for (pid,) in rows}


def test_runs_are_recorded_through_connections_held_open(tmp_path, new_database, pg_admin_url):
    url = new_database()
    database = conninfo_to_dict(url)["dbname"]
    instance = pooled_instance(tmp_path / "home", as_url(url))
    try:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            assert materialize([trivial], instance=instance).success
            held = _sessions(admin, database)
            for _ in range(3):
                assert materialize([trivial], instance=instance).success
            # a server session that served the first run still serves after three more
            assert held & _sessions(admin, database), "the storage is not pooled"
        assert len(instance.get_runs()) == 4  # and the storage works through the public API
    finally:
        instance.dispose()
