"""Incremental re-sync: after any changes in D1, Postgres equals a fresh full migration.

Each test migrates a real SQLite file into real Postgres, changes the file the way the app
would (with SQLite's foreign keys on, so deletes cascade as in D1), re-syncs incrementally,
and compares every table and the quarantine with a full migration into an empty database.
"""

import sqlite3
from pathlib import Path

import psycopg
import pytest
from dagster import AssetSelection, DagsterInstance, materialize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d1_migration import definitions
from d1_migration.defs.keys import target_key
from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.demo.sample_data import build_sample_db
from d1_migration.runner import materialize_all, summarize
from d1_migration.source.snapshot import SqliteSource
from d1_migration.spec.model import Schema
from d1_migration.spec.tables import SCHEMA
from d1_migration.sync.engine import sync_all
from d1_migration.sync.shadow import Shadow
from d1_migration.verify.checks import MATCHES_D1
from d1_migration.verify.content import WHOLE, Slice, verify_table
from d1_migration_tests.helpers import (
    as_url,
    assert_like_fresh_migration,
    first,
    mutate,
    new_d1,
    sync,
)


def test_unchanged_source_is_a_no_op(tmp_path, pg_url):
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=30, seed=3)
    first_sync = sync(pg_url, source, tmp_path / "shadow.sqlite", incremental=True)
    assert {r.mode for r in first_sync.values()} == {"full"}  # no shadow yet
    again = sync(pg_url, source, tmp_path / "shadow.sqlite", incremental=True)
    assert {r.mode for r in again.values()} == {"incremental"}
    assert all(r.inserted == r.updated == r.deleted == 0 for r in again.values())
    # Nothing changed anywhere, so not even the quarantined rows are worth another try.
    assert any(r.quarantined for r in first_sync.values())
    assert all(r.considered == 0 for r in again.values())


def test_mixed_changes_equal_a_fresh_migration(tmp_path, new_database):
    source = tmp_path / "d1.sqlite"
    sample = build_sample_db(source, users=40, seed=5)
    synced, shadow = new_database(), tmp_path / "shadow.sqlite"
    sync(synced, source, shadow, incremental=True)

    user = first(source, "SELECT id FROM users WHERE id IN (SELECT user_id FROM habits) LIMIT 1")
    bad_mode = next(r.source_pk for r in sample.rejects if r.reason_code == "bad_enum")
    ledger = first(source, f"SELECT id FROM points_ledger WHERE user_id = '{user}' LIMIT 1")
    mutate(
        source,
        [
            f"UPDATE users SET name = 'Renamed' WHERE id = '{user}'",
            f"INSERT INTO habits (id, user_id, name) VALUES ('h-new', '{user}', 'Read')",
            "INSERT INTO habit_logs (id, habit_id, user_id, completed_at) "
            f"VALUES ('hl-new', 'h-new', '{user}', '2026-02-01T08:00:00Z')",
            f"UPDATE focus_sessions SET mode = 'focus' WHERE id = '{bad_mode}'",  # fixed in D1
            f"UPDATE points_ledger SET coins = 'lots' WHERE id = '{ledger}'",  # turns bad
        ],
    )
    results = sync(synced, source, shadow, incremental=True)
    assert_like_fresh_migration(synced, source, new_database())
    for name in ("users", "habits", "habit_logs", "focus_sessions", "points_ledger"):
        assert results[name].mode == "incremental", name
    assert results["users"].updated == 1 and results["habits"].inserted == 1
    assert results["points_ledger"].deleted == 1  # its previous copy does not look current
    with psycopg.connect(synced) as conn:
        resolved = conn.execute(
            "SELECT resolved_at IS NOT NULL FROM d1_migration.rejected_rows WHERE source_pk = %s",
            [bad_mode],
        ).fetchone()[0]
    assert resolved

    doomed = first(
        source,
        f"SELECT id FROM users WHERE id != '{user}' AND id IN "
        "(SELECT user_id FROM calendar_events) ORDER BY rowid DESC LIMIT 1",
    )
    parent = first(
        source,
        "SELECT parent_event_id FROM calendar_events WHERE parent_event_id IS NOT NULL LIMIT 1",
    )
    mutate(
        source,
        [
            f"DELETE FROM users WHERE id = '{doomed}'",  # D1 cascades to every child table
            f"UPDATE calendar_events SET start_time = 'soon' WHERE id = '{parent}'",  # self-ref
            f"INSERT INTO users (id, email, created_at) VALUES ('{user.upper()}', 'twin@x', "
            "'2026-01-01')",  # the same UUID in other case, later rowid: a duplicate_key
        ],
    )
    results = sync(synced, source, shadow, incremental=True)
    assert_like_fresh_migration(synced, source, new_database())
    assert results["users"].mode == "incremental"
    # Its parent removed rows (D1 and Postgres cascading): the deletions are in its own scope.
    assert results["habits"].mode == "incremental"


