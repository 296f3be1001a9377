"""A synthetic D1 database shaped like the real one, for the demo, the tests and the benchmarks.

Every value comes from the spec (``rows.py``: each column's kind and constraints), so a column
added to ``tables.py`` needs no edit here. This module holds only what the spec cannot say: how
many rows each table has per user (the real database's proportions, which the benchmarks keep),
the seed rows' readable text ids ('skill_focus'), the wallet that must equal its ledger (but
drifts for some users), and, with ``bad_rows``, one deliberately bad row per failure the
migration must quarantine, each listed in ``SampleSummary.rejects`` so a test can compare the
quarantine with the truth.
"""

from __future__ import annotations

import gc
import json
import os
import random
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from pathlib import Path
from typing import cast

from d1_migration.demo.rows import NOW, START, TAGS, Node, Row, RowFactory, d1_columns
from d1_migration.spec.model import Schema, Table
from d1_migration.spec.tables import SCHEMA


@dataclass(frozen=True)
class ExpectedReject:
    table: str
    source_pk: str  # the D1 primary-key text; for composite keys json.dumps([v1, v2])
    reason_code: str


@dataclass(frozen=True)
class SampleSummary:
    row_counts: dict[str, int]
    rejects: tuple[ExpectedReject, ...]
    drifted_wallet_users: tuple[str, ...]  # D1 user ids whose wallet != the sum of their ledger


# -- DDL ----------------------------------------------------------------------------------------

# Postgres defaults in the spec, as D1 writes them.
_D1_DEFAULTS = {"now()": "(datetime('now'))", "true": "1", "false": "0"}


def _q(name: str) -> str:
    """Quote an identifier: D1 column names include keywords such as key, date and action."""
    return '"' + name.replace('"', '""') + '"'


def _create_table(schema: Schema, table: Table) -> str:
    lines = []
    for c in d1_columns(table):
        parts = [_q(c.source_name), c.source_type]
        if table.primary_key == (c.name,):
            parts.append("PRIMARY KEY")
        elif not c.nullable:
            parts.append("NOT NULL")
        if c.default is not None and table.primary_key != (c.name,):
            parts.append(f"DEFAULT {_D1_DEFAULTS.get(c.default, c.default)}")
        if c.unique:
            parts.append("UNIQUE")
        lines.append(" ".join(parts))
    if len(table.primary_key) > 1:
        lines.append(f"PRIMARY KEY ({', '.join(map(_q, table.source_pk))})")
    for c in d1_columns(table):
        if c.parent:
            parent_table, parent_column = c.parent
            target = schema.table(parent_table).column(parent_column).source_name
            fk = f"FOREIGN KEY ({_q(c.source_name)}) REFERENCES {_q(parent_table)}({_q(target)})"
            lines.append(fk + (f" ON DELETE {c.on_delete}" if c.on_delete else ""))
    body = ",\n    ".join(lines)
    return f"CREATE TABLE {_q(table.name)} (\n    {body}\n);\n"


def sqlite_ddl(schema: Schema) -> str:
    """D1-shaped CREATE TABLEs from the spec, so fixtures need no copy of the real schema file.

    No CHECKs and no multi-column UNIQUEs (the spec adds some D1 lacks, such as accounts'
    (provider, providerAccountId)): the fixture's bad rows must be storable, as they were in D1.
    """
    return "\n".join(_create_table(schema, t) for t in schema.tables)


# -- what the spec cannot say ---------------------------------------------------------------------


@dataclass(frozen=True)
class Per:
    """Rows written for each row of ``parent`` (each user, each habit): a number drawn from
    ``counts``, for a share ``p`` of the parents, and for users who have ``only_with`` rows.
    ``values`` fixes D1 columns whose rule spans columns (a CHECK over two flags)."""

    parent: str
    counts: Sequence[int] = (1,)
    p: float = 1.0
    values: Mapping[str, object] = field(default_factory=dict)
    only_with: str | None = None


