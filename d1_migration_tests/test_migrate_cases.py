"""Each conversion and each bad-input case, through real SQLite and real Postgres.

One crafted D1 database holds a good and a bad row for every case; it is migrated table by
table (parents first) and the tests assert on what Postgres holds afterwards.
"""

import hashlib
import sqlite3
import uuid
from datetime import UTC, date, datetime

import psycopg
import pytest

from d1_migration.demo.sample_data import sqlite_ddl
from d1_migration.source.snapshot import SqliteSource
from d1_migration.spec.tables import SCHEMA
from d1_migration.target.ddl import ensure_schema, load_order
from d1_migration.target.load import migrate_table
from d1_migration.transforms import ID_NAMESPACE, convert_batch
from d1_migration_tests.helpers import assert_like_fresh_migration, dump, mutate, new_d1, sync

U1 = "AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE"  # upper case: normalised to lower case
U2 = "user_seed"  # not a UUID: becomes a UUIDv5
NOW = "'2026-01-06 10:11:12'"
USER_COLS = "id, name, email, emailVerified, approved, created_at, updated_at"

ROWS = [
    # users
    f"INSERT INTO users ({USER_COLS}, last_activity_at, tos_accepted_at) VALUES ('{U1}', 'One', "
    f"'one@x', 1767694272345, 1, {NOW}, '2026-01-06T12:11:12+02:00', '', '1767694272')",
    f"INSERT INTO users ({USER_COLS}) VALUES ('{U2}', 'Two', 'two@x', NULL, 0, "
    "'2026-01-06T10:11:12.345Z', 1767694272)",
    f"INSERT INTO users ({USER_COLS}) VALUES ('u3', 'T', 't@x', NULL, 1, '2026-02-30 00:00:00', "
    f"{NOW})",
    f"INSERT INTO users ({USER_COLS}) VALUES ('u4', 'F', 'f@x', NULL, 2, {NOW}, {NOW})",
    f"INSERT INTO users ({USER_COLS}) VALUES ('u5', 'a' || char(0) || 'b', 'n@x', NULL, 1, "
    f"{NOW}, {NOW})",
    f"INSERT INTO users ({USER_COLS}) VALUES ('u6', CAST(X'66ff6f' AS TEXT), 'u@x', NULL, 1, "
    f"{NOW}, {NOW})",
    f"INSERT INTO users ({USER_COLS}) VALUES ('u7', 'Y', 'y@x', NULL, 1, {NOW}, 'yesterday')",
    f"INSERT INTO users ({USER_COLS}) VALUES ('{U1.lower()}', 'Dup', 'dup@x', NULL, 1, {NOW}, "
    f"{NOW})",
    # accounts.created_at is derived from the user: the parent decides the reason
    "INSERT INTO accounts (id, userId, type, provider, providerAccountId) VALUES "
    f"('ac1', '{U1}', 'oauth', 'github', '1')",
    "INSERT INTO accounts (id, userId, type, provider, providerAccountId) VALUES "
    "('ac2', 'u3', 'oauth', 'github', '2')",
    "INSERT INTO accounts (id, userId, type, provider, providerAccountId) VALUES "
    "('ac3', 'nobody', 'oauth', 'github', '3')",
    # sessions: token hashed; a child of a quarantined user
    f"INSERT INTO sessions VALUES ('s1', 'tok-123', '{U1}', '2026-02-05T10:00:00.000Z')",
    "INSERT INTO sessions VALUES ('s2', 'secret-tok', 'u3', '2026-02-05T10:00:00.000Z')",
    # points_ledger: id-typed reference without FK, wrong type, out of range, missing parent
    f"INSERT INTO points_ledger (id, user_id, event_type, event_id, coins, xp, created_at) VALUES "
    f"('l1', '{U2}', 'focus', 'focus_1', 10, 5, {NOW})",
    f"INSERT INTO points_ledger (id, user_id, event_type, coins, xp, created_at) VALUES "
    f"('l2', '{U2}', 'focus', 'ten', 1, {NOW})",
    f"INSERT INTO points_ledger (id, user_id, event_type, coins, xp, created_at) VALUES "
    f"('l3', '{U2}', 'focus', 1, 3000000000, {NOW})",
    f"INSERT INTO points_ledger (id, user_id, event_type, coins, xp, created_at) VALUES "
    f"('l4', 'nobody', 'focus', 1, 1, {NOW})",
    # user_wallet: matching, drifted, CHECK violation
    f"INSERT INTO user_wallet (id, user_id, coins, xp, updated_at) VALUES ('w1', '{U2}', 10, 5, "
    f"{NOW})",
    f"INSERT INTO user_wallet (id, user_id, coins, xp, updated_at) VALUES ('w2', '{U1}', 99, 0, "
    f"{NOW})",
    f"INSERT INTO user_wallet (id, user_id, coins, xp, updated_at) VALUES ('w3', 'u4', -5, 0, "
    f"{NOW})",
    # JSON
    f"INSERT INTO activity_events VALUES ('a1', '{U1}', 'x', "
    f'\'{{"a":[1,2.5,{{"b":"é"}}]}}\', {NOW})',
    f"INSERT INTO activity_events VALUES ('a2', '{U1}', 'x', '{{\"a\":1', {NOW})",
    # valid JSON for SQLite, refused by Postgres (a lone surrogate): the per-row COPY fallback
    f"INSERT INTO activity_events VALUES ('a3', '{U1}', 'x', '{{\"s\":\"\\ud800\"}}', {NOW})",
    f"INSERT INTO activity_events VALUES ('a4', '{U1}', 'x', '{{\"s\":\"a\\u0000\"}}', {NOW})",
    # an escaped backslash before u0000 is plain text, not NUL
    f"INSERT INTO activity_events VALUES ('a5', '{U1}', 'x', '[\"\\\\u0000\"]', {NOW})",
    # exercises: TEXT[] with awkward strings, bad array, bad enum, ownership CHECK
    "INSERT INTO exercises (id, name, category, muscle_groups, equipment, created_at) VALUES "
    """('e1', 'Row', 'strength', '["chest","a,b","q\\"uote","back\\\\slash","ü"]', '[]', """
    f"{NOW})",
    "INSERT INTO exercises (id, name, category, muscle_groups, created_at) VALUES "
    f"""('e2', 'Bad', 'strength', '["x", 3]', {NOW})""",
    f"INSERT INTO exercises (id, name, category, created_at) VALUES ('e3', 'Yoga', 'yoga', {NOW})",
    "INSERT INTO exercises (id, name, category, is_builtin, user_id, created_at) VALUES "
    f"('e4', 'Mine', 'cardio', 1, '{U1}', {NOW})",
    "INSERT INTO exercises (id, name, category, equipment, created_at) VALUES "
    f"""('e5', 'Nul', 'other', '["a\\u0000b"]', {NOW})""",
    # hex -> BYTEA
    "INSERT INTO reference_tracks (id, user_id, title, r2_key, mime_type, bytes, sha256, "
    f"created_at, updated_at) VALUES ('t1', '{U1}', 'T', 'k', 'a', 5, 'abcd', {NOW}, {NOW})",
    "INSERT INTO reference_tracks (id, user_id, title, r2_key, mime_type, bytes, sha256, "
    f"created_at, updated_at) VALUES ('t2', '{U1}', 'T', 'k', 'a', 5, 'not-hex', {NOW}, {NOW})",
    # DATE
    "INSERT INTO quests (id, title, category, last_completed_date, created_at) VALUES "
    f"('q1', 'Q', 'c', '2026-01-05', {NOW})",
    "INSERT INTO quests (id, title, category, last_completed_date, created_at) VALUES "
    f"('q2', 'Q', 'c', '2026-01-05T10:00:00Z', {NOW})",
    # self-reference: a chain whose head is missing
    f"INSERT INTO calendar_events (id, user_id, title, start_time, created_at, updated_at) "
    f"VALUES ('c1', '{U1}', 'E', {NOW}, {NOW}, {NOW})",
    f"INSERT INTO calendar_events (id, user_id, title, start_time, parent_event_id, created_at, "
    f"updated_at) VALUES ('c2', '{U1}', 'E', {NOW}, 'c1', {NOW}, {NOW})",
    f"INSERT INTO calendar_events (id, user_id, title, start_time, parent_event_id, created_at, "
    f"updated_at) VALUES ('c3', '{U1}', 'E', {NOW}, 'gone', {NOW}, {NOW})",
    f"INSERT INTO calendar_events (id, user_id, title, start_time, parent_event_id, created_at, "
    f"updated_at) VALUES ('c4', '{U1}', 'E', {NOW}, 'c3', {NOW}, {NOW})",
    # FK to a key column
    "INSERT INTO skill_definitions (id, key, name, category, created_at) VALUES "
    f"('skill_focus', 'focus', 'Focus', 'p', {NOW})",
    f"INSERT INTO user_skills (id, user_id, skill_key, updated_at) VALUES ('k1', '{U1}', "
    f"'focus', {NOW})",
    f"INSERT INTO user_skills (id, user_id, skill_key, updated_at) VALUES ('k2', '{U1}', "
    f"'nope', {NOW})",
    # REAL in an INTEGER column; '' in a NOT NULL datetime
    f"INSERT INTO books (id, user_id, title, rating, created_at, updated_at) VALUES "
    f"('b1', '{U1}', 'B', 2.5, {NOW}, {NOW})",
    f"INSERT INTO habits (id, user_id, name, created_at, updated_at) VALUES ('h1', '{U1}', 'H', "
    f"'', {NOW})",
    # TEXT[] holding a lone surrogate escape, nullable and NOT NULL; a surrogate pair is fine
    f"INSERT INTO journal_entries (id, user_id, content, tags_json, created_at, updated_at) "
    f"""VALUES ('j1', '{U1}', 'c', '["ok","\\ud800"]', {NOW}, {NOW})""",
    f"INSERT INTO journal_entries (id, user_id, content, tags_json, created_at, updated_at) "
    f"""VALUES ('j2', '{U1}', 'c', '["\\ud83d\\ude00"]', {NOW}, {NOW})""",
    "INSERT INTO ignition_packs (id, key, name, category, items_json, created_at) VALUES "
    f"""('p1', 'k1', 'P', 'c', '["\\udc00x"]', {NOW})""",
    # numbers in datetime columns: emailVerified's flag rule, and instants the app never wrote
    f"INSERT INTO users ({USER_COLS}) VALUES ('v1', 'V', 'v1@x', 1, 1, {NOW}, {NOW})",
    f"INSERT INTO users ({USER_COLS}) VALUES ('v0', 'V', 'v0@x', 0, 1, {NOW}, {NOW})",
    f"INSERT INTO users ({USER_COLS}) VALUES ('v5', 'V', 'v5@x', 5, 1, {NOW}, {NOW})",
    f"INSERT INTO users ({USER_COLS}) VALUES ('v2000', 'V', 'v2000@x', 978307199, 1, {NOW}, {NOW})",
    f"INSERT INTO users ({USER_COLS}) VALUES ('v2001', 'V', 'v2001@x', 978307200, 1, {NOW}, {NOW})",
    f"INSERT INTO users ({USER_COLS}, last_activity_at) VALUES ('vms', 'V', 'vms@x', NULL, 1, "
    f"{NOW}, {NOW}, '500000000000')",
    f"INSERT INTO users ({USER_COLS}) VALUES ('vreal', 'V', 'vr@x', 1.5, 1, {NOW}, {NOW})",
    # ids with no FK: kept as UUIDs and their text recorded; a skill key stays text
    f"INSERT INTO points_ledger (id, user_id, event_type, event_id, created_at) VALUES "
    f"('l5', '{U2}', 'focus', '{U1}', {NOW})",
    "INSERT INTO universal_quests (id, title, skill_id, created_by, created_at, updated_at) "
    f"VALUES ('uq_focus_1', 'Q', 'proficiency', 'system', {NOW}, {NOW})",
    "INSERT INTO universal_quests (id, title, created_by, created_at, updated_at) "
    f"VALUES ('quest-1767694272345', 'Q', '{U1.lower()}', {NOW}, {NOW})",
    "INSERT INTO user_quest_progress (id, user_id, quest_id, created_at, updated_at) "
    f"VALUES ('qp1', '{U1}', 'uq_focus_1', {NOW}, {NOW})",
    "INSERT INTO user_quest_progress (id, user_id, quest_id, created_at, updated_at) "
    f"VALUES ('qp2', '{U1}', 'uq_gone', {NOW}, {NOW})",
]