def test_a_quarantined_child_is_retried_when_its_parent_is_fixed(tmp_path, new_database):
    source = new_d1(
        tmp_path / "d1.sqlite",
        [
            "INSERT INTO users (id, email, created_at) VALUES ('u1', 'u1@x', 'yesterday')",
            "INSERT INTO habits (id, user_id, name) VALUES ('h1', 'u1', 'Read')",
        ],
    )
    synced, shadow = new_database(), tmp_path / "shadow.sqlite"
    first_sync = sync(synced, source, shadow, incremental=True)
    assert first_sync["habits"].reasons == {"parent_quarantined": 1}

    mutate(source, ["UPDATE users SET created_at = '2026-01-01' WHERE id = 'u1'"])
    results = sync(synced, source, shadow, incremental=True)
    assert results["habits"].mode == "incremental"
    assert results["habits"].considered == 1  # unchanged in D1, retried for its parent
    assert results["habits"].inserted == 1
    assert_like_fresh_migration(synced, source, new_database())


def test_a_change_reaches_the_rows_that_refer_to_it_in_the_same_table(tmp_path, new_database):
    """A parent event turning bad leaves Postgres (with what its FK cascades to there); its
    child events, unchanged in D1, must become quarantined rows, not silently vanish."""
    events = [("c0", "NULL"), ("c1", "'c0'"), ("c2", "'c1'"), ("c3", "NULL")]
    source = new_d1(
        tmp_path / "d1.sqlite",
        ["INSERT INTO users (id, email, created_at) VALUES ('u1', 'u1@x', '2026-01-06')"]
        + [
            "INSERT INTO calendar_events (id, user_id, title, start_time, parent_event_id) "
            f"VALUES ('{event}', 'u1', 'E', '2026-01-07 09:00:00', {parent})"
            for event, parent in events
        ],
    )
    synced, shadow = new_database(), tmp_path / "shadow.sqlite"
    sync(synced, source, shadow, incremental=True)

    mutate(source, ["UPDATE calendar_events SET start_time = 'soon' WHERE id = 'c0'"])
    results = sync(synced, source, shadow, incremental=True)
    assert results["calendar_events"].mode == "incremental"
    assert results["calendar_events"].considered == 3  # c0, and c1 and c2 below it
    assert results["calendar_events"].reasons == {"bad_datetime": 1, "parent_quarantined": 2}
    assert_like_fresh_migration(synced, source, new_database())

    mutate(source, ["UPDATE calendar_events SET start_time = '2026-01-08' WHERE id = 'c0'"])
    results = sync(synced, source, shadow, incremental=True)
    assert results["calendar_events"].mode == "incremental"
    assert results["calendar_events"].inserted == 3
    assert_like_fresh_migration(synced, source, new_database())


