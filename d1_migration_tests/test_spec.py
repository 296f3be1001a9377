"""The table spec against the real D1 schema (shared/d1/0100_master_reset.sql)."""

import sqlite3

from d1_migration.spec.tables import SCHEMA

# FKs the map adds where D1 has none.
ADDED_BY_MAP = {("calendar_events", "parent_event_id")}


def test_spec_covers_every_real_table_and_column(real_schema_sql):
    d1 = sqlite3.connect(":memory:")
    d1.executescript(real_schema_sql)
    real_tables = {r[0] for r in d1.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert real_tables == {t.name for t in SCHEMA.tables}
    for table in SCHEMA.tables:
        info = {r[1]: r for r in d1.execute(f"PRAGMA table_info('{table.name}')")}
        read = {c.source_name: c for c in table.source_columns if c.source_name}
        assert set(read) == set(info), table.name
        for name, column in read.items():
            _, _, declared, notnull, _, pk = info[name]
            assert column.source_type == declared, (table.name, name)
            same_column = [c for c in table.columns if c.source_name == name]
            assert any(c.nullable == (not notnull and not pk) for c in same_column), (
                table.name,
                name,
            )
        assert (
            tuple(r[1] for r in sorted(info.values(), key=lambda r: r[5]) if r[5])
            == table.source_pk
        )


def test_spec_keeps_every_real_foreign_key(real_schema_sql):
    d1 = sqlite3.connect(":memory:")
    d1.executescript(real_schema_sql)
    for table in SCHEMA.tables:
        real = {
            (r[3], r[2], r[4], r[6] if r[6] != "NO ACTION" else None)
            for r in d1.execute(f"PRAGMA foreign_key_list('{table.name}')")
        }
        ours = set()
        for column in table.foreign_keys:
            parent, parent_column = column.parent
            if (table.name, column.name) in ADDED_BY_MAP:
                continue
            parent_source = SCHEMA.table(parent).column(parent_column).source_name
            ours.add((column.source_name, parent, parent_source, column.on_delete))
        assert ours == real, table.name


def test_spec_keeps_every_real_unique_and_index(real_schema_sql):
    d1 = sqlite3.connect(":memory:")
    d1.executescript(real_schema_sql)
    for table in SCHEMA.tables:
        source_to_target = {c.source_name: c.name for c in table.source_columns if c.source_name}
        ours_unique = {(c.name,) for c in table.columns if c.unique} | set(table.uniques)
        ours_indexed = {tuple(i.expr.split(", ")) for i in table.indexes}
        for _, name, unique, origin, _ in d1.execute(f"PRAGMA index_list('{table.name}')"):
            cols = tuple(source_to_target[r[2]] for r in d1.execute(f"PRAGMA index_info('{name}')"))
            if origin == "pk":
                continue
            if unique:
                assert cols in ours_unique or cols == table.primary_key, (table.name, cols)
            else:
                assert cols in ours_indexed, (table.name, name)