@dataclass(frozen=True)
class ByAdmins:
    """Rows an admin writes for everybody: ``base`` plus one per ``per_users`` users."""

    base: int
    per_users: int


# Sizes of the real database, per user: 10,000 users give about 617,000 rows.
PLANS: dict[str, Per | ByAdmins] = {
    "accounts": Per("users", (1, 1, 1, 1, 2)),
    "sessions": Per("users", (0, 1, 1, 2)),
    "verification_tokens": Per("users", p=0.1),
    "authenticators": Per("users", p=0.1),
    "user_settings": Per("users", p=0.9),
    "user_interests": Per("users", (0, 1, 2)),
    "user_ui_modules": Per("users", (0, 1, 2)),
    "user_onboarding_state": Per("users", p=0.85),
    "points_ledger": Per("users", range(5, 26)),
    "activity_events": Per("users", range(3, 14)),
    "user_skills": Per("users", (0, 1, 2, 3)),
    "user_achievements": Per("users", (0, 1, 2)),
    "user_streaks": Per("users", (0, 1, 2)),
    "user_purchases": Per("users", (1, 2), p=0.4),
    "focus_sessions": Per("users", range(2, 11)),
    "focus_pause_state": Per("users", p=0.15),
    "quests": Per("users", p=0.4),
    "user_quest_progress": Per("users", (0, 1)),
    "habits": Per("users", (0, 1, 2, 3)),
    "habit_logs": Per("habits", (0, 1, 2, 3)),
    "goals": Per("users", (1, 2), p=0.4),
    "goal_milestones": Per("goals", (0, 1, 2, 3)),
    # exercises_ownership: a user's own exercise is custom, never built in
    "exercises": Per("users", p=0.05, values={"is_custom": 1, "is_builtin": 0}),
    "workouts": Per("users", (1, 2), p=0.25),
    "workout_sections": Per("workouts", (2,)),
    "workout_exercises": Per("workout_sections", (1, 2)),
    "workout_sessions": Per("workouts", (1, 2)),
    "exercise_sets": Per("workout_sessions", range(2, 5)),
    "personal_records": Per("workout_sessions", p=0.3),
    "training_programs": Per("users", p=0.2, only_with="workouts"),
    "program_weeks": Per("training_programs", range(2, 5)),
    "program_workouts": Per("program_weeks"),
    "books": Per("users", (1, 2), p=0.4),
    "reading_sessions": Per("books", (0, 1, 2, 3)),
    "user_lesson_progress": Per("users", (0, 1)),
    "user_drill_stats": Per("users", (0, 1)),
    "flashcard_decks": Per("users", p=0.15),
    "flashcards": Per("flashcard_decks", range(3, 9)),
    "journal_entries": Per("users", (0, 1, 2)),
    "daily_plans": Per("users", (0, 1, 2)),
    "plan_templates": Per("users", p=0.05),
    "calendar_events": Per("users", (0, 1, 2, 3)),
    "reference_tracks": Per("users", (1, 1, 2), p=0.15),
    "track_analysis_cache": Per("reference_tracks", p=0.6),
    "infobase_entries": Per("users", p=0.1),
    "ideas": Per("users", (0, 1)),
    "feedback": Per("users", p=0.03),
    "notifications": Per("users", (0, 1, 2)),
    "market_items": ByAdmins(3, per_users=1000),
    "admin_audit_log": ByAdmins(3, per_users=25),
    "access_requests": ByAdmins(2, per_users=20),
}  # users and user_wallet: populate(), which knows who is special
# Id columns without FK, and the table whose ids they hold (text ids, remapped to UUIDv5).
LINKS = {
    "user_quest_progress.quest_id": "universal_quests.id",
    "user_onboarding_state.current_step_id": "onboarding_steps.id",
}

_SEED_TIME = 1_767_690_000  # 2026-01-06 09:00 UTC: 0100_master_reset.sql


def _names(text: str) -> list[str]:
    """Names written as one string, which keeps long lists of seed ids readable."""
    return text.split()