def test_a_derived_column_follows_the_row_it_reads(tmp_path, new_database):
    """accounts.created_at is read from the user: the account row itself never changes."""
    source = new_d1(
        tmp_path / "d1.sqlite",
        [
            "INSERT INTO users (id, email, created_at) VALUES ('u1', 'u1@x', '2026-01-06')",
            "INSERT INTO accounts (id, userId, type, provider, providerAccountId) "
            "VALUES ('a1', 'u1', 'oauth', 'gh', '1')",
        ],
    )
    synced, shadow = new_database(), tmp_path / "shadow.sqlite"
    sync(synced, source, shadow, incremental=True)
    mutate(source, ["UPDATE users SET created_at = '2026-02-01' WHERE id = 'u1'"])
    results = sync(synced, source, shadow, incremental=True)
    assert results["accounts"].mode == "incremental" and results["accounts"].updated == 1
    assert_like_fresh_migration(synced, source, new_database())


def _without_d1_cascade(path: Path, statements: list[str]) -> None:
    """Changes made with SQLite's foreign keys off (D1 enforcing none, or an FK without an ON
    DELETE action): a deleted parent leaves its children behind in D1."""
    with sqlite3.connect(path, isolation_level=None) as d1:
        d1.execute("PRAGMA foreign_keys = OFF")
        for statement in statements:
            d1.execute(statement)


def test_a_user_deleted_in_d1_cascades_without_a_full_pass(tmp_path, new_database):
    """D1 cascades an account deletion to every table, and so does Postgres: each table's own
    shadow comparison sees the deleted rows, so no table needs a full pass. Through a Dagster
    run, as the schedule syncs: the run's metadata names each table's mode."""
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=30, seed=11)
    synced = new_database()
    d1, target = D1Source(path=str(source)), PostgresTarget(url=as_url(synced))
    state = SyncSettings(state_dir=str(tmp_path / "state"))
    assert materialize_all(d1, target, sync=state).success
    doomed = first(
        source,
        "SELECT user_id FROM habit_logs WHERE user_id IN (SELECT user_id FROM calendar_events) "
        "AND user_id IN (SELECT user_id FROM feedback) ORDER BY rowid LIMIT 1",
    )
    reached = {
        name: first(source, f"SELECT count(*) FROM {name} WHERE user_id = '{doomed}'")
        for name in ("habits", "habit_logs", "calendar_events", "feedback")
    }
    assert all(reached.values()), reached
    mutate(source, [f"DELETE FROM users WHERE id = '{doomed}'"])  # D1 cascades, SET NULL too
    assert first(source, f"SELECT count(*) FROM habits WHERE user_id = '{doomed}'") == 0

    summary = materialize_all(d1, target, sync=state)
    assert summary.success, summary.failure
    assert {name: meta["mode"] for name, meta in summary.tables.items()} == {
        t.name: "incremental" for t in SCHEMA.tables
    }
    assert summary.tables["users"]["deleted"] == 1
    judged = [c for c in summary.checks if c.check in (MATCHES_D1, "row_parity", "no_orphaned_fks")]
    assert len(judged) > 2 * len(SCHEMA.tables) and all(c.passed for c in judged)
    assert_like_fresh_migration(synced, source, new_database())


def test_a_parent_deleted_without_cascade_in_d1_quarantines_the_orphans(tmp_path, new_database):
    """Postgres cascades a deleted user to its habits and logs and sets the feedback's user to
    NULL; D1, not cascading, keeps them with their user_id: a fresh migration quarantines them
    as orphans, and so must the re-sync, although their D1 rows did not change."""
    source = new_d1(
        tmp_path / "d1.sqlite",
        [
            "INSERT INTO users (id, email, created_at) VALUES ('u1', 'u1@x', '2026-01-06')",
            "INSERT INTO users (id, email, created_at) VALUES ('u2', 'u2@x', '2026-01-06')",
            "INSERT INTO habits (id, user_id, name) VALUES ('h1', 'u1', 'Read')",
            "INSERT INTO habits (id, user_id, name) VALUES ('h2', 'u2', 'Run')",
            "INSERT INTO habit_logs (id, habit_id, user_id, completed_at) "
            "VALUES ('l1', 'h1', 'u1', '2026-02-01T08:00:00Z')",
            "INSERT INTO feedback (id, user_id, type, message) VALUES ('f1', 'u1', 'bug', 'x')",
        ],
    )
    synced, shadow = new_database(), tmp_path / "shadow.sqlite"
    sync(synced, source, shadow, incremental=True)
    _without_d1_cascade(source, ["DELETE FROM users WHERE id = 'u1'"])
    results = sync(synced, source, shadow, incremental=True)
    assert {r.mode for r in results.values()} == {"incremental"}
    assert results["users"].deleted == 1
    assert results["habits"].reasons == {"missing_parent": 1}
    assert results["habits"].considered == 1  # h1, unchanged in D1; not h2
    assert results["habit_logs"].quarantined == 1
    assert results["feedback"].reasons == {"missing_parent": 1}
    assert_like_fresh_migration(synced, source, new_database())


