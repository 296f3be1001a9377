"""A synthetic D1 database shaped like the real one, for tests and local runs of the migration.

The rows imitate what the Workers app writes: seed rows with text ids ('skill_focus'), UUIDs in
both cases, datetimes in every form the app has used, JSON and JSON arrays in text columns. With
``bad_rows`` it also holds one deliberately bad row per failure the migration must quarantine,
each listed in ``SampleSummary.rejects``, so a test can compare the quarantine with the truth.
"""

from __future__ import annotations

import base64
import json
import os
import random
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from d1_migration.spec import Column, Schema, Table
from d1_migration.tables import SCHEMA


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


def _d1_columns(table: Table) -> list[Column]:
    """The D1 columns behind a table, once each (sessions reads ``expires`` three times)."""
    seen: dict[str, Column] = {}
    for c in table.columns:
        if c.source_name and c.source_name not in seen:
            seen[c.source_name] = c
    return list(seen.values())


def _create_table(schema: Schema, table: Table) -> str:
    lines = []
    for c in _d1_columns(table):
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
    for c in _d1_columns(table):
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


# -- seed rows (the style of 0100_master_reset.sql: readable text ids) ----------------------------

_SEED_TIME = "2026-01-06 09:00:00"
_SKILLS = (
    ("skill_focus", "focus", "Focus", "productivity", "target"),
    ("skill_learning", "learning", "Learning", "growth", "book"),
    ("skill_fitness", "fitness", "Fitness", "health", "heart"),
    ("skill_creativity", "creativity", "Creativity", "creative", "palette"),
    ("skill_planning", "planning", "Planning", "productivity", "calendar"),
    ("skill_production", "production", "Production", "creative", "music"),
)
_SKILL_KEYS = tuple(s[1] for s in _SKILLS)
_ACHIEVEMENTS = (  # key, name, category, trigger type, counted event, count; id is ach_<key>
    ("first_focus", "First Focus", "focus", "count", "focus_complete", 1),
    ("focus_streak_3", "Focus Streak", "focus", "streak", "focus_complete", 3),
    ("focus_streak_7", "Focus Master", "focus", "streak", "focus_complete", 7),
    ("first_quest", "Quest Beginner", "quests", "count", "quest_complete", 1),
    ("quest_master", "Quest Master", "quests", "count", "quest_complete", 10),
    ("first_workout", "Fitness Start", "fitness", "count", "workout_complete", 1),
    ("bookworm", "Bookworm", "learning", "count", "book_complete", 1),
)
_MARKET = (
    ("item_theme_dark", "theme_dark_pro", "Dark Pro Theme", "themes", 100, "moon", 0),
    ("item_theme_ocean", "theme_ocean", "Ocean Theme", "themes", 100, "waves", 0),
    ("item_boost_xp", "boost_xp_2x", "2x XP Boost", "boosts", 50, "zap", 1),
    ("item_boost_coins", "boost_coins_2x", "2x Coins Boost", "boosts", 50, "coins", 1),
    ("item_treat_coffee", "treat_coffee", "Virtual Coffee", "treats", 25, "coffee", 1),
    ("item_badge_early", "badge_early_adopter", "Early Adopter Badge", "badges", 200, "star", 0),
)
_STEPS = (
    ("step_1_welcome", "explain", "Welcome to Ignition", "/today", None),
    ("step_2_interests", "choice", "What interests you?", None, ["focus", "fitness", "music"]),
    ("step_3_intensity", "preference", "How should we nudge you?", None, {"default": "standard"}),
    ("step_4_focus_intro", "tour", "Focus Sessions", "/focus", None),
    ("step_5_quests_intro", "tour", "Quests", "/quests", None),
    ("step_6_ignitions", "tour", "Ignitions", "/ignitions", None),
    ("step_7_progress", "tour", "Your Progress", "/progress", None),
    ("step_8_focus_duration", "preference", "Default Focus Duration", None, {"default": 300}),
    ("step_9_gamification", "preference", "Rewards Visibility", None, {"default": "always"}),
    ("step_10_complete", "action", "Ready to Begin", "/today", {"action_type": "complete"}),
)
_STEP_IDS = tuple(s[0] for s in _STEPS)
_TOPICS = (
    ("topic_intervals", "intervals", "Intervals", "ear_training", "music"),
    ("topic_chords", "chords", "Chords", "ear_training", "layers"),
    ("topic_scales", "scales", "Scales & Modes", "theory", "sliders"),
    ("topic_rhythm", "rhythm", "Rhythm", "theory", "clock"),
    ("topic_harmony", "harmony", "Harmony", "theory", "git-merge"),
    ("topic_production", "production", "Production Basics", "production", "sliders"),
)
_DRILLS = (  # id, topic key, key, drill type, config
    ("drill_intervals_asc", "intervals", "intervals_ascending", "interval", {"dir": "asc"}),
    ("drill_intervals_desc", "intervals", "intervals_descending", "interval", {"dir": "desc"}),
    ("drill_intervals_harm", "intervals", "intervals_harmonic", "interval", {"range": 12}),
    ("drill_chords_triads", "chords", "chord_triads", "chord", {"types": ["maj", "min"]}),
    ("drill_chords_7th", "chords", "chord_sevenths", "chord", {"types": ["maj7", "m7b5"]}),
    ("drill_rhythm_basic", "rhythm", "rhythm_basic", "rhythm", {"tempo": 100, "swing": 0.55}),
    ("drill_note_id", "intervals", "note_identification", "note", {"chromatic": False}),
)
_DRILL_IDS = tuple(d[0] for d in _DRILLS)
_SEED_QUESTS = (
    ("quest_first_focus", "Complete a Focus Session", "focus", 25, 10),
    ("quest_explore_app", "Explore the App", "exploration", 15, 5),
    ("quest_set_goal", "Set a Goal", "planning", 20, 10),
    ("quest_try_ignition", "Try an Ignition", "starter", 15, 5),
    ("quest_ear_training", "Train Your Ears", "learning", 20, 10),
)
_UNIVERSAL_QUESTS = (
    ("uq_focus_1", "Complete a Focus Session", "daily", 25, 10, 1),
    ("uq_focus_3", "Focus Hat Trick", "daily", 50, 20, 3),
    ("uq_habit_1", "Check In", "daily", 15, 5, 1),
    ("uq_learn_1", "Learn Something New", "daily", 20, 10, 1),
    ("uq_workout_1", "Get Moving", "daily", 30, 15, 1),
    ("uq_weekly_focus", "Focus Master", "weekly", 100, 50, 10),
    ("uq_weekly_habits", "Habit Champion", "weekly", 75, 35, 5),
    ("uq_weekly_learn", "Knowledge Seeker", "weekly", 80, 40, 5),
)
_UQ_IDS = tuple(q[0] for q in _UNIVERSAL_QUESTS)
# Strings a TEXT[] conversion must escape: a comma, quotes, a backslash, non-ASCII.
_TAGS = (
    "lo-fi", "drums, percussion", 'the "hook"', "C:\\samples\\kicks", "café", "ドラム", "🎹 keys",
    "mixdown", "808",
)  # fmt: skip
_PACKS = (
    ("pack_5min_reset", "5min_reset", "5-Minute Reset", "starter", ["Stand up", "Drink water"]),
    ("pack_creative_spark", "creative_spark", "Creative Spark", "creative", ["Hum a melody"]),
    ("pack_movement", "movement", "Movement Break", "fitness", ["Do 10 jumping jacks"]),
    ("pack_focus_prep", "focus_prep", "Focus Prep", "focus", ["Close tabs", "Phone on DND"]),
    ("pack_studio_odds", "studio_odds", "Studio Odds & Ends", "creative", list(_TAGS)),
)
_DAW = (
    ("abl_play", "ableton", "transport", "Play/Stop", "Space", "Space"),
    ("abl_record", "ableton", "transport", "Record", "F9", "F9"),
    ("abl_undo", "ableton", "edit", "Undo", "Cmd+Z", "Ctrl+Z"),
    ("abl_duplicate", "ableton", "edit", "Duplicate", "Cmd+D", "Ctrl+D"),
    ("abl_split", "ableton", "edit", "Split Clip", "Cmd+E", "Ctrl+E"),
    ("fl_pattern", "fl_studio", "transport", "Pattern/Song", "L", "L"),
)
_GLOSSARY = (
    ("gloss_bpm", "BPM", "Beats Per Minute - the tempo of a song", "production", "tempo,rhythm"),
    ("gloss_eq", "EQ", "Equalization - adjusting frequency balance", "mixing", "frequency,mixing"),
    ("gloss_compression", "Compression", "Dynamic range reduction", "mixing", "dynamics,loudness"),
    ("gloss_reverb", "Reverb", "Simulated room reflections", "effects", "delay,space"),
    ("gloss_sidechain", "Sidechain", "One signal controls another", "production", "ducking"),
)
_EXERCISES = (
    ("ex_bench_press", "Bench Press", "strength", ["chest", "triceps"], ["barbell", "bench"]),
    ("ex_back_squat", "Back Squat", "strength", ["quads", "glutes"], ["barbell", "rack"]),
    ("ex_deadlift", "Deadlift", "strength", ["hamstrings", "back"], ["barbell"]),
    ("ex_pull_up", "Pull-up", "strength", ["lats", "biceps"], ["pull-up bar"]),
    ("ex_push_up", "Push-up", "strength", ["chest"], []),
    ("ex_plank", "Plank", "balance", ["core"], []),
    ("ex_running", "Running", "cardio", ["legs"], None),
    ("ex_rowing", "Rowing", "cardio", ["back", "legs"], ["rower"]),
    ("ex_box_jump", "Box Jump", "plyometric", ["quads", "calves"], ["box"]),
    ("ex_hamstring_stretch", "Hamstring Stretch", "flexibility", ["hamstrings"], []),
    ("ex_farmer_walk", "Farmer's Walk", "other", ["grip", "traps"], ["dumbbells"]),
)
_EXERCISE_IDS = tuple(e[0] for e in _EXERCISES)
_RECIPES = (
    ("recipe_lofi_beat", "Lo-fi Beat", "beats", "lo-fi", ["Dusty drums", "Jazz chords", "Vinyl"]),
    ("recipe_house_groove", "House Groove", "beats", "house", ["Four on the floor", "Offbeat hat"]),
    ("recipe_vocal_chain", "Vocal Chain", "mixing", None, ["EQ", "Compressor", "De-esser"]),
)
_METADATA = (
    ("db_version", "100"),
    ("db_version_name", "0100_master_reset_consolidated"),
    ("schema_created_at", _SEED_TIME),
    ("consolidation_date", "2026-01-06"),
)