EXPECTED_REJECTS = {
    ("users", "u3", "impossible_datetime"),
    ("users", "u4", "bad_boolean"),
    ("users", "u5", "nul_character"),
    ("users", "u6", "invalid_utf8"),
    ("users", "u7", "bad_datetime"),
    ("users", U1.lower(), "duplicate_key"),
    ("sessions", "s2", "parent_quarantined"),
    ("accounts", "ac2", "parent_quarantined"),
    ("accounts", "ac3", "missing_parent"),
    ("points_ledger", "l2", "wrong_type"),
    ("points_ledger", "l3", "out_of_range"),
    ("points_ledger", "l4", "missing_parent"),
    ("user_wallet", "w3", "check_violation"),  # also has a quarantined parent: CHECK is first
    ("activity_events", "a2", "bad_json"),
    ("activity_events", "a3", "postgres_rejected"),
    ("exercises", "e5", "nul_character"),
    ("activity_events", "a4", "nul_character"),
    ("exercises", "e2", "bad_text_array"),
    ("exercises", "e3", "bad_enum"),
    ("exercises", "e4", "check_violation"),
    ("reference_tracks", "t2", "bad_hex"),
    ("quests", "q2", "date_has_time"),
    ("calendar_events", "c3", "missing_parent"),
    ("calendar_events", "c4", "parent_quarantined"),
    ("user_skills", "k2", "missing_parent"),
    ("books", "b1", "wrong_type"),
    ("habits", "h1", "not_null"),
    ("journal_entries", "j1", "bad_text_array"),
    ("ignition_packs", "p1", "bad_text_array"),
    ("users", "v5", "implausible_datetime"),
    ("users", "v2000", "implausible_datetime"),
    ("users", "vms", "implausible_datetime"),
    ("users", "vreal", "implausible_datetime"),
}