def test_a_parent_turning_bad_quarantines_what_postgres_cascaded(tmp_path, new_database):
    """A user now quarantined leaves Postgres, which cascades to its habits (and their logs)
    and to the events below its events: rows D1 did not change become parent_quarantined."""
    source = new_d1(
        tmp_path / "d1.sqlite",
        [
            "INSERT INTO users (id, email, created_at) VALUES ('u1', 'u1@x', '2026-01-06')",
            "INSERT INTO users (id, email, created_at) VALUES ('u2', 'u2@x', '2026-01-06')",
            "INSERT INTO habits (id, user_id, name) VALUES ('h1', 'u1', 'Read')",
            "INSERT INTO habit_logs (id, habit_id, user_id, completed_at) "
            "VALUES ('l1', 'h1', 'u2', '2026-02-01T08:00:00Z')",  # reached through h1 only
            "INSERT INTO calendar_events (id, user_id, title, start_time) "
            "VALUES ('c1', 'u1', 'E', '2026-01-07 09:00:00')",
            "INSERT INTO calendar_events (id, user_id, title, start_time, parent_event_id) "
            "VALUES ('c2', 'u2', 'E', '2026-01-07 09:00:00', 'c1')",  # through c1 only
        ],
    )
    synced, shadow = new_database(), tmp_path / "shadow.sqlite"
    sync(synced, source, shadow, incremental=True)
    mutate(source, ["UPDATE users SET created_at = 'yesterday' WHERE id = 'u1'"])
    results = sync(synced, source, shadow, incremental=True)
    assert {r.mode for r in results.values()} == {"incremental"}
    assert results["users"].reasons == {"bad_datetime": 1}
    assert results["habits"].reasons == {"parent_quarantined": 1}
    assert results["habit_logs"].reasons == {"parent_quarantined": 1}
    assert results["calendar_events"].reasons == {"parent_quarantined": 2}
    assert_like_fresh_migration(synced, source, new_database())

    mutate(source, ["UPDATE users SET created_at = '2026-01-08' WHERE id = 'u1'"])  # fixed
    results = sync(synced, source, shadow, incremental=True)
    assert {r.mode for r in results.values()} == {"incremental"}
    assert results["habit_logs"].inserted == 1
    assert_like_fresh_migration(synced, source, new_database())


def test_a_cascaded_row_that_names_no_source_row_means_a_full_pass(tmp_path, new_database):
    """A recorded cascade entry that D1 lacks and the shadow does not see deleted: its key
    did not name its source row, so only a full pass can tell what the table must hold."""
    source = new_d1(
        tmp_path / "d1.sqlite",
        [
            "INSERT INTO users (id, email, created_at) VALUES ('u1', 'u1@x', '2026-01-06')",
            "INSERT INTO habits (id, user_id, name) VALUES ('h1', 'u1', 'Read')",
        ],
    )
    synced, shadow = new_database(), tmp_path / "shadow.sqlite"
    sync(synced, source, shadow, incremental=True)
    with psycopg.connect(synced) as conn:
        conn.execute("INSERT INTO d1_migration.cascaded_rows VALUES ('habits', 'h-unknown')")
    results = sync(synced, source, shadow, incremental=True)
    assert results["habits"].mode == "full" and results["users"].mode == "incremental"
    with psycopg.connect(synced) as conn:
        assert conn.execute("SELECT count(*) FROM d1_migration.cascaded_rows").fetchone()[0] == 0
    assert_like_fresh_migration(synced, source, new_database())


