"""benchmarks/compare_fresh.py's comparison: what it must see between two migrated databases.

Two small databases built alike (an app table with a float, JSON and a timestamp, and the
bookkeeping tables by the project's own DDL), then one of them changed in the ways a regression
would change it: a float by one ulp, a row duplicated, a quarantine entry's reason, a default.
"""

from collections.abc import Callable

import psycopg
import pytest

from benchmarks.compare_fresh import compare
from d1_migration.target.ddl import BOOKKEEPING_DDL

APP = """
CREATE TABLE public.wallet (
    id TEXT PRIMARY KEY, balance DOUBLE PRECISION NOT NULL, meta JSONB,
    seen_at TIMESTAMPTZ, tag TEXT DEFAULT 'a');
CREATE TABLE public.events (user_id TEXT NOT NULL, kind TEXT NOT NULL);
INSERT INTO public.wallet VALUES
    ('u1', 0.1, '{"b": 1, "a": [1, 2]}', '2026-01-02 03:04:05.123456+00', 'x'),
    ('u2', 1e300, NULL, NULL, NULL);
INSERT INTO public.events VALUES ('u1', 'login'), ('u1', 'login'), ('u2', 'login');
INSERT INTO d1_migration.rejected_rows
    (source_table, source_pk, column_name, reason_code, reason, raw_row, run_id)
    VALUES ('wallet', 'u3', 'balance', 'wrong_type', 'balance is text', '{"id": "u3"}', 'r1');
INSERT INTO d1_migration.id_map VALUES ('users', 'u1', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
"""


@pytest.fixture
def two(new_database: Callable[[], str]) -> tuple[str, str]:
    urls = new_database(), new_database()
    for url in urls:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(BOOKKEEPING_DDL)
            conn.execute(APP)
    return urls


def _change(url: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


def _differing(result) -> dict[str, tuple[int, int]]:
    everything = [*result.schema, *result.tables, *result.bookkeeping]
    return {
        d.name: (sum(d.only_base.values()), sum(d.only_head.values()))
        for d in everything
        if not d.same
    }


def test_the_same_migration_twice_is_the_same(two: tuple[str, str]) -> None:
    # The bookkeeping's timestamps and run ids differ between two runs: they are left out.
    _change(
        two[1],
        "UPDATE d1_migration.rejected_rows SET run_id = 'r2', "
        "first_seen_at = now() + interval '1 hour', last_seen_at = now() + interval '1 hour'",
    )
    result = compare(*two)
    assert result.same, _differing(result)
    assert [(d.name, d.base_rows) for d in result.tables] == [("events", 3), ("wallet", 2)]
    assert {d.name: d.head_rows for d in result.bookkeeping}["rejected_rows"] == 1


def test_a_float_one_ulp_apart_differs(two: tuple[str, str]) -> None:
    _change(two[1], "UPDATE wallet SET balance = 0.10000000000000002 WHERE id = 'u1'")
    result = compare(*two)
    assert _differing(result) == {"wallet": (1, 1)}
    (wallet,) = [d for d in result.tables if d.name == "wallet"]
    assert next(iter(wallet.only_base)).split("\t")[:2] == ["u1", "0.1"]


def test_a_duplicated_row_differs(two: tuple[str, str]) -> None:
    _change(two[1], "INSERT INTO events VALUES ('u2', 'login')")
    assert _differing(compare(*two)) == {"events": (0, 1)}


def test_a_quarantine_entry_resolved_or_reworded_differs(two: tuple[str, str]) -> None:
    _change(two[1], "UPDATE d1_migration.rejected_rows SET resolved_at = now()")
    assert _differing(compare(*two)) == {"rejected_rows": (1, 1)}
    _change(two[1], "UPDATE d1_migration.rejected_rows SET resolved_at = NULL, reason = 'other'")
    assert _differing(compare(*two)) == {"rejected_rows": (1, 1)}


def test_a_schema_difference_is_seen(two: tuple[str, str]) -> None:
    _change(two[1], "ALTER TABLE wallet ALTER COLUMN tag SET DEFAULT 'b'")
    _change(two[1], "CREATE INDEX wallet_tag ON wallet (tag)")
    assert _differing(compare(*two)) == {"columns": (1, 1), "indexes": (0, 1)}


def test_a_table_only_one_side_has_is_missing_in_the_other(two: tuple[str, str]) -> None:
    _change(two[0], "CREATE TABLE extra (id INT)")
    result = compare(*two)
    assert result.missing_tables == {"base": [], "head": ["extra"]}
    assert not result.same