def v5(text: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, text))


def migrate_all(conn: psycopg.Connection, source: SqliteSource) -> dict:
    ensure_schema(conn, SCHEMA)
    with source.snapshot() as snapshot:
        return {
            t.name: migrate_table(conn, snapshot, t, SCHEMA, run_id="test")
            for t in load_order(SCHEMA)
        }


@pytest.fixture(scope="module")
def migrated(tmp_path_factory, pg_admin_url):
    path = tmp_path_factory.mktemp("d1") / "cases.sqlite"
    with sqlite3.connect(path) as d1:
        d1.executescript(sqlite_ddl(SCHEMA))
        for statement in ROWS:
            d1.execute(statement)
    name = f"d1mt_cases_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(pg_admin_url, dbname=name)
    with psycopg.connect(url, autocommit=True) as conn:
        first = migrate_all(conn, SqliteSource(path))
        yield conn, SqliteSource(path), first
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def one(conn, sql, *params):
    return conn.execute(sql, params).fetchone()


def test_every_bad_row_is_quarantined_with_its_reason(migrated):
    conn, _, _ = migrated
    rows = conn.execute(
        "SELECT source_table, source_pk, reason_code, reason FROM d1_migration.rejected_rows "
        "WHERE resolved_at IS NULL"
    ).fetchall()
    assert {r[:3] for r in rows} == EXPECTED_REJECTS
    assert all(len(r[3]) > 30 for r in rows)  # a sentence, not a code


