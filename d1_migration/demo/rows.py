"""Rows valid by construction, from the table spec alone.

A column's kind, nullability, UNIQUE keys, simple CHECKs (``col >= n``), FK and enum domain
say what a valid D1 value is, so fixtures need no second description of the 66 tables: a column
added to ``tables.py`` gets values here with no edit. Rows are written in a tree of owners (a
user, the user's habits, the habits' logs); a reference to a table on the way up takes that row
(a habit log's ``user_id`` is its habit's user), any other reference one of the rows of the same
user or one shared by everybody (seed rows). What only a fixture knows (how many rows, seed ids,
the rows that must be bad) is given by the caller, as ``sample_data.py`` does.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from random import Random

from d1_migration.spec.model import Column, Kind, Schema, Table

START = 1_717_200_000  # 2024-06-01: the app's first users
NOW = 1_767_700_800  # 2026-01-06 12:00 UTC: the D1 export
NULL_SHARE = 0.3  # of a nullable column's values, and of nullable references
TRIES = 20  # new values for a UNIQUE key that collided, before the row is not written

Row = dict[str, object]

_WORDS = (
    "mix", "practice", "scales", "review", "draft", "bassline", "stretch", "read",
    "plan", "sketch", "vocals", "chords", "run", "study", "journal", "master",
)  # fmt: skip
# Text a conversion must keep exactly: newlines, double quotes, accents, CJK, emoji. No single
# quote: tests write sample values back into SQL literals.
_PHRASES = (
    "Line one\nLine two", "¡Hecho! ✅", "和声を試す", "Zoë Ramírez", 'DJ "Spin" Doe',
    "Tritonus — 3 Ganztöne", "Studio session\nBring headphones 🎧", "Köln", "C:\\samples",
)  # fmt: skip
# Strings a TEXT[] conversion must escape: a comma, quotes, a backslash, non-ASCII.
TAGS = (
    "lo-fi", "drums, percussion", 'the "hook"', "C:\\samples\\kicks", "café", "ドラム", "🎹 keys",
    "mixdown", "808",
)  # fmt: skip
# JSON a JSONB conversion must keep: nesting, arrays, unicode, 2^53, a small negative float,
# null. Objects, as the app writes (tests edit them with jsonb_set).
_JSON = (
    {"duration": 1500, "xp": 10, "ratio": 0.25},
    {"habit": "Stretch 🧘", "count": 2},
    {"quest_id": "uq_focus_1", "tags": ["daily"], "bonus": None},
    {"path": "/today", "ms": 412.5, "big": 2**53},
    {"provider": "google", "geo": {"country": "DE", "city": "Köln"}, "n": -1e-3},
    {"sections": [{"start": 0, "label": "intro"}, {"start": 32.5, "label": "drop"}]},
    {},
)
_UUID_CLEAR = ~(0xF000 << 64 | 0xC000 << 48)  # version and variant bits of a UUID
_UUID_V4 = 0x4000 << 64 | 0x8000 << 48
_CHECK = re.compile(r"(\w+) (>=|>) (-?\d+)")
_SPAN = {Kind.INTEGER: 100, Kind.BIGINT: 2**40, Kind.DOUBLE: 1000}


class NothingToReference(Exception):
    """A NOT NULL reference found no row to point at: the row is not written."""


@dataclass(slots=True, eq=False)
class Node:
    """A written row and the row that owns it, so the rows it owns find their references."""

    table: str
    row: Row
    parent: Node | None
    t: int  # when it was written (epoch seconds): its created_at; its other times are later


Value = Callable[[Node | None, int], object]


def d1_columns(table: Table) -> list[Column]:
    """The D1 columns behind a table, once each (sessions reads ``expires`` three times)."""
    seen: dict[str, Column] = {}
    for c in table.columns:
        if c.source_name and c.source_name not in seen:
            seen[c.source_name] = c
    return list(seen.values())


def _constructed(table: Table, links: Mapping[str, str]) -> set[str]:
    """Columns unique by construction, so their keys need no tracking: one text column of each
    UNIQUE key without references gets a running number; ids and digests are random."""
    out = {
        c.name
        for c in table.columns
        if c.kind in (Kind.ID, Kind.TOKEN_HASH, Kind.HEX_BYTEA)
        and not c.references
        and f"{table.name}.{c.name}" not in links
    }
    for key in table.unique_keys:
        columns = [table.column(n) for n in key]
        texts = [c.name for c in columns if c.kind is Kind.TEXT and not c.references]
        if texts and len(texts) == len(columns):
            out.add(texts[-1])
    return out


class RowFactory:
    """Writes valid rows of every table of ``schema``; ``links`` names the table an id column
    without FK points at (``{"user_quest_progress.quest_id": "universal_quests.id"}``)."""

    def __init__(self, schema: Schema, rng: Random, links: Mapping[str, str]) -> None:
        self.schema, self.rng, self.links = schema, rng, links
        self.nodes: dict[str, list[Node]] = {t.name: [] for t in schema.tables}
        self.shared: defaultdict[str, list[Node]] = defaultdict(list)  # anybody may refer to
        self.mine: defaultdict[str, list[Node]] = defaultdict(list)  # the current owner's
        self._numbers = itertools.count(1)
        self._texts = [  # drawn once: joining words for every value would be slow
            rng.choice(_PHRASES)
            if rng.random() < 0.2
            else " ".join(rng.choices(_WORDS, k=rng.randint(1, 3))).capitalize()
            for _ in range(2048)
        ]
        self._values: dict[str, list[tuple[str, Value]]] = {}
        self._by_name: dict[str, dict[str, Value]] = {}
        self._keys: dict[str, list[list[tuple[str, bool]]]] = {}
        self._seen: dict[tuple[str, int], set[tuple[object, ...]]] = defaultdict(set)
        for table in schema.tables:
            constructed = _constructed(table, links)
            self._values[table.name] = [
                (c.source_name, self._value(table, c, c.name in constructed))
                for c in d1_columns(table)
            ]
            self._by_name[table.name] = dict(self._values[table.name])
            self._keys[table.name] = [
                [(c.source_name, c.kind is Kind.ID) for c in map(table.column, key)]
                for key in table.unique_keys
                if not constructed & set(key) and all(table.column(n).source_name for n in key)
            ]

    def new_owner(self) -> None:
        """Rows written from now on belong to another user: references stay within them."""
        self.mine = defaultdict(list)

    def make(
        self,
        table: str,
        parent: Node | None,
        fixed: Mapping[str, object] | None = None,
        *,
        t: int | None = None,
        pool: list[Node] | None = None,
    ) -> Node | None:
        """A valid row of ``table`` owned by ``parent``, with ``fixed`` D1 values as given.

        Its time is ``t``, or a time after its parent's. ``pool`` is where later rows find it
        (``shared[table]``, ``mine[table]``, or None: not referred to). None when a NOT NULL
        reference has nothing to point at or its UNIQUE keys keep colliding.
        """
        fixed = fixed or {}
        t = t if t is not None else self.after(parent.t if parent else START)
        values = self._values[table]
        try:
            if fixed:
                row = {n: fixed[n] if n in fixed else value(parent, t) for n, value in values}
            else:
                row = {n: value(parent, t) for n, value in values}
            if self._keys[table] and not self._claim_keys(table, row, fixed, parent, t):
                return None
        except NothingToReference:
            return None
        node = Node(table, row, parent, t)
        self.nodes[table].append(node)
        if pool is not None:
            pool.append(node)
        return node

    def add(self, table: str, row: Row) -> Node:
        """A row written as given, bypassing every rule (a deliberate duplicate)."""
        node = Node(table, row, None, NOW)
        self.nodes[table].append(node)
        return node

    def _claim_keys(
        self, table: str, row: Row, fixed: Mapping[str, object], parent: Node | None, t: int
    ) -> bool:
        """Whether the row's UNIQUE keys are new (drawing other values for colliding ones);
        the keys are then taken. Ids compare in lower case, as the migration normalises them."""
        keys = self._keys[table]
        values = self._by_name[table]
        for _ in range(TRIES):
            found = [
                (n, tuple(str(row[c]).lower() if is_id else row[c] for c, is_id in key))
                for n, key in enumerate(keys)
                if all(row[c] is not None for c, _ in key)
            ]
            taken = [(n, k) for n, k in found if k in self._seen[table, n]]
            if not taken:
                for n, k in found:
                    self._seen[table, n].add(k)
                return True
            for n, _ in taken:
                for c, _ in keys[n]:
                    if c not in fixed:
                        row[c] = values[c](parent, t)
        return False

    # -- values -----------------------------------------------------------------------------

    # Draws use random() rather than randrange()/choice(), which cost five times as much, for
    # every value of 600,000 rows.

    def uuid(self) -> str:
        h = f"{self.rng.getrandbits(128) & _UUID_CLEAR | _UUID_V4:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def after(self, t: int, until: int = NOW) -> int:
        return t + int(self.rng.random() * max(1, until - t))

    def ts(self, t: int) -> str | int:
        """A datetime in one of the forms Workers code has written over time."""
        r = self.rng.random()
        ms = int(r * 1_000_000) % 1000  # the fraction, from the digits r has left
        if r < 0.45:
            return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))  # datetime('now')
        if r < 0.70:
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}Z"
        if r < 0.78:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
        if r < 0.84:
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t + 7200)) + f".{ms:03d}+02:00"
        if r < 0.89:
            return t  # Math.floor(Date.now() / 1000)
        if r < 0.94:
            return t * 1000 + ms  # Date.now()
        return str(t)

    def json(self, value: object) -> str:
        """Compact like JSON.stringify; non-ASCII sometimes escaped, as other writers do."""
        return json.dumps(value, separators=(",", ":"), ensure_ascii=self.rng.random() < 0.3)

    def _value(self, table: Table, column: Column, constructed: bool) -> Value:
        """How the column's D1 values are drawn: from its kind and constraints."""
        target = column.references or self.links.get(f"{table.name}.{column.name}")
        if target:
            # SQLite compares text case-sensitively: a value that derived columns look up is
            # written exactly (accounts.userId, for created_at)
            derived = (c.source_sql for c in table.columns if c.source_sql)
            exact = any(re.search(rf"\b{column.source_name}\b", sql) for sql in derived)
            return self._reference(column, target, exact)
        value = self._plain(table, column, constructed)
        if not column.nullable:
            return value
        random = self.rng.random
        if column.kind is Kind.TIMESTAMPTZ and column.source_type == "TEXT":
            # absent is NULL or, as some app paths write, ''
            return lambda p, t: (
                value(p, t) if random() >= NULL_SHARE else "" if random() < 0.3 else None
            )
        return lambda p, t: value(p, t) if random() >= NULL_SHARE else None

    def _plain(self, table: Table, column: Column, constructed: bool) -> Value:
        # Closures over local names, not methods: this runs for every value of 600,000 rows.
        rng, kind, ts, texts = self.rng, column.kind, self.ts, self._texts
        random, n_texts = rng.random, len(self._texts)
        if constructed and kind is Kind.TEXT:
            numbers = self._numbers
            return lambda p, t: f"{texts[int(random() * n_texts)]}-{next(numbers)}"
        if kind in _SPAN:
            low = 0
            if column.check:
                bound = _CHECK.fullmatch(column.check)
                if bound is None or bound[1] != column.name:
                    raise ValueError(
                        f"{table.name}.{column.name}: CHECK ({column.check}) is not `column >= "
                        "n` or `column > n`; give the column's values where the rows are planned"
                    )
                low = int(bound[3]) + (bound[2] == ">")
            span = _SPAN[kind]
            if kind is Kind.DOUBLE:
                return lambda p, t: round(low + random() * span, 3)
            return lambda p, t: low + int(random() * (span + 1))
        if kind is Kind.TEXT:
            literal = column.default
            if literal and literal.startswith("'"):  # a status the app leaves at its default
                default = literal[1:-1]
                return lambda p, t: default if random() < 0.7 else texts[int(random() * n_texts)]
            return lambda p, t: texts[int(random() * n_texts)]
        if kind is Kind.ID:
            uuid = self.uuid
            return lambda p, t: uuid()
        if kind is Kind.BOOLEAN:
            bits = rng.getrandbits
            return lambda p, t: bits(1)
        if kind is Kind.ENUM:
            domain = self.schema.enum(column.enum).values
            return lambda p, t: domain[int(random() * len(domain))]
        if kind is Kind.TIMESTAMPTZ:
            if column.source_type == "INTEGER":  # Date.now()
                return lambda p, t: (t + int(random() * (NOW - t))) * 1000 + int(random() * 1000)
            if column.name == "created_at":
                return lambda p, t: ts(t)
            return lambda p, t: ts(t + int(random() * (NOW - t)))
        if kind is Kind.DATE:
            return lambda p, t: time.strftime("%Y-%m-%d", time.gmtime(t + random() * (NOW - t)))
        if kind is Kind.JSONB:
            return lambda p, t: self.json(_JSON[int(random() * len(_JSON))])
        if kind is Kind.TEXT_ARRAY:
            return lambda p, t: self.json(rng.sample(TAGS, int(random() * 5)))
        if kind in (Kind.HEX_BYTEA, Kind.TOKEN_HASH):  # a digest; a session token's random hex
            bits = rng.getrandbits
            return lambda p, t: f"{bits(256):064x}"
        raise ValueError(f"{table.name}.{column.name}: no D1 values for kind {kind}")

    def _reference(self, column: Column, target: str, exact: bool) -> Value:
        """The owner on the way up if it is of the target table, else a row of the same user
        or a shared one (each in turn, so every seed row has rows referring to it); UPPERCASE
        UUIDs are sometimes written in lower case, as the app did, unless ``exact``."""
        parent_table, parent_column = target.split(".")
        source = self.schema.table(parent_table).column(parent_column).source_name
        random, shared, nullable = self.rng.random, self.shared[parent_table], column.nullable
        turn = itertools.count()

        def pick(parent: Node | None, t: int) -> object:
            owner = parent
            while owner is not None and owner.table != parent_table:
                owner = owner.parent
            if owner is None:
                mine = self.mine[parent_table]
                n = len(shared) + len(mine)
                if n == 0 or (nullable and random() < NULL_SHARE):
                    if nullable:
                        return None
                    raise NothingToReference
                i = int(random() * n)
                owner = (
                    shared[next(turn) % len(shared)] if i < len(shared) else mine[i - len(shared)]
                )
            value = owner.row[source]
            if not exact and isinstance(value, str) and len(value) == 36 and value.isupper():
                return value.lower() if random() < 0.5 else value
            return value

        return pick