_NAMES = (
    "Ada Lovelace", "Zoë Ramírez", "José Núñez", "李梅", "Liam O'Brien", "Noor Haddad",
    "Søren Vik", "Priya Nair", "Kai", 'DJ "Spin" Doe',
)  # fmt: skip
_HANDLES = ("ada", "zoe", "jose", "mei", "liam", "noor", "soren", "priya", "kai", "beats")
_DOMAINS = ("gmail.com", "example.com", "proton.me", "outlook.com")
_WORDS = (
    "mix", "practice", "scales", "review", "draft", "bassline", "stretch", "read",
    "plan", "sketch", "vocals", "chords", "run", "study", "journal", "master",
)  # fmt: skip
_LEDGER_EVENTS = ("focus_complete", "quest_complete", "habit_log", "lesson_complete", "drill")
_ACTIVITY_EVENTS = ("focus_complete", "habit_log", "quest_complete", "page_view", "login")
_COLORS = ("#3b82f6", "#ef4444", "#10b981", "#f59e0b", None)
_BOOKS = (
    "Making Music", "The Mixing Engineer's Handbook", "Atomic Habits", "音楽の理論", "Deep Work",
)  # fmt: skip
_LESSON_IDS = tuple(f"lesson_{t[1]}_{k}" for t in _TOPICS for k in range(1, 4))

_START = 1_717_200_000  # 2024-06-01: the app's first users
_NOW = 1_767_700_800  # 2026-01-06 12:00 UTC: the D1 export
_DAY = 86_400

Row = dict[str, object]


class _Raw(str):
    """A SQL expression written verbatim into the INSERT, for values Python should not bind:
    invalid UTF-8 (Python strings cannot hold it) and NUL (built by SQLite, as D1 would store it).
    """


@dataclass(frozen=True)
class _User:
    id: str  # as stored in users.id
    created: int
    upper: bool  # an UPPERCASE UUID, referenced in either case