def test_invariant_source_equals_target_plus_quarantine(migrated):
    conn, _, results = migrated
    for name, result in results.items():
        quarantined = one(
            conn,
            "SELECT count(*) FROM d1_migration.rejected_rows WHERE "
            "source_table = %s AND resolved_at IS NULL",
            name,
        )[0]
        target = one(conn, f'SELECT count(*) FROM "{name}"')[0]
        assert result.source_rows == target + quarantined, name


def test_ids_are_normalised_or_mapped_and_recorded(migrated):
    conn, _, _ = migrated
    assert one(conn, "SELECT name FROM users WHERE id = %s", U1.lower())[0] == "One"
    assert one(conn, "SELECT name FROM users WHERE id = %s", v5(U2))[0] == "Two"
    assert one(conn, "SELECT user_id, event_id FROM points_ledger WHERE id = %s", v5("l1")) == (
        uuid.UUID(v5(U2)),
        uuid.UUID(v5("focus_1")),
    )
    id_map = dict(
        conn.execute(
            "SELECT source_id, "
            "target_id::text FROM d1_migration.id_map WHERE source_table = 'users'"
        )
    )
    assert id_map == {U1: U1.lower(), U2: v5(U2), **{u: v5(u) for u in ("v0", "v1", "v2001")}}
    assert one(conn, "SELECT count(*) FROM user_skills WHERE skill_key = 'focus'")[0] == 1