# -- property: any sequence of changes --------------------------------------------------------

SMALL_NAMES = ("users", "habits", "habit_logs", "calendar_events", "accounts", "user_wallet")
SMALL = Schema(SCHEMA.enums, tuple(SCHEMA.table(n) for n in SMALL_NAMES))
TIMES = [
    "2026-01-06 10:11:12",
    "2026-01-06T10:11:12.345Z",
    "1767694272",
    "2026-02-30 00:00:00",
    "yesterday",
    "",
]
IDS = [
    "u1",
    "u2",
    "U1",
    "9a6e0b5c-1f2d-4c3b-8a7e-6d5c4b3a2f10",
    "9A6E0B5C-1F2D-4C3B-8A7E-6D5C4B3A2F10",
    "u3",
]


def _statements() -> st.SearchStrategy[list[str]]:
    user = st.sampled_from(IDS)
    when = st.sampled_from(TIMES)
    key = st.integers(0, 5)
    ops = st.one_of(
        st.builds(
            lambda u, t: (
                f"INSERT OR IGNORE INTO users (id, email, created_at) VALUES "
                f"('{u}', '{u}@x', '{t}')"
            ),
            user,
            when,
        ),
        st.builds(lambda u, t: f"UPDATE users SET created_at = '{t}' WHERE id = '{u}'", user, when),
        st.builds(lambda u: f"DELETE FROM users WHERE id = '{u}'", user),
        st.builds(
            lambda k, u, f: (
                f"INSERT OR REPLACE INTO habits (id, user_id, name, frequency)"
                f" VALUES ('h{k}', '{u}', 'H', '{f}')"
            ),
            key,
            user,
            st.sampled_from(["daily", "hourly"]),
        ),
        st.builds(lambda k: f"DELETE FROM habits WHERE id = 'h{k}'", key),
        st.builds(
            lambda k, h, u, t: (
                "INSERT OR REPLACE INTO habit_logs (id, habit_id, user_id, "
                f"completed_at) VALUES ('l{k}', 'h{h}', '{u}', '{t}')"
            ),
            key,
            key,
            user,
            when,
        ),
        st.builds(
            lambda k, u, p, t: (
                "INSERT OR REPLACE INTO calendar_events (id, user_id, "
                f"title, start_time, parent_event_id) VALUES ('c{k}', '{u}', 'E', '{t}', "
                f"{p})"
            ),
            key,
            user,
            st.sampled_from(["NULL", "'c0'", "'c1'", "'c9'"]),
            when,
        ),
        st.builds(
            lambda k, u, a: (
                "INSERT OR REPLACE INTO accounts (id, userId, type, provider, "
                f"providerAccountId) VALUES ('a{k}', '{u}', 'oauth', 'gh', '{a}')"
            ),
            key,
            user,
            st.sampled_from(["1", "2"]),
        ),
        st.builds(
            lambda u, c: (
                f"INSERT OR REPLACE INTO user_wallet (id, user_id, coins) VALUES "
                f"('w-{u}', '{u}', {c})"
            ),
            user,
            st.sampled_from(["5", "-1", "'x'"]),
        ),
    )
    return st.lists(st.lists(ops, min_size=1, max_size=6), min_size=1, max_size=4)


