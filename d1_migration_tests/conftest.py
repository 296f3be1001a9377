"""Real PostgreSQL and real SQLite for every test: each test gets its own database, dropped after.

The server is D1_MIGRATION_TEST_PG_URL (default: the local server on 127.0.0.1:5432); when none
answers, an embedded PostgreSQL is started, as the project does for users without a server.
"""

import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from d1_migration.target.embedded import embedded_postgres_url

# Property tests: 25 examples in CI; HYPOTHESIS_PROFILE=deep for a long local hunt.
settings.register_profile("default", max_examples=25)
settings.register_profile("deep", max_examples=400)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_SCHEMA = SHARED / "d1" / "0100_master_reset.sql"
MIGRATION_MAP = SHARED / "docs" / "schema_migration_map.md"


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get(
        "D1_MIGRATION_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.OperationalError:
        url = embedded_postgres_url(tmp_path_factory.mktemp("embedded"), "postgres")
    return url


def _database_url(admin_url: str, name: str) -> str:
    return make_conninfo(**{**conninfo_to_dict(admin_url), "dbname": name})


@pytest.fixture
def new_database(pg_admin_url: str) -> Iterator[Callable[[], str]]:
    """Creates uniquely named databases on demand; drops them all after the test."""
    names: list[str] = []

    def create() -> str:
        name = f"d1mt_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        return _database_url(pg_admin_url, name)

    yield create
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(new_database: Callable[[], str]) -> str:
    return new_database()


@pytest.fixture
def pg(pg_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


def _shared(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} is absent: this test needs the shared/ folder beside the checkout")
    return path


@pytest.fixture
def real_schema_sql() -> str:
    return _shared(REAL_SCHEMA).read_text()


@pytest.fixture
def migration_map() -> str:
    return _shared(MIGRATION_MAP).read_text()


@pytest.fixture
def real_d1(tmp_path: Path, real_schema_sql: str) -> Path:
    """A D1 database built from the real schema, with its seed rows."""
    path = tmp_path / "real.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(real_schema_sql)
    return path
