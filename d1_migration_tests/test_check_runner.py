"""The table step's check runner (defs/asset_checks.py): checks of settled tables run on two
connections at once, and their results come back in the order they started."""

import threading

import psycopg

from d1_migration.defs.asset_checks import CheckRunner, _Pending
from d1_migration.spec.tables import SCHEMA


def test_two_checks_run_at_once_and_report_in_order(pg_url):
    second_started = threading.Event()
    used: list[int] = []

    def first(conn):
        used.append(conn.info.backend_pid)
        assert second_started.wait(10), "the second check never started beside the first"
        return iter(["first"])

    def second(conn):
        used.append(conn.info.backend_pid)
        second_started.set()
        return iter(["second"])

    with psycopg.connect(pg_url) as one, psycopg.connect(pg_url) as other:
        runner = CheckRunner([one, other], set(), content=None)
        try:
            runner._pending += [_Pending({"users"}, first), _Pending({"sessions"}, second)]
            runner.settled(SCHEMA.table("users"), None)
            runner.settled(SCHEMA.table("sessions"), None)
            assert list(runner.finished(wait=True)) == ["first", "second"]
            assert runner.errors == []
        finally:
            runner.close()
    assert len(set(used)) == 2  # each on a connection of its own