def _sync_through(route: str, url: str, source: Path, state: SyncSettings) -> None:
    """One incremental sync of the SMALL tables, by the engine as the gate and the CLI call it,
    or by a Dagster run with the `migrate` job's (and the schedule's) run config; both keep
    the one shadow of ``state``. A Dagster run's checks must all pass, matches_d1 included."""
    if route == "engine":
        with psycopg.connect(url, autocommit=True) as conn, SqliteSource(source).snapshot() as s:
            sync_all(conn, s, SCHEMA, state.shadow_path, incremental=True, selected=SMALL_NAMES)
        return
    result = materialize(
        [*definitions.ASSETS, *definitions.ASSET_CHECKS],
        resources={
            "d1": D1Source(path=str(source)),
            "postgres": PostgresTarget(url=url),
            "sync": state,
        },
        selection=AssetSelection.assets(*(target_key(n) for n in SMALL_NAMES)),
        run_config=definitions.sync_run_config("incremental"),
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    summary = summarize(result)
    assert summary.success, summary.failure
    matches = [c for c in summary.checks if c.check == MATCHES_D1]
    assert len(matches) == len(SMALL_NAMES) and all(c.passed for c in matches), matches


def _assert_matches_d1_everywhere(url: str, source: Path) -> None:
    """No false alarm from the content check on any state the property reaches, whole or in
    either half (a duplicate's twin, a self-reference's parent in the other half): halves of
    blocks of rowids, as matches_d1 takes them, and of single rowids, which split these few
    rows finely."""
    with psycopg.connect(url, autocommit=True) as conn, SqliteSource(source).snapshot() as snap:
        for table in SMALL.tables:
            for part in (WHOLE, Slice(0, 2), Slice(1, 2), Slice(0, 2, 1), Slice(1, 2, 1)):
                found = verify_table(conn, snap, table, SCHEMA, part)
                assert found.passed, (table.name, str(part), found.samples)


class Killed(BaseException):
    """The process dies: nothing after it runs, no handler catches it."""


def _killed_in_the_commit_window(self: Shadow, *args: object) -> None:
    raise Killed  # Postgres has committed the table; its shadow write never happens


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rounds=_statements(),
    routes=st.lists(st.sampled_from(["engine", "migrate job", "killed"]), min_size=4, max_size=4),
)
def test_any_change_sequence_equals_a_fresh_migration(
    tmp_path_factory, new_database, rounds, routes
):
    """Each round syncs through the engine or the `migrate` job, or is killed in the commit
    window of its first table and has its changes undone in D1 before the next sync (so the
    shadow lags Postgres, which the next sync must notice).

    The suite's slowest test (about 100 s, plus 20 s to drop its databases): every example runs
    up to five syncs, each followed by a fresh migration into a new database to compare with
    and a whole matches_d1, so one example makes about five databases."""
    work = tmp_path_factory.mktemp("prop")
    source = new_d1(work / "d1.sqlite", [])
    synced, state = new_database(), SyncSettings(state_dir=str(work / "state"))
    _sync_through("engine", synced, source, state)
    for statements, route in zip(rounds, routes, strict=False):
        before = source.read_bytes()
        mutate(source, statements)
        if route == "killed":
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(Shadow, "apply", _killed_in_the_commit_window)
                patch.setattr(Shadow, "replace_all", _killed_in_the_commit_window)
                with pytest.raises(Killed):
                    _sync_through("engine", synced, source, state)
            source.write_bytes(before)  # the edits are undone
            route = "engine"
        _sync_through(route, synced, source, state)
        assert_like_fresh_migration(synced, source, new_database(), SMALL)
        _assert_matches_d1_everywhere(synced, source)


def test_a_sync_killed_midway_is_completed_by_the_next(tmp_path, new_database, monkeypatch):
    source = tmp_path / "d1.sqlite"
    build_sample_db(source, users=20, seed=9)
    synced, shadow = new_database(), tmp_path / "shadow.sqlite"
    sync(synced, source, shadow, incremental=True)
    user = first(source, "SELECT id FROM users WHERE id IN (SELECT user_id FROM habits) LIMIT 1")
    mutate(
        source,
        [
            f"UPDATE users SET name = 'Changed' WHERE id = '{user}'",
            f"UPDATE habits SET name = 'Changed too' WHERE user_id = '{user}'",
            f"DELETE FROM points_ledger WHERE user_id = '{user}'",
        ],
    )

    def die(self):  # Postgres has committed the table; the shadow never hears of it
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Shadow, "commit", die)
    with pytest.raises(KeyboardInterrupt):
        sync(synced, source, shadow, incremental=True)
    monkeypatch.undo()

    sync(synced, source, shadow, incremental=True)
    assert_like_fresh_migration(synced, source, new_database())