_SKILLS = _names("focus learning fitness creativity planning production")
_TOPICS = _names("intervals chords scales rhythm harmony production")
_DRILLS = {  # id: topic
    "drill_intervals_asc": "intervals",
    "drill_intervals_desc": "intervals",
    "drill_intervals_harm": "intervals",
    "drill_chords_triads": "chords",
    "drill_chords_7th": "chords",
    "drill_rhythm_basic": "rhythm",
    "drill_note_id": "intervals",
}


def _ids(ids: str, **fixed: object) -> tuple[Row, ...]:
    return tuple({"id": i, **fixed} for i in _names(ids))


# The seed rows of 0100_master_reset.sql: their readable text ids (and the keys and parents
# other rows refer to) carry meaning; every other value comes from the spec.
SEEDS: dict[str, tuple[Row, ...]] = {
    "db_metadata": tuple(
        {"key": k}
        for k in _names("db_version db_version_name schema_created_at consolidation_date")
    ),
    "skill_definitions": tuple({"id": f"skill_{k}", "key": k} for k in _SKILLS),
    "achievement_definitions": tuple(
        {"id": f"ach_{k}", "key": k}
        for k in _names(
            "first_focus focus_streak_3 focus_streak_7 first_quest quest_master first_workout "
            "bookworm"
        )
    ),
    "market_items": _ids(
        "item_theme_dark item_theme_ocean item_boost_xp item_boost_coins item_treat_coffee "
        "item_badge_early"
    ),
    "onboarding_flows": _ids("flow_main_v1"),
    "onboarding_steps": _ids(
        "step_1_welcome step_2_interests step_3_intensity step_4_focus_intro step_5_quests_intro "
        "step_6_ignitions step_7_progress step_8_focus_duration step_9_gamification "
        "step_10_complete",
        flow_id="flow_main_v1",
    ),
    "learn_topics": tuple({"id": f"topic_{k}", "key": k} for k in _TOPICS),
    "learn_lessons": tuple(
        {"id": f"lesson_{k}_{n}", "topic_id": f"topic_{k}"} for k in _TOPICS for n in (1, 2, 3)
    ),
    "learn_drills": tuple({"id": d, "topic_id": f"topic_{k}"} for d, k in _DRILLS.items()),
    "quests": _ids(
        "quest_first_focus quest_explore_app quest_set_goal quest_try_ignition quest_ear_training"
    ),
    "universal_quests": _ids(
        "uq_focus_1 uq_focus_3 uq_habit_1 uq_learn_1 uq_workout_1 uq_weekly_focus "
        "uq_weekly_habits uq_weekly_learn"
    ),
    "ignition_packs": (
        *_ids("pack_5min_reset pack_creative_spark pack_movement pack_focus_prep"),
        # every string a TEXT[] conversion must escape, unescaped non-ASCII
        {"id": "pack_studio_odds", "items_json": json.dumps(TAGS, ensure_ascii=False)},
    ),
    "daw_shortcuts": _ids("abl_play abl_record abl_undo abl_duplicate abl_split fl_pattern"),
    "glossary_terms": _ids("gloss_bpm gloss_eq gloss_compression gloss_reverb gloss_sidechain"),
    "exercises": _ids(  # built in, so owned by nobody (exercises_ownership)
        "ex_bench_press ex_back_squat ex_deadlift ex_pull_up ex_push_up ex_plank ex_running "
        "ex_rowing ex_box_jump ex_hamstring_stretch ex_farmer_walk",
        is_builtin=1,
        is_custom=0,
    ),
    "recipe_templates": _ids("recipe_lofi_beat recipe_house_groove recipe_vocal_chain"),
    "plan_templates": _ids("tpl_morning_routine"),
    "infobase_entries": _ids("info_getting_started"),
}


class _Raw(str):
    """A SQL expression written verbatim into the INSERT, for values Python should not bind:
    invalid UTF-8 (Python strings cannot hold it) and NUL (built by SQLite, as D1 would store it).
    """


