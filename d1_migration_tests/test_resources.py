"""Resources: secrets stay out of what is shown; no target URL means a real embedded server."""

import os
import sqlite3

from d1_migration.defs.resources import DEMO_SOURCE, SOURCE_ENV, D1Source, PostgresTarget
from d1_migration.target.connection import redacted
from d1_migration.target.embedded import stop_embedded_postgres


def test_redacted_url_keeps_host_port_and_database_only():
    shown = redacted("postgresql://app:s3cret@db.internal:6543/prod?sslmode=require")
    assert shown == "host=db.internal port=6543 dbname=prod"
    assert PostgresTarget(url="postgresql://app:s3cret@db:5432/x").describe() == (
        "host=db port=5432 dbname=x"
    )


def test_without_a_url_an_embedded_postgres_is_started(tmp_path):
    target = PostgresTarget(workdir=str(tmp_path))
    try:
        with target.connect() as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            database = conn.execute("SELECT current_database()").fetchone()[0]
        assert version and database == "d1_target"
        assert (tmp_path / "pgdata" / "PG_VERSION").is_file()
        # As root, pgserver runs the server as another user, who can then no longer reach the
        # data directory (a new pytest session resets its temporary root to 0700 this way):
        # the server must stop all the same.
        os.chmod(tmp_path, 0o700)
    finally:
        stop_embedded_postgres(tmp_path)
    assert not (tmp_path / "pgdata" / "postmaster.pid").exists()


def test_with_no_source_configured_a_run_builds_the_missing_demo_file(tmp_path, monkeypatch):
    """Materialize all in a fresh clone (no `d1-migration demo` run before) reads the demo."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(SOURCE_ENV, raising=False)
    path = D1Source().run_copy()["path"]
    assert path == DEMO_SOURCE and path.is_file()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] > 0
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left
