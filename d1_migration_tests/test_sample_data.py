"""The synthetic D1 fixture: its DDL, its contents, and that its bad rows are exactly those listed.

Other tests trust ``SampleSummary`` as the truth about the fixture, so these check that truth
against the file itself, without Postgres.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

import pytest

from d1_migration.demo.sample_data import SampleSummary, build_sample_db, sqlite_ddl
from d1_migration.spec.model import Column, Kind, Table
from d1_migration.spec.tables import SCHEMA

USERS = 50
CODES = {
    "bad_datetime", "impossible_datetime", "bad_json", "bad_text_array", "bad_enum", "wrong_type",
    "out_of_range", "bad_boolean", "nul_character", "invalid_utf8", "bad_hex", "check_violation",
    "not_null", "missing_parent", "parent_quarantined", "duplicate_key", "implausible_datetime",
}  # fmt: skip
EPOCH = re.compile(r"^[0-9]{9,13}$")
UNSTORABLE = re.compile("[\x00\udc80-\udcff]")  # NUL, or invalid UTF-8 after surrogateescape


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SampleSummary]:
    path = tmp_path_factory.mktemp("sample") / "x.sqlite"
    return path, build_sample_db(path, users=USERS)


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    conn.text_factory = bytes  # one row holds invalid UTF-8 on purpose
    return conn


def d1_columns(table: Table) -> dict[str, Column]:
    return {c.source_name: c for c in reversed(table.columns) if c.source_name}


def rows(conn: sqlite3.Connection, table: Table) -> list[dict[str, object]]:
    """Rows by D1 column name; invalid UTF-8 survives as lone surrogates."""
    cur = conn.execute(f'SELECT * FROM "{table.name}" ORDER BY rowid')
    names = [d[0] for d in cur.description]
    decoded = (
        [v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v for v in r]
        for r in cur
    )
    return [dict(zip(names, r, strict=True)) for r in decoded]


def source_pk(table: Table, row: dict[str, object]) -> str:
    key = [row[c] for c in table.source_pk]
    return str(key[0]) if len(key) == 1 else json.dumps(key)


def rejected(summary: SampleSummary) -> set[tuple[str, str]]:
    return {(r.table, r.source_pk) for r in summary.rejects}


def test_ddl_creates_every_table_in_the_d1_shape() -> None:
    conn = sqlite3.connect(":memory:")
    conn.executescript(sqlite_ddl(SCHEMA))
    names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert names == {t.name for t in SCHEMA.tables}
    assert len(names) == 66
    columns = [r[1] for r in conn.execute("PRAGMA table_info(sessions)")]
    assert columns == ["id", "sessionToken", "userId", "expires"]
    pk = sorted((r[5], r[1]) for r in conn.execute("PRAGMA table_info(verification_tokens)"))
    assert [name for order, name in pk if order] == ["identifier", "token"]
    fks = {(r[3], r[2], r[4], r[6]) for r in conn.execute("PRAGMA foreign_key_list(user_skills)")}
    assert ("skill_key", "skill_definitions", "key", "NO ACTION") in fks
    assert ("user_id", "users", "id", "CASCADE") in fks


def test_every_table_has_rows(sample: tuple[Path, SampleSummary]) -> None:
    path, summary = sample
    assert set(summary.row_counts) == {t.name for t in SCHEMA.tables}
    assert all(n > 0 for n in summary.row_counts.values()), summary.row_counts
    with connect(path) as conn:
        for table in SCHEMA.tables:
            count = conn.execute(f'SELECT count(*) FROM "{table.name}"').fetchone()[0]
            assert summary.row_counts[table.name] == count


def test_rejects_are_real_rows_listed_once(sample: tuple[Path, SampleSummary]) -> None:
    path, summary = sample
    assert {r.reason_code for r in summary.rejects} == CODES
    assert len(rejected(summary)) == len(summary.rejects)
    with connect(path) as conn:
        for reject in summary.rejects:
            table = SCHEMA.table(reject.table)
            composite = len(table.source_pk) > 1
            key = json.loads(reject.source_pk) if composite else [reject.source_pk]
            where = " AND ".join(f'"{c}" = ?' for c in table.source_pk)
            found = conn.execute(f'SELECT count(*) FROM "{table.name}" WHERE {where}', key)
            assert found.fetchone()[0] == 1, reject


def test_same_seed_same_file(tmp_path: Path) -> None:
    def dump(path: Path) -> dict[str, list[tuple]]:
        with connect(path) as conn:
            return {
                t.name: conn.execute(f'SELECT * FROM "{t.name}" ORDER BY rowid').fetchall()
                for t in SCHEMA.tables
            }

    first = build_sample_db(tmp_path / "a.sqlite", users=30, seed=7)
    second = build_sample_db(tmp_path / "b.sqlite", users=30, seed=7)
    other = build_sample_db(tmp_path / "c.sqlite", users=30, seed=8)
    assert first == second
    assert dump(tmp_path / "a.sqlite") == dump(tmp_path / "b.sqlite")
    assert dump(tmp_path / "a.sqlite") != dump(tmp_path / "c.sqlite")
    assert other != first


def test_only_intended_orphans(sample: tuple[Path, SampleSummary]) -> None:
    """SQLite compares ids case-sensitively, so lowercase references to UPPERCASE user ids show
    up too; they are not orphans once ids are normalised, and they must exist."""
    path, summary = sample
    orphans, case_only = set(), 0
    with connect(path) as conn:
        for table_name, rowid, parent, fkid in conn.execute("PRAGMA foreign_key_check"):
            table_name, parent = table_name.decode(), parent.decode()
            fk = next(r for r in conn.execute(f'PRAGMA foreign_key_list("{table_name}")')
                      if r[0] == fkid)  # fmt: skip
            child, parent_column = fk[3].decode(), fk[4].decode()
            table = SCHEMA.table(table_name)
            pk_sql = ", ".join(f'"{c}"' for c in table.source_pk)
            *key, value = conn.execute(
                f'SELECT {pk_sql}, "{child}" FROM "{table_name}" WHERE rowid = ?', [rowid]
            ).fetchone()
            exists = conn.execute(
                f'SELECT count(*) FROM "{parent}" WHERE lower("{parent_column}") = lower(?)',
                [value],
            ).fetchone()[0]
            if exists:
                case_only += 1
            else:
                pk = [k.decode() for k in key]
                orphans.add((table_name, pk[0] if len(pk) == 1 else json.dumps(pk)))
    missing = {(r.table, r.source_pk) for r in summary.rejects if r.reason_code == "missing_parent"}
    assert orphans == missing
    assert case_only > 0


def test_wallet_drift_is_exactly_the_listed_users(sample: tuple[Path, SampleSummary]) -> None:
    path, summary = sample
    bad = rejected(summary)
    ledger = SCHEMA.table("points_ledger")
    wallets = SCHEMA.table("user_wallet")
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    with connect(path) as conn:
        for row in rows(conn, ledger):
            if (ledger.name, source_pk(ledger, row)) not in bad:
                total = sums[str(row["user_id"]).lower()]
                total[0] += row["coins"]
                total[1] += row["xp"]
        drifted = {
            str(row["user_id"]).lower()
            for row in rows(conn, wallets)
            if (wallets.name, source_pk(wallets, row)) not in bad
            and [row["coins"], row["xp"]] != sums[str(row["user_id"]).lower()]
        }
    assert drifted == {u.lower() for u in summary.drifted_wallet_users}
    assert len(summary.drifted_wallet_users) == max(2, USERS // 100)


def good_value(column: Column, value: object) -> bool:
    """Whether the migration should accept this D1 value for the column."""
    if value is None or (value == "" and column.kind not in (Kind.TEXT, Kind.ID)):
        return column.nullable and (value is None or column.kind is Kind.TIMESTAMPTZ)
    if isinstance(value, str) and UNSTORABLE.search(value):
        return False
    kind = column.kind
    if kind is Kind.BOOLEAN:
        return value in (0, 1) and isinstance(value, int)
    if kind is Kind.INTEGER:
        return isinstance(value, int) and -(2**31) <= value < 2**31
    if kind is Kind.BIGINT:
        return isinstance(value, int)
    if kind is Kind.DOUBLE:
        return isinstance(value, (int, float))
    if kind is Kind.TIMESTAMPTZ and isinstance(value, int):  # in an INTEGER column
        return column.source_type == "INTEGER" and (
            value in dict(column.flags) or _since_2001(value)
        )
    if not isinstance(value, str):
        return False
    if kind is Kind.ENUM:
        return value in SCHEMA.enum(column.enum).values
    if kind is Kind.JSONB:
        return _json(value) is not None
    if kind is Kind.TEXT_ARRAY:
        parsed = _json(value)
        return isinstance(parsed, list) and all(isinstance(v, str) for v in parsed)
    if kind is Kind.HEX_BYTEA:
        return re.fullmatch(r"[0-9a-f]{64}", value) is not None
    if kind is Kind.DATE:
        return re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value) is not None and _iso(value)
    if kind is Kind.TIMESTAMPTZ:
        if EPOCH.match(value):
            return _since_2001(int(value))
        return _iso(value.replace("Z", "+00:00"))
    return True


def _since_2001(epoch: int) -> bool:
    """Epoch seconds, or milliseconds from 1e11, at or after 2001-01-01: an instant the app
    can have written."""
    return (epoch / 1000 if epoch >= 10**11 else epoch) >= 978_307_200


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _iso(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def test_good_rows_are_clean(sample: tuple[Path, SampleSummary]) -> None:
    """Every value, CHECK and UNIQUE holds outside the listed rejects, so the listed ones are the
    only rows the migration may quarantine."""
    path, summary = sample
    bad = rejected(summary)
    dirty: list[tuple[str, str, str]] = []
    with connect(path) as conn:
        for table in SCHEMA.tables:
            columns = d1_columns(table)
            good = [r for r in rows(conn, table) if (table.name, source_pk(table, r)) not in bad]
            for row in good:
                dirty += [
                    (table.name, name, repr(value))
                    for name, value in row.items()
                    if not good_value(columns[name], value)
                ]
            ids = {c.source_name for c in table.columns if c.kind is Kind.ID and c.source_name}
            keys = [table.primary_key, *table.uniques]
            keys += [(c.name,) for c in table.columns if c.unique]
            for key in keys:
                names = [table.column(c).source_name for c in key]
                seen = Counter(
                    tuple(str(r[n]).lower() if n in ids else r[n] for n in names)
                    for r in good
                    if all(r[n] is not None for n in names)
                )
                dirty += [(table.name, str(key), str(v)) for v, n in seen.items() if n > 1]
            checks = [c.check for c in table.columns if c.check] + [e for _, e in table.checks]
            if table.name == "sessions":
                continue  # expires_at > created_at: both are derived from expires
            pk_sql = ", ".join(f'"{c}"' for c in table.source_pk)
            for expr in checks:
                for key in conn.execute(f'SELECT {pk_sql} FROM "{table.name}" WHERE NOT ({expr})'):
                    row = dict(zip(table.source_pk, (k.decode() for k in key), strict=True))
                    if (table.name, source_pk(table, row)) not in bad:
                        dirty.append((table.name, expr, source_pk(table, row)))
    assert not dirty


ROW_CODES = {"check_violation", "missing_parent", "parent_quarantined", "duplicate_key"}


def test_each_bad_row_has_exactly_one_problem(sample: tuple[Path, SampleSummary]) -> None:
    """A value-level reject has one bad value; a row-level one (CHECK, parent, duplicate) none."""
    path, summary = sample
    with connect(path) as conn:
        for reject in summary.rejects:
            table = SCHEMA.table(reject.table)
            columns = d1_columns(table)
            row = next(r for r in rows(conn, table) if source_pk(table, r) == reject.source_pk)
            bad = [name for name, value in row.items() if not good_value(columns[name], value)]
            assert len(bad) == (reject.reason_code not in ROW_CODES), (reject, bad)


def test_values_look_like_the_app_wrote_them(sample: tuple[Path, SampleSummary]) -> None:
    path, _ = sample
    forms = {
        "sqlite": r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d",
        "iso_ms_z": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",
        "iso_z": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
        "offset": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+02:00",
        "epoch_s": r"\d{10}",
        "epoch_ms": r"\d{13}",
        "empty": r"",
    }
    seen: set[str] = set()
    with connect(path) as conn:
        for table in SCHEMA.tables:
            for name, column in d1_columns(table).items():
                if column.kind is Kind.TIMESTAMPTZ:
                    for (value,) in conn.execute(f'SELECT "{name}" FROM "{table.name}"'):
                        text = value.decode() if isinstance(value, bytes) else str(value)
                        seen |= {f for f, rx in forms.items() if re.fullmatch(rx, text)}

        def column(sql: str) -> set[str]:
            return {v.decode() if isinstance(v, bytes) else v for (v,) in conn.execute(sql)}

        users = column("SELECT id FROM users")
        assert {u for u in users if u == u.upper()}, "some UPPERCASE user ids"
        assert column("SELECT skill_key FROM user_skills") <= column(
            "SELECT key FROM skill_definitions"
        )
        assert "item_theme_dark" in column("SELECT item_id FROM user_purchases")
        assert column("SELECT flow_id FROM onboarding_steps") == {"flow_main_v1"}
        assert "topic_intervals" in column("SELECT topic_id FROM learn_drills")
        assert column("SELECT parent_event_id FROM calendar_events") - {None}
        tags = column("SELECT items_json FROM ignition_packs WHERE id = 'pack_studio_odds'")
        assert all(c in next(iter(tags)) for c in (",", '\\"', "\\\\", "é"))
        assert "[]" in column("SELECT tags_json FROM journal_entries")
        assert 1 in column("SELECT emailVerified FROM users WHERE role = 'admin'")
        assert "proficiency" in column("SELECT skill_id FROM universal_quests")
        assert "system" in column("SELECT created_by FROM universal_quests")
    assert seen == set(forms)