# One row per value-level failure, each a valid row but for this one D1 value.
_BAD_VALUES: tuple[tuple[str, str, str, object], ...] = (  # table, reason code, column, value
    ("focus_sessions", "bad_datetime", "started_at", "yesterday"),
    ("focus_sessions", "bad_enum", "mode", "nap"),
    ("focus_sessions", "check_violation", "duration", 0),
    ("habit_logs", "impossible_datetime", "completed_at", "2026-02-30 10:00:00"),
    ("activity_events", "impossible_datetime", "created_at", "2026-13-01T00:00:00Z"),
    ("activity_events", "bad_json", "metadata_json", '{"a":1'),
    ("exercises", "bad_text_array", "muscle_groups", '["chest", 3]'),
    ("journal_entries", "bad_text_array", "tags_json", '{"a":1}'),
    ("journal_entries", "nul_character", "content", _Raw("'a' || char(0) || 'b'")),
    ("ideas", "invalid_utf8", "content", _Raw("CAST(X'66ff6f' AS TEXT)")),
    ("books", "wrong_type", "rating", 2.5),
    ("points_ledger", "wrong_type", "coins", "ten"),
    ("points_ledger", "out_of_range", "xp", 3_000_000_000),
    ("quests", "bad_boolean", "is_active", 2),
    ("reference_tracks", "bad_hex", "sha256", "not-hex"),
    # the seconds left, written into paused_at: a number, but no instant the app wrote
    ("focus_sessions", "implausible_datetime", "paused_at", 1500),
)


def _user_plans(schema: Schema) -> list[tuple[str, Per]]:
    """The tables of a user's rows, each after every table it draws from."""
    graph: dict[str, dict[str, None]] = {}
    for name, plan in PLANS.items():
        if isinstance(plan, Per):
            table = schema.table(name)
            links = [v.split(".")[0] for k, v in LINKS.items() if k.startswith(f"{name}.")]
            deps = [*table.parents, plan.parent, *([plan.only_with] if plan.only_with else [])]
            graph[name] = dict.fromkeys(d for d in [*deps, *links] if d != name)
    order = TopologicalSorter(graph).static_order()
    return [(t, plan) for t in order if isinstance(plan := PLANS.get(t), Per)]