class _Builder:
    """Rows per table in insertion order; one instance per database, so the RNG stream is fixed."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.rows: dict[str, list[Row]] = {t.name: [] for t in SCHEMA.tables}
        self.raw_rows: list[tuple[str, Row]] = []
        self.rejects: list[ExpectedReject] = []
        self.enums = {e.name: e.values for e in SCHEMA.enums}
        self.items: list[tuple[str, int]] = []  # market item id, price
        self.habits: list[tuple[str, _User]] = []
        self.accounts: list[Row] = []
        self.showcase = False  # set while writing the user who owns one row in every table

    # -- values -----------------------------------------------------------------------------------

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def hex(self, bits: int) -> str:
        return f"{self.rng.getrandbits(bits):0{bits // 4}x}"

    def b64(self, nbytes: int) -> str:
        raw = self.rng.getrandbits(nbytes * 8).to_bytes(nbytes, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def ts(self, t: int) -> str | int:
        """A datetime in one of the forms Workers code has written over time."""
        r = self.rng.random()
        if r < 0.45:
            return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))  # datetime('now')
        if r < 0.70:
            ms = self.rng.randrange(1000)
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}Z"
        if r < 0.78:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
        if r < 0.84:
            ms = self.rng.randrange(1000)
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t + 7200)) + f".{ms:03d}+02:00"
        if r < 0.89:
            return t  # Math.floor(Date.now() / 1000)
        if r < 0.94:
            return t * 1000 + self.rng.randrange(1000)  # Date.now()
        return str(t)

    def opt_ts(self, t: int | None) -> str | int | None:
        """A nullable datetime; absent is NULL or, as some app paths write, ''."""
        if t is None:
            return None if self.rng.random() < 0.7 else ""
        return self.ts(t)

    @staticmethod
    def day(t: int) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(t))

    def after(self, t: int, until: int = _NOW) -> int:
        return t + self.rng.randrange(max(1, until - t))

    def json(self, value: object) -> str:
        """Compact like JSON.stringify; non-ASCII sometimes escaped, as other writers do."""
        return json.dumps(value, separators=(",", ":"), ensure_ascii=self.rng.random() < 0.3)

    def tags(self) -> str:
        return self.json(self.rng.sample(_TAGS, self.rng.randrange(5)))

    def text(self, words: int = 3) -> str:
        return " ".join(self.rng.choices(_WORDS, k=words)).capitalize()

    def ref(self, user: _User) -> str:
        """A reference to a user; UPPERCASE ids are also written lowercase, as the app did."""
        return user.id.lower() if user.upper and self.rng.random() < 0.5 else user.id

    def flag(self, p: float = 0.5) -> int:
        return int(self.rng.random() < p)

    def maybe(self, p: float) -> bool:
        """Whether to write an optional child row; always for the showcase user."""
        return self.rng.random() < p or self.showcase

    def count(self, *options: int) -> int:
        """How many child rows to write: one of ``options``, at least one for the showcase user."""
        return max(self.rng.choice(options), int(self.showcase))

    # -- bookkeeping ------------------------------------------------------------------------------

    def add(self, table: str, **row: object) -> Row:
        self.rows[table].append(row)
        return row

    def reject(self, table: str, code: str, row: Row) -> Row:
        """Add a deliberately bad row and record it; rows with _Raw values get their own INSERT."""
        if any(isinstance(v, _Raw) for v in row.values()):
            self.raw_rows.append((table, row))
        else:
            self.rows[table].append(row)
        key = [row[c] for c in SCHEMA.table(table).source_pk]
        source_pk = str(key[0]) if len(key) == 1 else json.dumps(key)
        self.rejects.append(ExpectedReject(table, source_pk, code))
        return row

    # -- the whole database -----------------------------------------------------------------------

    def populate(self, users: int, bad_rows: bool) -> tuple[str, ...]:
        """Fill every table; returns the ids of the users whose wallet drifts from the ledger."""
        rng = self.rng
        self.seed()
        order = rng.sample(range(users), users)
        n_upper, n_drift = max(3, users // 100), max(2, users // 100)
        dup_source, no_wallet, negative_wallet = order[:3]
        upper = set(order[3 : 3 + n_upper])
        drifted = set(order[3 + n_upper : 3 + n_upper + n_drift])
        admin_ids = order[-2:]
        members = []
        for n in range(users):
            row, user = self.user_row(n, upper=n in upper, admin=n in admin_ids)
            self.add("users", **row)
            members.append(user)
        self.admin_rows([members[n] for n in admin_ids], members)
        self.admin_quests(members[admin_ids[0]])
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
            self.owned(user, wallet)
        self.showcase = False
        if bad_rows:
            self.bad_rows(members, members[dup_source], members[no_wallet])
        return tuple(members[n].id for n in sorted(drifted))

    def bad_rows(self, members: list[_User], dup_source: _User, no_wallet: _User) -> None:
        """One row per failure the migration must quarantine, each with exactly one problem."""
        rng, reject = self.rng, self.reject

        def anyone() -> _User:
            return rng.choice(members)

        reject("focus_sessions", "bad_datetime", self.focus_row(anyone(), started_at="yesterday"))
        reject("focus_sessions", "bad_enum", self.focus_row(anyone(), mode="nap"))
        reject("focus_sessions", "check_violation", self.focus_row(anyone(), duration=0))
        habit_id, owner = rng.choice(self.habits)
        bad_day = self.habit_log(habit_id, owner, completed_at="2026-02-30 10:00:00")
        reject("habit_logs", "impossible_datetime", bad_day)
        bad_month = self.activity_row(anyone(), created_at="2026-13-01T00:00:00Z")
        reject("activity_events", "impossible_datetime", bad_month)
        reject("activity_events", "bad_json", self.activity_row(anyone(), metadata_json='{"a":1'))
        exercise = self.exercise_row(anyone(), muscle_groups='["chest", 3]')
        reject("exercises", "bad_text_array", exercise)
        reject("journal_entries", "bad_text_array", self.journal_row(anyone(), tags_json='{"a":1}'))
        nul = self.journal_row(anyone(), content=_Raw("'a' || char(0) || 'b'"))
        reject("journal_entries", "nul_character", nul)
        latin1 = self.idea_row(anyone(), content=_Raw("CAST(X'66ff6f' AS TEXT)"))
        reject("ideas", "invalid_utf8", latin1)
        reject("books", "wrong_type", self.book_row(anyone(), rating=2.5))
        reject("points_ledger", "wrong_type", self.ledger_row(no_wallet, "ten", 10))
        reject("points_ledger", "out_of_range", self.ledger_row(no_wallet, 5, 3_000_000_000))
        quest = self.quest_row(self.uid(), anyone(), self.text(), "custom", 10, 5, is_active=2)
        reject("quests", "bad_boolean", quest)
        reject("reference_tracks", "bad_hex", self.track_row(anyone(), sha256="not-hex"))

        owner = anyone()
        habit = reject("habits", "not_null", self.habit_row(owner, created_at=""))
        for _ in range(2):
            reject("habit_logs", "parent_quarantined", self.habit_log(habit["id"], owner))
        reject("habit_logs", "missing_parent", self.habit_log(self.uid(), anyone()))

        row, bad_user = self.user_row(len(members), created_at="not a date")
        reject("users", "bad_datetime", row)
        reject("focus_sessions", "parent_quarantined", self.focus_row(bad_user))
        reject("user_wallet", "parent_quarantined", self.wallet_row(bad_user, 5, 10, 0))
        reject("points_ledger", "parent_quarantined", self.ledger_row(bad_user, 5, 10))

        account = rng.choice(self.accounts)
        reject("accounts", "duplicate_key", dict(account, id=self.uid(), userId=anyone().id))
        twin, _ = self.user_row(len(members) + 1, uid=dup_source.id.upper())
        reject("users", "duplicate_key", twin)
        # the seconds left, written into paused_at: a number, but no instant the app wrote
        reject("focus_sessions", "implausible_datetime", self.focus_row(anyone(), paused_at=1500))

    # -- seed rows --------------------------------------------------------------------------------

    def seed(self) -> None:
        add = self.add
        for key, value in _METADATA:
            add("db_metadata", key=key, value=value, updated_at=_SEED_TIME)
        for n, (sid, key, name, category, icon) in enumerate(_SKILLS, 1):
            add(
                "skill_definitions", id=sid, key=key, name=name, description=f"{name} skill",
                category=category, icon=icon, max_level=10, stars_per_level=10, sort_order=n,
                created_at=_SEED_TIME,
            )  # fmt: skip
        for n, (key, name, cat, trigger, event, count) in enumerate(_ACHIEVEMENTS, 1):
            add(
                "achievement_definitions", id=f"ach_{key}", key=key, name=name, description=None,
                category=cat, icon=None, trigger_type=trigger,
                trigger_config_json=json.dumps({"event": event, "count": count}),
                reward_coins=10 * count, reward_xp=25 * count, is_hidden=0, sort_order=n,
                created_at=_SEED_TIME,
            )  # fmt: skip
        for n, (mid, key, name, category, cost, icon, consumable) in enumerate(_MARKET, 1):
            self.market_item(mid, key, name, category, cost, icon, consumable, n, None, _SEED_TIME)
        add(
            "onboarding_flows", id="flow_main_v1", version=1, name="Main Onboarding",
            description="Primary onboarding flow for new users", is_active=1, total_steps=10,
            created_at=_SEED_TIME,
        )  # fmt: skip
        for n, (sid, step_type, title, route, options) in enumerate(_STEPS, 1):
            action = step_type == "action"
            add(
                "onboarding_steps", id=sid, flow_id="flow_main_v1", step_order=n,
                step_type=step_type, title=title, description=None, target_selector=None,
                target_route=route, fallback_content=None,
                options_json=None if options is None else json.dumps(options),
                allows_multiple=int(step_type == "choice"), required=int(n in (2, 3)),
                action_type="complete_onboarding" if action else None,
                action_config_json='{"redirect":"/today"}' if action else None,
            )  # fmt: skip
        for n, (tid, key, name, category, icon) in enumerate(_TOPICS, 1):
            add(
                "learn_topics", id=tid, key=key, name=name, description=f"Learn {name.lower()}",
                category=category, icon=icon, sort_order=n, created_at=_SEED_TIME,
            )  # fmt: skip
            for k in range(1, 4):
                quiz = [{"q": f"{name} question {k}", "options": ["A", "B", "C"], "answer": 1}]
                add(
                    "learn_lessons", id=f"lesson_{key}_{k}", topic_id=tid, key=f"{key}_{k}",
                    title=f"{name} {k}", description=None,
                    content_markdown=f"# {name} {k}\n\n- listen\n- *repeat*\n",
                    duration_minutes=5 * k, difficulty=("beginner", "intermediate")[k > 2],
                    quiz_json=json.dumps(quiz) if k != 2 else None, xp_reward=15, coin_reward=5,
                    skill_key="learning", skill_star_reward=1,
                    audio_r2_key=f"lessons/{key}/{k}.mp3" if k == 1 else None, sort_order=k,
                    created_at=_SEED_TIME,
                )  # fmt: skip
        for n, (did, topic, key, drill_type, config) in enumerate(_DRILLS, 1):
            add(
                "learn_drills", id=did, topic_id=f"topic_{topic}", key=key,
                title=key.replace("_", " ").title(), description=None, drill_type=drill_type,
                config_json=json.dumps(config),
                difficulty="beginner", duration_seconds=120, xp_reward=10, sort_order=n,
                created_at=_SEED_TIME,
            )  # fmt: skip
        for qid, title, category, xp, coins in _SEED_QUESTS:
            add("quests", **self.quest_row(qid, None, title, category, xp, coins))
        for qid, title, kind, xp, coins, target in _UNIVERSAL_QUESTS:
            add(
                "universal_quests", id=qid, title=title, description=None, type=kind, xp_reward=xp,
                coin_reward=coins, target=target, skill_id=None, is_active=1, created_by=None,
                created_at=_SEED_TIME, updated_at=_SEED_TIME,
            )  # fmt: skip
        for n, (pid, key, name, category, items) in enumerate(_PACKS, 1):
            add(
                "ignition_packs", id=pid, key=key, name=name, description=None, category=category,
                items_json=json.dumps(items, ensure_ascii=False), icon=None, sort_order=n,
                created_at=_SEED_TIME,
            )  # fmt: skip
        for n, (did, daw, category, action, mac, win) in enumerate(_DAW, 1):
            add(
                "daw_shortcuts", id=did, daw=daw, category=category, action=action,
                shortcut_mac=mac, shortcut_win=win, description=None, sort_order=n,
            )  # fmt: skip
        for gid, term, definition, category, related in _GLOSSARY:
            add(
                "glossary_terms", id=gid, term=term, definition=definition, category=category,
                related_terms=related, created_at=_SEED_TIME,
            )  # fmt: skip
        for eid, name, category, muscles, equipment in _EXERCISES:
            add(
                "exercises", id=eid, name=name, description=None, category=category,
                muscle_groups=json.dumps(muscles),
                equipment=None if equipment is None else json.dumps(equipment),
                is_custom=0, is_builtin=1, user_id=None, created_at=_SEED_TIME,
            )  # fmt: skip
        for rid, name, category, genre, steps in _RECIPES:
            add(
                "recipe_templates", id=rid, name=name, description=None, category=category,
                genre=genre, steps_json=json.dumps([{"do": s} for s in steps]),
                tips="Trust your ears" if genre else None, created_at=_SEED_TIME,
            )  # fmt: skip
        add(
            "plan_templates", id="tpl_morning_routine", user_id=None, name="Morning Routine",
            description=None, items_json='[{"title":"Focus 25m","type":"focus"}]', is_public=1,
            category="routine", created_at=_SEED_TIME,
        )  # fmt: skip
        add(
            "infobase_entries", id="info_getting_started", user_id=None, title="Getting started",
            content="Start with a 5-minute focus session.", category="guide",
            tags_json=self.tags(), is_public=1, created_at=_SEED_TIME, updated_at=_SEED_TIME,
        )  # fmt: skip

    def market_item(
        self,
        mid: str,
        key: str,
        name: str,
        category: str,
        cost: int,
        icon: str | None,
        consumable: int,
        order: int,
        creator: str | None,
        created: object,
    ) -> None:
        self.items.append((mid, cost))
        self.add(
            "market_items", id=mid, key=key, name=name, description=None, category=category,
            cost_coins=cost, icon=icon, is_global=int(creator is None), is_available=1,
            is_active=1, is_consumable=consumable, sort_order=order, created_by_user_id=creator,
            created_at=created,
        )  # fmt: skip

    def admin_quests(self, admin: _User) -> None:
        """Universal quests as the admin API writes them: a skill key in skill_id, and the
        admin's id in created_by, or 'system' when the request had no session."""
        for n, creator in enumerate((admin.id, "system")):
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(_NOW - (n + 2) * _DAY))
            self.add(
                "universal_quests", id=f"quest-{(_NOW - (n + 2) * _DAY) * 1000}",
                title=f"Studio challenge {n + 1}", description=None, type="weekly",
                xp_reward=40, coin_reward=15, target=3, skill_id=("proficiency", "focus")[n],
                is_active=1, created_by=creator, created_at=created, updated_at=created,
            )  # fmt: skip

    def admin_rows(self, admins: list[_User], members: list[_User]) -> None:
        rng, add = self.rng, self.add
        for n in range(3 + len(members) // 1000):
            admin = rng.choice(admins)
            created = self.ts(self.after(admin.created))
            cost = rng.randrange(10, 500)
            self.market_item(
                self.uid(), f"custom_{n}", f"Studio perk {n}", "cosmetics", cost, None, 0,
                100 + n, self.ref(admin), created,
            )  # fmt: skip
        for _ in range(3 + len(members) // 25):
            target = rng.choice(members)
            add(
                "admin_audit_log", id=self.uid(), admin_id=self.ref(rng.choice(admins)),
                action=rng.choice(("approve_user", "grant_coins", "update_role")),
                target_type="user", target_id=target.id,
                details_json=self.json({"before": {"approved": 0}, "after": {"approved": 1}}),
                created_at=self.ts(self.after(target.created)),
            )  # fmt: skip
        for n in range(2 + len(members) // 20):
            status = rng.choice(("pending", "approved", "denied"))
            created = rng.randrange(_START, _NOW)
            reviewed = status != "pending"
            add(
                "access_requests", id=self.uid(), email=f"request.{n}@example.com",
                name=rng.choice((None, "Mara", "Jörg")), reason=rng.choice((None, "I make beats")),
                status=status, reviewed_by=self.ref(rng.choice(admins)) if reviewed else None,
                reviewed_at=self.opt_ts(self.after(created) if reviewed else None),
                created_at=self.ts(created),
            )  # fmt: skip

    # -- a user and everything they own -----------------------------------------------------------

    def user_row(
        self,
        n: int,
        *,
        upper: bool = False,
        admin: bool = False,
        uid: str | None = None,
        created_at: str | None = None,
    ) -> tuple[Row, _User]:
        rng = self.rng
        t0 = rng.randrange(_START, _NOW - 7 * _DAY)
        uid = uid or self.uid()
        if upper:
            uid = uid.upper()
        tos = self.flag(0.8)
        verified = (t0 + 600) * 1000 + rng.randrange(1000) if self.flag(0.8) else None
        if admin:
            verified = 1  # approved by hand, marked with a flag: the migration's rule applies
        row = dict(
            id=uid, name=rng.choice(_NAMES),
            email=f"{rng.choice(_HANDLES)}.{n}@{rng.choice(_DOMAINS)}",
            emailVerified=verified,
            image=f"https://lh3.googleusercontent.com/a/{self.b64(18)}" if self.flag() else None,
            role="admin" if admin else "user", approved=self.flag(0.97), age_verified=1,
            tos_accepted=tos, tos_accepted_at=self.opt_ts(t0 + 60 if tos else None),
            tos_version="2025-01" if tos else None,
            last_activity_at=self.opt_ts(self.after(t0) if self.flag(0.8) else None),
            created_at=self.ts(t0) if created_at is None else created_at,
            updated_at=self.ts(self.after(t0)),
        )  # fmt: skip
        return row, _User(uid, t0, upper)

    def owned(self, user: _User, wallet: str) -> None:
        """Every child row of a good user; ``wallet`` is match, drift, negative or none."""
        self.auth(user)
        self.settings(user)
        self.gamification(user, wallet)
        self.focus(user)
        self.quests(user)
        self.habits_and_goals(user)
        workouts = self.fitness(user)
        self.learning(user)
        self.planning(user, workouts)
        self.content(user)

    def auth(self, u: _User) -> None:
        rng, add = self.rng, self.add
        for provider in ("google", "github")[: 1 + self.flag(0.2)]:
            google = provider == "google"
            account = add(
                "accounts", id=self.uid(), userId=u.id, type="oauth", provider=provider,
                providerAccountId=str(rng.randrange(10**20, 10**21)),
                refresh_token=f"1//{self.b64(48)}" if google else None,
                access_token=f"ya29.{self.b64(96)}" if google else f"gho_{self.b64(27)}",
                expires_at=self.after(u.created) + 3600 if google else None,
                token_type="bearer", scope="openid email profile" if google else "read:user",
                id_token=f"eyJhbGciOiJSUzI1NiJ9.{self.b64(120)}" if google else None,
                session_state=None,
            )  # fmt: skip
            self.accounts.append(account)
        for _ in range(self.count(0, 1, 1, 2)):
            add(
                "sessions", id=self.uid(), sessionToken=self.hex(256), userId=self.ref(u),
                expires=self.ts(self.after(u.created) + 30 * _DAY),
            )  # fmt: skip
        if self.maybe(0.1):
            add(
                "verification_tokens", identifier=f"{u.id[:8].lower()}@example.com",
                token=self.hex(256), expires=self.ts(self.after(u.created) + _DAY),
            )  # fmt: skip
        if self.maybe(0.1):
            add(
                "authenticators", credentialID=self.b64(32), userId=self.ref(u),
                providerAccountId=self.b64(32), credentialPublicKey=self.b64(77),
                counter=rng.randrange(100),
                credentialDeviceType=rng.choice(("singleDevice", "multiDevice")),
                credentialBackedUp=self.flag(),
                transports=rng.choice(("internal", "internal,hybrid", "usb,nfc", None)),
            )  # fmt: skip

    def settings(self, u: _User) -> None:
        rng, add, enums = self.rng, self.add, self.enums
        created = self.after(u.created, u.created + _DAY)
        if self.maybe(0.9):
            add(
                "user_settings", id=self.uid(), user_id=self.ref(u),
                nudge_intensity=rng.choice((*enums["nudge_intensity"], None)),
                default_focus_duration=rng.choice((300, 600, 1500, 1800, None)),
                gamification_visible=rng.choice(enums["gamification_visibility"]),
                planner_mode=rng.choice(enums["planner_mode"]),
                theme=rng.choice((*enums["theme_preference"], None)),
                notifications_enabled=rng.choice((0, 1, 1, None)), created_at=self.ts(created),
                updated_at=self.ts(self.after(created)),
            )  # fmt: skip
        for n, key in enumerate(rng.sample(_SKILL_KEYS, self.count(0, 1, 2)), 1):
            add(
                "user_interests", id=self.uid(), user_id=self.ref(u), interest_key=key,
                priority=n, created_at=self.ts(created),
            )  # fmt: skip
        for key in rng.sample(("today", "focus", "quests", "habits", "learn"), self.count(0, 1, 2)):
            add(
                "user_ui_modules", id=self.uid(), user_id=self.ref(u), module_key=key,
                weight=rng.randrange(101), enabled=self.flag(0.8),
                last_shown_at=self.opt_ts(self.after(created) if self.flag() else None),
                created_at=self.ts(created),
            )  # fmt: skip
        if self.maybe(0.85):
            status = rng.choice(("not_started", "in_progress", "completed", "skipped"))
            started = status != "not_started"
            done = self.after(created)
            responses = {"interests": ["focus", "music"], "intensity": "gentle", "note": "Übung ✓"}
            add(
                "user_onboarding_state", id=self.uid(), user_id=self.ref(u),
                flow_id="flow_main_v1", current_step_id=rng.choice(_STEP_IDS) if started else None,
                status=status, started_at=self.opt_ts(created if started else None),
                completed_at=self.opt_ts(done if status == "completed" else None),
                skipped_at=self.opt_ts(done if status == "skipped" else None),
                last_step_completed_at=self.opt_ts(done if status == "in_progress" else None),
                responses_json=self.json(responses) if started else None,
                can_resume=self.flag(0.9), created_at=self.ts(created), updated_at=self.ts(done),
            )  # fmt: skip

    def ledger_row(self, u: _User, coins: object, xp: object) -> Row:
        rng = self.rng
        event = rng.choice(_LEDGER_EVENTS)
        eid = self.uid()
        stars = rng.randrange(3)
        return dict(
            id=self.uid(), user_id=self.ref(u), event_type=event, event_id=eid, coins=coins, xp=xp,
            skill_stars=stars, skill_key=rng.choice(_SKILL_KEYS) if stars else None,
            reason=f"{event.replace('_', ' ')} reward" if self.flag(0.7) else None,
            idempotency_key=f"{event}:{eid}" if self.flag(0.8) else None,
            created_at=self.ts(self.after(u.created)),
        )  # fmt: skip

    def wallet_row(self, u: _User, coins: int, xp: int, stars: int) -> Row:
        return dict(
            id=self.uid(), user_id=self.ref(u), coins=coins, xp=xp, level=1 + xp // 500,
            xp_to_next_level=500 - xp % 500, total_skill_stars=stars,
            updated_at=self.ts(self.after(u.created)),
        )  # fmt: skip

    def activity_row(self, u: _User, **overrides: object) -> Row:
        rng = self.rng
        event = rng.choice(_ACTIVITY_EVENTS)
        if event == "focus_complete":
            meta: object = {"duration": rng.choice((300, 1500)), "xp": 10, "ratio": 0.25}
        elif event == "habit_log":
            meta = {"habit": "Stretch 🧘", "count": rng.randrange(1, 4)}
        elif event == "quest_complete":
            meta = {"quest_id": rng.choice(_UQ_IDS), "tags": ["daily"], "bonus": None}
        elif event == "page_view":
            meta = {"path": "/today", "ms": round(rng.random() * 900, 3), "big": 2**53}
        else:
            meta = {"provider": "google", "geo": {"country": "DE", "city": "Köln"}, "n": -1e-3}
        row = dict(
            id=self.uid(), user_id=self.ref(u), event_type=event,
            metadata_json=self.json(meta) if self.flag(0.9) else None,
            created_at=self.ts(self.after(u.created)),
        )  # fmt: skip
        return row | overrides

    def gamification(self, u: _User, wallet: str) -> None:
        rng, add = self.rng, self.add
        for key in rng.sample(_SKILL_KEYS, self.count(0, 1, 2, 3)):
            stars = rng.randrange(100)
            add(
                "user_skills", id=self.uid(), user_id=self.ref(u), skill_key=key,
                current_stars=stars, current_level=stars // 10,
                updated_at=self.ts(self.after(u.created)),
            )  # fmt: skip
        for achievement in rng.sample(_ACHIEVEMENTS, self.count(0, 1, 2)):
            add(
                "user_achievements", id=self.uid(), user_id=self.ref(u),
                achievement_key=achievement[0], earned_at=self.ts(self.after(u.created)),
                notified=self.flag(0.7),
            )  # fmt: skip
        coins = xp = stars = 0
        for _ in range(rng.randint(5, 25)):
            row = add("points_ledger", **self.ledger_row(u, rng.randrange(26), rng.randrange(61)))
            coins, xp, stars = coins + row["coins"], xp + row["xp"], stars + row["skill_stars"]
        if wallet == "drift":  # an award the ledger never recorded
            if self.flag():
                coins += rng.randint(1, 300)
            else:
                xp += rng.randint(1, 300)
        if wallet == "negative":
            self.reject("user_wallet", "check_violation", self.wallet_row(u, -5, xp, stars))
        elif wallet != "none":
            add("user_wallet", **self.wallet_row(u, coins, xp, stars))
        for kind in rng.sample(("daily_login", "focus", "habits"), self.count(0, 1, 2)):
            current = rng.randrange(30)
            add(
                "user_streaks", id=self.uid(), user_id=self.ref(u), streak_type=kind,
                current_streak=current, longest_streak=current + rng.randrange(10),
                last_activity_date=self.day(self.after(u.created)) if current else None,
                updated_at=self.ts(self.after(u.created)),
            )  # fmt: skip
        for _ in range(rng.randint(3, 13)):
            add("activity_events", **self.activity_row(u))
        for _ in range(self.count(0, 0, 0, 1, 2)):
            item, cost = rng.choice(self.items)
            bought = self.after(u.created)
            add(
                "user_purchases", id=self.uid(), user_id=self.ref(u), item_id=item,
                cost_coins=cost, purchased_at=self.ts(bought),
                redeemed_at=self.opt_ts(self.after(bought) if self.flag() else None),
            )  # fmt: skip

    def focus_row(self, u: _User, **overrides: object) -> Row:
        rng = self.rng
        mode = rng.choice(self.enums["focus_mode"])
        status = rng.choice(self.enums["focus_status"])
        duration = {"focus": 1500, "break": 300, "long_break": 900}[mode]
        start = self.after(u.created)
        end = start + duration
        live = status in ("active", "paused")
        row = dict(
            id=self.uid(), user_id=self.ref(u), mode=mode, duration=duration,
            started_at=self.ts(start),
            completed_at=self.opt_ts(end if status == "completed" else None),
            abandoned_at=self.opt_ts(start + 60 if status == "abandoned" else None),
            paused_at=self.opt_ts(start + 120 if status == "paused" else None),
            paused_remaining=duration - 120 if status == "paused" else None,
            expires_at=self.opt_ts(end + 3600 if live else None), status=status,
            xp_awarded=10 if status == "completed" else 0,
            coins_awarded=5 if status == "completed" else 0, created_at=self.ts(start),
        )  # fmt: skip
        return row | overrides

    def focus(self, u: _User) -> None:
        rng = self.rng
        for _ in range(rng.randint(2, 10)):
            self.add("focus_sessions", **self.focus_row(u))
        if self.maybe(0.15):
            paused = self.after(u.created)
            self.add(
                "focus_pause_state", id=self.uid(), user_id=self.ref(u),
                mode=rng.choice(("focus", "break")), time_remaining=rng.randrange(1, 1500),
                paused_at=self.ts(paused), created_at=self.ts(paused),
                updated_at=self.ts(paused + 5),
            )  # fmt: skip

    def quest_row(
        self,
        qid: str,
        user: _User | None,
        title: str,
        category: str,
        xp: int,
        coins: int,
        is_active: int = 1,
    ) -> Row:
        """A universal quest (seed, no user) or one a user wrote."""
        rng = self.rng
        if user is None:
            status, created = "available", _SEED_TIME
        else:
            status, created = rng.choice(self.enums["quest_status"]), self.after(user.created)
        accepted = status != "available"
        done = status == "completed"
        return dict(
            id=qid, user_id=None if user is None else self.ref(user), title=title,
            description=None, category=category,
            difficulty=rng.choice(self.enums["quest_difficulty"]) if user else "starter",
            xp_reward=xp, coin_reward=coins, is_universal=int(user is None), is_active=is_active,
            status=status,
            accepted_at=self.opt_ts(created + 60 if accepted else None),
            completed_at=self.opt_ts(created + 3600 if done else None),
            expires_at=self.opt_ts(created + 7 * _DAY if user else None),
            is_repeatable=int(user is None), repeat_frequency=None if user else "daily",
            last_completed_date=self.day(created + 3600) if done else None,
            streak_count=int(done), created_at=self.ts(created) if user else created,
        )  # fmt: skip

    def quests(self, u: _User) -> None:
        rng = self.rng
        if self.maybe(0.4):
            self.add("quests", **self.quest_row(self.uid(), u, self.text(), "custom", 10, 5))
        for qid in rng.sample(_UQ_IDS, self.count(0, 1)):
            status = rng.choice(("available", "accepted", "completed"))
            accepted = self.after(u.created)
            self.add(
                "user_quest_progress", id=self.uid(), user_id=self.ref(u), quest_id=qid,
                status=status, progress=rng.randrange(4), completed=int(status == "completed"),
                accepted_at=self.opt_ts(accepted if status != "available" else None),
                completed_at=self.opt_ts(accepted + 900 if status == "completed" else None),
                created_at=self.ts(accepted), updated_at=self.ts(accepted + 900),
            )  # fmt: skip

    def habit_row(self, u: _User, **overrides: object) -> Row:
        rng = self.rng
        created = self.after(u.created)
        row = dict(
            id=self.uid(), user_id=self.ref(u), name=self.text(2), description=None,
            frequency=rng.choice(self.enums["habit_frequency"]), target_count=rng.randint(1, 3),
            icon=rng.choice(("🔥", "book", None)), color=rng.choice(_COLORS),
            is_active=self.flag(0.85), created_at=self.ts(created),
            updated_at=self.ts(self.after(created)),
        )  # fmt: skip
        return row | overrides

    def habit_log(self, habit_id: str, u: _User, **overrides: object) -> Row:
        row = dict(
            id=self.uid(), habit_id=habit_id, user_id=self.ref(u),
            completed_at=self.ts(self.after(u.created)),
            notes=self.rng.choice((None, "felt good", "kurz, aber gut", "")),
        )  # fmt: skip
        return row | overrides

    def habits_and_goals(self, u: _User) -> None:
        rng, add = self.rng, self.add
        for _ in range(self.count(0, 1, 2, 3)):
            habit = add("habits", **self.habit_row(u))
            self.habits.append((habit["id"], u))
            for _ in range(self.count(0, 1, 2, 3)):
                add("habit_logs", **self.habit_log(habit["id"], u))
        for _ in range(self.count(0, 0, 0, 1, 2)):
            created = self.after(u.created)
            target = created + rng.randrange(90) * _DAY
            goal = add(
                "goals", id=self.uid(), user_id=self.ref(u), title=self.text(), description=None,
                category=rng.choice(("music", "health", None)),
                target_date=self.day(target) if self.flag() else None,
                status=rng.choice(("active", "completed", "archived")),
                progress=rng.randrange(101), created_at=self.ts(created),
                updated_at=self.ts(self.after(created)),
            )  # fmt: skip
            for n in range(self.count(0, 1, 2, 3)):
                done = self.flag()
                add(
                    "goal_milestones", id=self.uid(), goal_id=goal["id"], title=self.text(),
                    is_completed=done, completed_at=self.opt_ts(created + _DAY if done else None),
                    sort_order=n,
                )  # fmt: skip

    def exercise_row(self, u: _User, **overrides: object) -> Row:
        row = dict(
            id=self.uid(), name=f"My {self.text(1).lower()}", description="custom",
            category=self.rng.choice(self.enums["exercise_category"]), muscle_groups=self.tags(),
            equipment=None, is_custom=1, is_builtin=0, user_id=self.ref(u),
            created_at=self.ts(self.after(u.created)),
        )  # fmt: skip
        return row | overrides

    def fitness(self, u: _User) -> list[str]:
        """Workouts with sections, exercises, sessions and sets; returns the workout ids."""
        rng, add = self.rng, self.add
        pool = list(_EXERCISE_IDS)
        if self.maybe(0.05):
            pool.append(add("exercises", **self.exercise_row(u))["id"])
        workouts = []
        for _ in range(self.count(0, 0, 0, 0, 0, 0, 1, 2)):
            created = self.after(u.created)
            workout = add(
                "workouts", id=self.uid(), user_id=self.ref(u), name=f"{self.text(1)} day",
                description=None, estimated_duration=rng.choice((30, 45, 60, None)),
                is_template=self.flag(0.2), created_at=self.ts(created),
                updated_at=self.ts(self.after(created)),
            )  # fmt: skip
            workouts.append(workout["id"])
            for s, name in enumerate(("Warm-up", "Main")):
                section = add(
                    "workout_sections", id=self.uid(), workout_id=workout["id"], name=name,
                    sort_order=s,
                )  # fmt: skip
                for n in range(rng.randint(1, 2)):
                    add(
                        "workout_exercises", id=self.uid(), workout_id=workout["id"],
                        section_id=section["id"] if self.flag(0.9) else None,
                        exercise_id=rng.choice(pool), sets=rng.randint(1, 5),
                        reps=rng.choice(("8-12", "5", "AMRAP", None)),
                        weight=rng.choice(("60kg", "bodyweight", "135 lb", None)),
                        duration=rng.choice((None, 30, 60)), rest_seconds=rng.choice((60, 90)),
                        notes=None, sort_order=n,
                    )  # fmt: skip
            for _ in range(rng.randint(1, 2)):
                self.workout_session(u, workout["id"], pool)
        if workouts and self.maybe(0.2):
            created = self.after(u.created)
            weeks = rng.randint(2, 4)
            program = add(
                "training_programs", id=self.uid(), user_id=self.ref(u), name="Strength block",
                description=None, duration_weeks=weeks, goal=rng.choice(("strength", None)),
                difficulty=rng.choice(("beginner", "intermediate", None)),
                is_active=self.flag(), started_at=self.opt_ts(created if self.flag() else None),
                completed_at=self.opt_ts(None), created_at=self.ts(created),
                updated_at=self.ts(created),
            )  # fmt: skip
            for w in range(1, weeks + 1):
                week = add(
                    "program_weeks", id=self.uid(), program_id=program["id"], week_number=w,
                    name=f"Week {w}", is_deload=int(w == weeks), notes=None,
                )  # fmt: skip
                add(
                    "program_workouts", id=self.uid(), program_week_id=week["id"],
                    workout_id=rng.choice(workouts), day_of_week=rng.randrange(7), order_index=0,
                    intensity_modifier=rng.choice((1.0, 0.9, 1.05, None)),
                )  # fmt: skip
        return workouts

    def workout_session(self, u: _User, workout_id: str, pool: list[str]) -> None:
        rng, add = self.rng, self.add
        start = self.after(u.created)
        session = add(
            "workout_sessions", id=self.uid(), user_id=self.ref(u),
            workout_id=workout_id if self.flag(0.8) else None, started_at=self.ts(start),
            completed_at=self.opt_ts(start + 3600 if self.flag(0.8) else None), notes=None,
            rating=rng.choice((None, 3, 4, 5)),
        )  # fmt: skip
        sets = []
        for n in range(1, rng.randint(2, 4) + 1):
            sets.append(add(
                "exercise_sets", id=self.uid(), session_id=session["id"],
                exercise_id=rng.choice(pool), set_number=n, reps=rng.randint(3, 12),
                weight=round(rng.uniform(20, 140), 1), duration=None, is_warmup=int(n == 1),
                is_dropset=self.flag(0.1), rpe=rng.choice((None, 7, 8, 9)), notes=None,
                completed_at=self.opt_ts(start + 300 * n if self.flag(0.9) else None),
            ))  # fmt: skip
        if self.maybe(0.3):
            best = max(sets, key=lambda s: s["weight"])
            add(
                "personal_records", id=self.uid(), user_id=self.ref(u),
                exercise_id=best["exercise_id"], record_type="max_weight", value=best["weight"],
                reps=best["reps"], achieved_at=self.ts(start),
                exercise_set_id=best["id"] if self.flag(0.8) else None,
                previous_value=round(best["weight"] - 2.5, 1) if self.flag() else None,
                created_at=self.ts(start),
            )  # fmt: skip

    def book_row(self, u: _User, **overrides: object) -> Row:
        rng = self.rng
        created = self.after(u.created)
        pages = rng.randint(80, 600)
        row = dict(
            id=self.uid(), user_id=self.ref(u), title=rng.choice(_BOOKS),
            author=rng.choice(("Dennis DeSantis", "Bobby Owsinski", None)), total_pages=pages,
            current_page=rng.randrange(pages), status=rng.choice(("reading", "completed")),
            started_at=self.opt_ts(created if self.flag(0.9) else None),
            completed_at=self.opt_ts(None), rating=rng.choice((None, 3, 4, 5)), notes=None,
            created_at=self.ts(created), updated_at=self.ts(self.after(created)),
        )  # fmt: skip
        return row | overrides

    def learning(self, u: _User) -> None:
        rng, add = self.rng, self.add
        for _ in range(self.count(0, 0, 0, 1, 2)):
            book = add("books", **self.book_row(u))
            for _ in range(self.count(0, 1, 2, 3)):
                add(
                    "reading_sessions", id=self.uid(), book_id=book["id"], user_id=self.ref(u),
                    pages_read=rng.randint(1, 40), duration_minutes=rng.choice((None, 15, 30)),
                    started_at=self.ts(self.after(u.created)), notes=None,
                )  # fmt: skip
        for lesson in rng.sample(_LESSON_IDS, self.count(0, 1)):
            status = rng.choice(("not_started", "in_progress", "completed"))
            started = self.after(u.created)
            add(
                "user_lesson_progress", id=self.uid(), user_id=self.ref(u), lesson_id=lesson,
                status=status, started_at=self.opt_ts(started if status != "not_started" else None),
                completed_at=self.opt_ts(started + 600 if status == "completed" else None),
                quiz_score=rng.randrange(101) if status == "completed" else None,
                attempts=rng.randrange(4),
            )  # fmt: skip
        for drill in rng.sample(_DRILL_IDS, self.count(0, 1)):
            attempts, best = rng.randint(1, 40), rng.randrange(11)
            last = self.after(u.created)
            add(
                "user_drill_stats", id=self.uid(), user_id=self.ref(u), drill_id=drill,
                attempts=attempts, correct=rng.randrange(attempts + 1),
                streak=rng.randrange(best + 1), best_streak=best,
                last_attempted_at=self.ts(last),
                next_due_at=self.opt_ts(last + _DAY if self.flag() else None),
            )  # fmt: skip
        if self.maybe(0.15):
            created = self.after(u.created)
            cards = rng.randint(3, 8)
            deck = add(
                "flashcard_decks", id=self.uid(), user_id=self.ref(u), name="Intervals",
                description=None, category="theory", card_count=cards, created_at=self.ts(created),
                updated_at=self.ts(created),
            )  # fmt: skip
            for n in range(cards):
                add(
                    "flashcards", id=self.uid(), deck_id=deck["id"], front=f"Interval {n}?",
                    back=rng.choice(("m3", "P5", "Tritonus — 3 Ganztöne")),
                    ease_factor=round(rng.uniform(1.3, 2.8), 2), interval=rng.randrange(30),
                    next_review=self.opt_ts(self.after(created) if self.flag() else None),
                    review_count=rng.randrange(10), created_at=self.ts(created),
                )  # fmt: skip

    def planning(self, u: _User, workouts: list[str]) -> None:
        rng, add = self.rng, self.add
        events: list[str] = []
        for _ in range(self.count(0, 1, 2, 3)):
            start = self.after(u.created)
            parent = rng.choice(events) if events and self.maybe(0.3) else None
            workout = rng.choice(workouts) if workouts and self.flag(0.3) else None
            add(
                "calendar_events", id=self.uid(), user_id=self.ref(u), title=self.text(),
                description=rng.choice((None, "Studio session\nBring headphones 🎧")),
                event_type="workout" if workout else rng.choice(self.enums["calendar_event_type"]),
                start_time=self.ts(start),
                end_time=self.opt_ts(start + 3600 if self.flag(0.8) else None),
                all_day=self.flag(0.1), location=rng.choice((None, "Home studio", "Gym")),
                workout_id=workout, recurrence_rule="FREQ=WEEKLY;BYDAY=MO" if parent else None,
                recurrence_end=self.opt_ts(None), parent_event_id=parent,
                color=rng.choice(_COLORS), reminder_minutes=rng.choice((None, 5, 15)),
                metadata=self.json({"source": "app", "attendees": ["me"], "v": 2})
                if self.flag(0.3) else None,
                created_at=self.ts(start), updated_at=self.ts(start),
            )  # fmt: skip
            events.append(self.rows["calendar_events"][-1]["id"])
        for offset in rng.sample(range((_NOW - u.created) // _DAY), self.count(0, 1, 2)):
            t = u.created + offset * _DAY
            items = [{"id": self.hex(32), "title": self.text(), "done": bool(self.flag())}]
            add(
                "daily_plans", id=self.uid(), user_id=self.ref(u), date=self.day(t),
                items_json=self.json(items) if self.flag(0.9) else "[]",
                notes=rng.choice((None, "Big day", "")), created_at=self.ts(t),
                updated_at=self.ts(t + 60),
            )  # fmt: skip
        if self.maybe(0.05):
            add(
                "plan_templates", id=self.uid(), user_id=self.ref(u), name="My week",
                description=None, items_json=self.json([{"day": "mon", "blocks": [25, 5, 25]}]),
                is_public=self.flag(0.2), category=None, created_at=self.ts(self.after(u.created)),
            )  # fmt: skip

    def journal_row(self, u: _User, **overrides: object) -> Row:
        rng = self.rng
        created = self.after(u.created)
        row = dict(
            id=self.uid(), user_id=self.ref(u), title=rng.choice((None, "Session notes", "Ideen")),
            content=rng.choice(("Finished the drop.", "Line one\nLine two", "¡Hecho! ✅")),
            mood=rng.choice((None, "happy", "tired")), tags_json=self.tags(),
            created_at=self.ts(created), updated_at=self.ts(self.after(created)),
        )  # fmt: skip
        return row | overrides

    def idea_row(self, u: _User, **overrides: object) -> Row:
        rng = self.rng
        created = self.after(u.created)
        row = dict(
            id=self.uid(), user_id=self.ref(u),
            content=rng.choice(("Reverse the vocal chop", "Use 7/8 in the bridge", "和声を試す")),
            category=rng.choice((None, "music")), tags_json=self.tags(),
            is_favorite=self.flag(0.2), created_at=self.ts(created), updated_at=self.ts(created),
        )  # fmt: skip
        return row | overrides

    def track_row(self, u: _User, **overrides: object) -> Row:
        rng = self.rng
        created = self.after(u.created)
        tid = self.uid()
        row = dict(
            id=tid, user_id=self.ref(u), title=rng.choice(("Reference A", "Clair de Lune")),
            artist=rng.choice((None, "Debussy", "Röyksopp")),
            r2_key=f"tracks/{u.id.lower()}/{tid}.mp3",
            mime_type=rng.choice(("audio/mpeg", "audio/wav")), bytes=rng.randint(10**5, 6 * 10**7),
            sha256=self.hex(256) if self.flag(0.9) else None,
            duration_seconds=round(rng.uniform(60, 420), 3), tags_json=self.tags(),
            visibility=rng.choice(self.enums["track_visibility"]), created_at=self.ts(created),
            updated_at=self.ts(created),
        )  # fmt: skip
        return row | overrides

    def content(self, u: _User) -> None:
        rng, add = self.rng, self.add
        for _ in range(self.count(0, 1, 2)):
            add("journal_entries", **self.journal_row(u))
        if self.maybe(0.1):
            created = self.after(u.created)
            add(
                "infobase_entries", id=self.uid(), user_id=self.ref(u), title="Mix checklist",
                content="1. Gain staging\n2. EQ\n3. Bus comp", category="mixing",
                tags_json=self.tags(), is_public=self.flag(0.2), created_at=self.ts(created),
                updated_at=self.ts(created),
            )  # fmt: skip
        for _ in range(self.count(0, 1)):
            add("ideas", **self.idea_row(u))
        for _ in range(self.count(*[0] * 17, 1, 1, 2)):
            track = add("reference_tracks", **self.track_row(u))
            if self.maybe(0.6):
                analyzed = self.after(u.created)
                sections = [{"start": 0, "label": "intro"}, {"start": 32.5, "label": "drop"}]
                add(
                    "track_analysis_cache", id=self.uid(), track_id=track["id"],
                    bpm=round(rng.uniform(70, 175), 2), key=rng.choice(("Am", "F#m", "C")),
                    energy=rng.random(), danceability=rng.random(),
                    sections_json=self.json(sections),
                    waveform_json=self.json([round(rng.random(), 3) for _ in range(16)]),
                    analyzer_version="essentia-2.1", analyzed_at=self.ts(analyzed),
                    created_at=self.ts(analyzed),
                )  # fmt: skip
        if self.maybe(0.03):
            add(
                "feedback", id=self.uid(), user_id=self.ref(u), type=rng.choice(("bug", "idea")),
                message="The timer skips a second sometimes", page_url="https://app.example/focus",
                user_agent="Mozilla/5.0 (Macintosh)", status=rng.choice(("new", "resolved")),
                created_at=self.ts(self.after(u.created)),
            )  # fmt: skip
        for _ in range(self.count(0, 1, 2)):
            add(
                "notifications", id=self.uid(), user_id=self.ref(u),
                type=rng.choice(("achievement", "reminder")), title="Nice work!",
                message=rng.choice((None, "You earned 10 coins")),
                data_json=self.json({"coins": 10, "link": "/progress"}) if self.flag() else None,
                is_read=self.flag(), created_at=self.ts(self.after(u.created)),
            )  # fmt: skip


# -- writing the file ---------------------------------------------------------------------------


def _insert_sql(table: Table, row: Row | None = None) -> str:
    """An INSERT with named parameters, except for the row's _Raw values, written inline."""
    cols = [c.source_name for c in _d1_columns(table)]
    values = ", ".join(
        row[c] if row is not None and isinstance(row[c], _Raw) else f":{c}" for c in cols
    )
    return f"INSERT INTO {_q(table.name)} ({', '.join(map(_q, cols))}) VALUES ({values})"


def build_sample_db(
    path: str | os.PathLike, *, users: int = 200, seed: int = 0, bad_rows: bool = True
) -> SampleSummary:
    """Write a new D1-like SQLite file; the same arguments always give the same contents.

    Foreign keys are off while inserting, as bad rows include orphans; everything is one
    transaction of per-table ``executemany`` calls, so 10,000 users take seconds.
    """
    if users < 10:
        raise ValueError("users must be at least 10: the special rows need distinct users")
    builder = _Builder(random.Random(seed))
    drifted = builder.populate(users, bad_rows)
    path = Path(path)
    for stale in (path, *(Path(f"{path}{s}") for s in ("-journal", "-wal", "-shm"))):
        stale.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.executescript(sqlite_ddl(SCHEMA))
        conn.execute("PRAGMA foreign_keys=OFF")
        with conn:
            for table in SCHEMA.tables:
                conn.executemany(_insert_sql(table), builder.rows[table.name])
            for name, row in builder.raw_rows:
                conn.execute(_insert_sql(SCHEMA.table(name), row), row)
        counts = {
            t.name: conn.execute(f"SELECT count(*) FROM {_q(t.name)}").fetchone()[0]
            for t in SCHEMA.tables
        }
    finally:
        conn.close()
    return SampleSummary(counts, tuple(builder.rejects), drifted)