def test_datetimes_in_every_form(migrated):
    conn, _, _ = migrated
    expected = datetime(2026, 1, 6, 10, 11, 12, tzinfo=UTC)
    row = one(
        conn,
        "SELECT email_verified, created_at, updated_at, last_activity_at, "
        "tos_accepted_at, approved, tos_accepted FROM users WHERE id = %s",
        U1.lower(),
    )
    assert row == (
        expected.replace(microsecond=345000),
        expected,
        expected,
        None,
        expected,
        True,
        False,
    )
    row = one(conn, "SELECT created_at, updated_at, approved FROM users WHERE id = %s", v5(U2))
    assert row == (expected.replace(microsecond=345000), expected, False)
    assert one(conn, "SELECT last_completed_date FROM quests WHERE id = %s", v5("q1"))[0] == date(
        2026, 1, 5
    )


def test_derived_column_comes_from_the_parent_row(migrated):
    conn, _, _ = migrated
    created = one(conn, "SELECT created_at FROM accounts WHERE id = %s", v5("ac1"))[0]
    assert created == datetime(2026, 1, 6, 10, 11, 12, tzinfo=UTC)  # users.created_at of U1


def test_json_arrays_and_bytes(migrated):
    conn, _, _ = migrated
    assert one(conn, "SELECT metadata FROM activity_events WHERE id = %s", v5("a1"))[0] == {
        "a": [1, 2.5, {"b": "é"}]
    }
    assert one(conn, "SELECT muscle_groups, equipment FROM exercises WHERE id = %s", v5("e1")) == (
        ["chest", "a,b", 'q"uote', "back\\slash", "ü"],
        [],
    )
    assert (
        one(conn, "SELECT sha256 FROM reference_tracks WHERE id = %s", v5("t1"))[0] == b"\xab\xcd"
    )


def test_session_token_is_hashed_and_never_stored(migrated):
    conn, _, _ = migrated
    token_hash, created, active = one(
        conn, "SELECT token_hash, created_at, last_active_at FROM sessions WHERE id = %s", v5("s1")
    )
    assert bytes(token_hash) == hashlib.sha256(b"tok-123").digest()
    assert created == active == datetime(2026, 1, 6, 10, 0, tzinfo=UTC)
    dump = conn.execute("SELECT raw_row::text FROM d1_migration.rejected_rows").fetchall()
    assert "secret-tok" not in str(dump) and "tok-123" not in str(dump)
    raw = one(conn, "SELECT raw_row FROM d1_migration.rejected_rows WHERE source_pk = 's2'")[0]
    assert raw["sessionToken"] == {"$sha256": hashlib.sha256(b"secret-tok").hexdigest()}


def test_raw_row_keeps_every_original_value(migrated):
    conn, _, _ = migrated
    raw = one(conn, "SELECT raw_row FROM d1_migration.rejected_rows WHERE source_pk = 'u6'")[0]
    assert raw["name"] == {"$text_base64": "Zv9v", "$note": "not valid UTF-8"}
    raw = one(conn, "SELECT raw_row FROM d1_migration.rejected_rows WHERE source_pk = 'l2'")[0]
    assert raw["coins"] == "ten" and raw["xp"] == 1 and raw["user_id"] == U2
    raw = one(conn, "SELECT raw_row FROM d1_migration.rejected_rows WHERE source_pk = 'b1'")[0]
    assert raw["rating"] == 2.5


def test_rerun_changes_nothing_and_duplicates_nothing(migrated):
    conn, source, _ = migrated
    before = conn.execute(
        "SELECT source_table, source_pk, reason FROM d1_migration.rejected_rows ORDER BY 1, 2"
    ).fetchall()
    results = migrate_all(conn, source)
    assert all(r.inserted == r.updated == r.deleted == 0 for r in results.values())
    after = conn.execute(
        "SELECT source_table, source_pk, reason FROM d1_migration.rejected_rows ORDER BY 1, 2"
    ).fetchall()
    assert after == before