class _Sample:
    """The rows of one sample database; one instance per database, so the RNG stream is fixed."""

    def __init__(self, schema: Schema, rng: random.Random) -> None:
        self.schema, self.rng = schema, rng
        self.factory = RowFactory(schema, rng, LINKS)
        self.rejects: list[ExpectedReject] = []
        self.raw: set[int] = set()  # id() of the rows holding _Raw values: their own INSERT
        self.user_plans = _user_plans(schema)
        self.showcase = False  # set while writing the user who owns one row in every table

    def reject(self, code: str, node: Node | None) -> Node:
        """Record a deliberately bad row, written like any other."""
        if node is None:
            raise RuntimeError(f"no {code} row could be written: the spec left nothing valid")
        if any(isinstance(v, _Raw) for v in node.row.values()):
            self.raw.add(id(node.row))
        key = [node.row[c] for c in self.schema.table(node.table).source_pk]
        source_pk = str(key[0]) if len(key) == 1 else json.dumps(key)
        self.rejects.append(ExpectedReject(node.table, source_pk, code))
        return node

    def populate(self, users: int, bad_rows: bool) -> tuple[str, ...]:
        """Fill every table; returns the ids of the users whose wallet drifts from the ledger."""
        rng, factory = self.rng, self.factory
        for table in (t.name for t in _seed_order(self.schema)):
            for fixed in SEEDS.get(table, ()):
                factory.make(table, None, fixed, t=_SEED_TIME, pool=factory.shared[table])
        order = rng.sample(range(users), users)
        n_upper, n_drift = max(3, users // 100), max(2, users // 100)
        dup_source, no_wallet, negative_wallet = order[:3]
        upper = set(order[3 : 3 + n_upper])
        drifted = set(order[3 + n_upper : 3 + n_upper + n_drift])
        admin_ids = order[-2:]
        members = [self.user(upper=n in upper, admin=n in admin_ids) for n in range(users)]
        self.admin_rows([members[n] for n in admin_ids], users)
        for n, user in enumerate(members):
            if n == no_wallet:
                wallet = "none"  # hosts the bad ledger rows: no wallet to drift from
            elif n == negative_wallet and bad_rows:
                wallet = "negative"
            elif n in drifted:
                wallet = "drift"
            else:
                wallet = "match" if rng.random() < 0.9 else "none"
            self.showcase = n == admin_ids[0]
            self.owned(user)
            self.wallet(user, wallet)
        self.showcase = False
        factory.new_owner()
        if bad_rows:
            self.bad_rows(members, members[dup_source], members[no_wallet])
        return tuple(str(members[n].row["id"]) for n in sorted(drifted))

    def user(self, *, upper: bool = False, admin: bool = False, **fixed: object) -> Node:
        """A user created between the app's launch and a week before the export; ``upper``:
        an UPPERCASE id (rows refer to it in either case), as some of the app's paths wrote."""
        fixed.setdefault("id", self.factory.uuid().upper() if upper else self.factory.uuid())
        if admin:  # approved by hand, marked with a flag: the migration's rule applies
            fixed |= {"role": "admin", "emailVerified": 1}
        t0 = self.rng.randrange(START, NOW - 7 * 86_400)
        node = self.factory.make("users", None, fixed, t=t0)
        assert node is not None  # users reference nothing
        return node

    def admin_rows(self, admins: list[Node], users: int) -> None:
        """Rows admins write for everybody; universal quests as the admin API writes them: a
        skill key in skill_id, and the admin's id in created_by, or 'system' without a session."""
        factory = self.factory
        for table, plan in PLANS.items():
            if isinstance(plan, ByAdmins):
                for _ in range(plan.base + users // plan.per_users):
                    factory.make(table, self.rng.choice(admins), pool=factory.shared[table])
        for n, (creator, skill) in enumerate(
            ((admins[0].row["id"], "proficiency"), ("system", "focus"))
        ):
            written = (NOW - (n + 2) * 86_400) * 1000
            fixed = {"id": f"quest-{written}", "created_by": creator, "skill_id": skill}
            factory.make(
                "universal_quests", admins[0], fixed, pool=factory.shared["universal_quests"]
            )

    def owned(self, user: Node) -> None:
        """Every row of a good user but the wallet, table by table, parents first."""
        factory, rng = self.factory, self.rng
        factory.new_owner()
        for table, plan in self.user_plans:
            if plan.only_with and not factory.mine[plan.only_with]:
                continue
            parents = [user] if plan.parent == "users" else factory.mine[plan.parent]
            counts = plan.counts
            for parent in list(parents):
                if not self.showcase and rng.random() >= plan.p:
                    continue
                n = counts[int(rng.random() * len(counts))]  # as rng.choice, five times faster
                for _ in range(max(n, self.showcase)):
                    factory.make(table, parent, plan.values, pool=factory.mine[table])

    def wallet(self, user: Node, wallet: str) -> None:
        """The user's wallet: the sum of their ledger (the map's rule), plus an award the ledger
        never recorded for drifted users, or a negative balance; ``none`` writes no wallet."""
        if wallet == "none":
            return
        ledger = [n.row for n in self.factory.mine["points_ledger"]]
        coins = sum(cast(int, r["coins"]) for r in ledger)
        xp = sum(cast(int, r["xp"]) for r in ledger)
        if wallet == "drift":
            if self.rng.getrandbits(1):
                coins += self.rng.randint(1, 300)
            else:
                xp += self.rng.randint(1, 300)
        if wallet == "negative":
            coins = -5
        node = self.factory.make("user_wallet", user, {"coins": coins, "xp": xp})
        if wallet == "negative":
            self.reject("check_violation", node)

    def bad_rows(self, members: list[Node], dup_source: Node, no_wallet: Node) -> None:
        """One row per failure the migration must quarantine, each with exactly one problem."""
        rng, factory, make, reject = self.rng, self.factory, self.factory.make, self.reject
        good = {table: list(nodes) for table, nodes in factory.nodes.items()}

        def anyone() -> Node:
            return rng.choice(members)

        for table, code, column, value in _BAD_VALUES:
            plan = PLANS[table]
            assert isinstance(plan, Per)
            if table == "points_ledger":
                parent = no_wallet  # no wallet to drift from
            else:
                parent = anyone() if plan.parent == "users" else rng.choice(good[plan.parent])
            reject(code, make(table, parent, {**plan.values, column: value}))

        habit = reject("not_null", make("habits", anyone(), {"created_at": ""}))
        for _ in range(2):
            reject("parent_quarantined", make("habit_logs", habit))
        orphan = make("habit_logs", rng.choice(good["habits"]), {"habit_id": factory.uuid()})
        reject("missing_parent", orphan)

        bad_user = reject("bad_datetime", self.user(created_at="not a date"))
        for table in ("focus_sessions", "user_wallet", "points_ledger"):
            reject("parent_quarantined", make(table, bad_user))

        account = rng.choice(good["accounts"]).row
        reject(
            "duplicate_key",
            factory.add("accounts", dict(account, id=factory.uuid(), userId=anyone().row["id"])),
        )
        reject("duplicate_key", self.user(id=str(dup_source.row["id"]).upper()))


def _seed_order(schema: Schema) -> list[Table]:
    """Seed tables parents first, so seed rows refer to seed rows."""
    graph = {t.name: dict.fromkeys(t.parents) for t in schema.tables if t.name in SEEDS}
    return [schema.table(n) for n in TopologicalSorter(graph).static_order() if n in SEEDS]


# -- writing the file ---------------------------------------------------------------------------


def _insert_sql(table: Table, row: Row | None = None) -> str:
    """An INSERT with named parameters, except for the row's _Raw values, written inline."""
    cols = [c.source_name for c in d1_columns(table)]
    values = ", ".join(
        row[c] if row is not None and isinstance(row[c], _Raw) else f":{c}" for c in cols
    )
    return f"INSERT INTO {_q(table.name)} ({', '.join(map(_q, cols))}) VALUES ({values})"


def build_sample_db(
    path: str | os.PathLike,
    *,
    users: int = 200,
    seed: int = 0,
    bad_rows: bool = True,
    schema: Schema = SCHEMA,
) -> SampleSummary:
    """Write a new D1-like SQLite file of ``schema`` (the spec; a changed one in tests of
    changes to it); the same arguments always give the same contents.

    Foreign keys are off while inserting, as bad rows include orphans; everything is one
    transaction of per-table ``executemany`` calls, so 10,000 users take seconds.
    """
    if users < 10:
        raise ValueError("users must be at least 10: the special rows need distinct users")
    sample = _Sample(schema, random.Random(seed))
    collecting = gc.isenabled()
    gc.disable()  # the rows hold no cycles, and collections would scan them all, again and again
    try:
        drifted = sample.populate(users, bad_rows)
    finally:
        if collecting:
            gc.enable()
    path = Path(path)
    for stale in (path, *(Path(f"{path}{s}") for s in ("-journal", "-wal", "-shm"))):
        stale.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.executescript(sqlite_ddl(schema))
        conn.execute("PRAGMA foreign_keys=OFF")
        with conn:
            for table in schema.tables:
                rows = [n.row for n in sample.factory.nodes[table.name]]
                conn.executemany(_insert_sql(table), [r for r in rows if id(r) not in sample.raw])
                for row in (r for r in rows if id(r) in sample.raw):
                    conn.execute(_insert_sql(table, row), row)
        counts = {
            t.name: conn.execute(f"SELECT count(*) FROM {_q(t.name)}").fetchone()[0]
            for t in schema.tables
        }
    finally:
        conn.close()
    return SampleSummary(counts, tuple(sample.rejects), drifted)