def test_postgres_refusal_is_quarantined_with_its_message(migrated):
    conn, _, _ = migrated
    reason = one(conn, "SELECT reason FROM d1_migration.rejected_rows WHERE source_pk = 'a3'")[0]
    assert reason.startswith("Postgres refused the row: ") and "surrogate" in reason
    assert one(conn, "SELECT metadata FROM activity_events WHERE id = %s", v5("a5"))[0] == [
        "\\u0000"
    ]


def test_a_failed_load_leaves_the_previous_state(migrated, monkeypatch):
    conn, source, _ = migrated
    table = SCHEMA.table("points_ledger")
    before = conn.execute("SELECT * FROM points_ledger ORDER BY id").fetchall()
    quarantine = conn.execute("SELECT * FROM d1_migration.rejected_rows ORDER BY 1, 2").fetchall()
    conn.execute("DELETE FROM points_ledger")  # the load would have to re-insert everything
    conn.execute(
        "INSERT INTO points_ledger (id, user_id, event_type) VALUES (%s, %s, 'kept')",
        [uuid.uuid4(), U1.lower()],
    )
    kept = conn.execute("SELECT * FROM points_ledger").fetchall()
    calls = []

    def failing_convert(*args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("source went away mid-table")
        return convert_batch(*args)

    monkeypatch.setattr("d1_migration.target.load.convert_batch", failing_convert)
    with source.snapshot() as snapshot, pytest.raises(RuntimeError):
        migrate_table(conn, snapshot, table, SCHEMA, batch_rows=1)
    assert conn.execute("SELECT * FROM points_ledger").fetchall() == kept
    assert conn.execute("SELECT * FROM d1_migration.rejected_rows ORDER BY 1, 2").fetchall() == (
        quarantine
    )
    monkeypatch.undo()
    with source.snapshot() as snapshot:
        migrate_table(conn, snapshot, table, SCHEMA)
    assert conn.execute("SELECT * FROM points_ledger ORDER BY id").fetchall() == before


def raw_and_reason(conn, table, pk):
    return one(
        conn,
        "SELECT raw_row, reason FROM d1_migration.rejected_rows "
        "WHERE source_table = %s AND source_pk = %s",
        table,
        pk,
    )


def test_a_lone_surrogate_in_a_text_array_is_quarantined_naming_the_element(migrated):
    conn, _, _ = migrated
    raw, reason = raw_and_reason(conn, "journal_entries", "j1")
    assert raw["tags_json"] == '["ok","\\ud800"]'  # the D1 text, exactly
    assert reason.startswith('tags_json[1] = "\\ud800" holds a lone UTF-16 surrogate')
    raw, reason = raw_and_reason(conn, "ignition_packs", "p1")  # NOT NULL: not "fill it in"
    assert raw["items_json"] == '["\\udc00x"]'
    assert reason.startswith('items_json[0] = "\\udc00x" holds a lone UTF-16 surrogate')
    assert one(conn, "SELECT tags FROM journal_entries WHERE id = %s", v5("j2"))[0] == ["😀"]


def test_numbers_in_datetime_columns(migrated):
    conn, _, _ = migrated
    created = datetime(2026, 1, 6, 10, 11, 12, tzinfo=UTC)
    verified = dict(
        conn.execute(
            "SELECT id::text, email_verified FROM users WHERE id = ANY(%s)",
            [[v5("v1"), v5("v0"), v5("v2001")]],
        ).fetchall()
    )
    assert verified == {  # 1: the user's created_at (the team's rule); 0: not verified
        v5("v1"): created,
        v5("v0"): None,
        v5("v2001"): datetime(2001, 1, 1, tzinfo=UTC),
    }
    for pk, value in [("v5", "'5'"), ("v2000", "'978307199'"), ("vms", "'500000000000'")]:
        raw, reason = raw_and_reason(conn, "users", pk)
        assert f"= {value} read as epoch seconds/milliseconds is before 2001" in reason
    raw, reason = raw_and_reason(conn, "users", "vreal")
    assert raw["emailVerified"] == 1.5 and reason.startswith("emailVerified = '1.5' read as")


def test_ids_without_fk_keep_their_d1_text(migrated):
    conn, _, _ = migrated
    skill, creator = one(
        conn, "SELECT skill_id, created_by FROM universal_quests WHERE id = %s", v5("uq_focus_1")
    )
    assert (skill, creator) == ("proficiency", uuid.UUID(v5("system")))
    progress = one(conn, "SELECT quest_id FROM user_quest_progress WHERE id = %s", v5("qp1"))
    assert progress == (uuid.UUID(v5("uq_focus_1")),)  # the same UUID as the quest it names
    ref_map = set(
        conn.execute(
            "SELECT source_table, target_pk, column_name, source_text, target_id::text "
            "FROM d1_migration.ref_map"
        ).fetchall()
    )
    assert ref_map == {
        ("points_ledger", v5("l1"), "event_id", "focus_1", v5("focus_1")),
        ("points_ledger", v5("l5"), "event_id", U1, U1.lower()),
        ("universal_quests", v5("uq_focus_1"), "created_by", "system", v5("system")),
        ("user_quest_progress", v5("qp1"), "quest_id", "uq_focus_1", v5("uq_focus_1")),
        ("user_quest_progress", v5("qp2"), "quest_id", "uq_gone", v5("uq_gone")),
    }


def test_ref_map_follows_every_change_of_a_resync(tmp_path, new_database):
    user = f"INSERT INTO users (id, email, created_at) VALUES ('{U2}', 'a@x', {NOW})"
    quest = "INSERT INTO universal_quests (id, title, created_by) VALUES ('{0}', 'Q', '{1}')"
    source = new_d1(
        tmp_path / "d1.sqlite",
        [
            user,
            quest.format("uq1", "system"),
            quest.format("uq2", "admin_1"),
            f"INSERT INTO user_quest_progress (id, user_id, quest_id) VALUES ('p1', '{U2}', 'uq1')",
        ],
    )
    synced, shadow = new_database(), tmp_path / "shadow.sqlite"
    sync(synced, source, shadow, incremental=True)
    mutate(
        source,
        [
            "UPDATE universal_quests SET created_by = 'admin_2' WHERE id = 'uq1'",
            "UPDATE universal_quests SET created_by = 'created' || char(0) WHERE id = 'uq2'",
            "DELETE FROM user_quest_progress WHERE id = 'p1'",
            quest.format("uq3", U1),
        ],
    )
    results = sync(synced, source, shadow, incremental=True)
    assert results["universal_quests"].mode == results["user_quest_progress"].mode == "incremental"
    assert_like_fresh_migration(synced, source, new_database())
    assert dump(synced)["ref_map"] == [
        repr(("universal_quests", v5("uq1"), "created_by", "admin_2", uuid.UUID(v5("admin_2")))),
        repr(("universal_quests", v5("uq3"), "created_by", U1, uuid.UUID(U1.lower()))),
    ]


def test_a_target_synced_before_ref_map_is_brought_up_to_date(tmp_path, new_database):
    """What the previous version left: skill keys as UUIDv5s, no ref_map; the next
    incremental sync must still end where a fresh migration does."""
    source = new_d1(
        tmp_path / "d1.sqlite",
        [
            f"INSERT INTO users (id, email, created_at) VALUES ('{U2}', 'a@x', {NOW})",
            "INSERT INTO universal_quests (id, title, skill_id, created_by) "
            "VALUES ('uq1', 'Q', 'proficiency', 'system')",
            f"INSERT INTO points_ledger (id, user_id, event_type, event_id) "
            f"VALUES ('l1', '{U2}', 'focus', 'focus_1')",
        ],
    )
    synced, shadow = new_database(), tmp_path / "shadow.sqlite"
    sync(synced, source, shadow, incremental=True)
    with psycopg.connect(synced, autocommit=True) as conn:
        conn.execute("DROP TABLE d1_migration.ref_map")
        conn.execute(
            "ALTER TABLE universal_quests ALTER COLUMN skill_id TYPE uuid "
            f"USING '{v5('proficiency')}'::uuid"
        )
    results = sync(synced, source, shadow, incremental=True)
    assert {r.mode for r in results.values()} == {"full"}
    assert_like_fresh_migration(synced, source, new_database())
