"""Schema drift: D1 as it is now against the table spec, checked before any data moves.

A column the spec does not know would be dropped without a trace, and one the spec expects
but D1 lacks would fail mid-load; both stop the run instead, with the change to make.
"""

from dataclasses import dataclass, field

from d1_migration.source.snapshot import Snapshot, skipped_table
from d1_migration.spec.model import Schema


@dataclass
class Drift:
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # internal tables, not migrated
    by_table: dict[str, list[str]] = field(default_factory=dict)  # problems of spec tables

    def __bool__(self) -> bool:
        return bool(self.problems)

    def add(self, table: str | None, problem: str) -> None:
        self.problems.append(problem)
        if table:
            self.by_table.setdefault(table, []).append(problem)


def schema_drift(snapshot: Snapshot, schema: Schema, skip: tuple[str, ...] = ()) -> Drift:
    names = snapshot.table_names()
    drift = Drift(skipped=sorted(n for n in names if skipped_table(n, skip)))
    known = {t.name for t in schema.tables}
    for name in sorted(set(names) - known - set(drift.skipped)):
        drift.add(
            None,
            f"unknown table {name}: D1 has it, the spec does not; declare it in "
            f"d1_migration/spec/tables.py, or skip it (D1Source skip_tables)",
        )
    for table in schema.tables:
        if table.name not in names:
            drift.add(
                table.name,
                f"missing table {table.name}: the spec expects it, D1 has none; remove it "
                "from d1_migration/spec/tables.py or point "
                "D1_MIGRATION_SOURCE at the right database",
            )
            continue
        actual = snapshot.columns(table.name)
        expected = {c.source_name: c.source_type for c in table.columns if c.source_name}
        for column in sorted(set(actual) - set(expected)):
            drift.add(
                table.name,
                f"added column {table.name}.{column} ({actual[column] or 'no type'}): declare "
                f"it on {table.name} in d1_migration/spec/tables.py",
            )
        for column in sorted(set(expected) - set(actual)):
            drift.add(
                table.name,
                f"removed column {table.name}.{column}: D1 no longer has it; remove it (or "
                f"mark it added=True) in d1_migration/spec/tables.py",
            )
        for column in sorted(set(expected) & set(actual)):
            if actual[column] != expected[column]:
                drift.add(
                    table.name,
                    f"retyped column {table.name}.{column}: D1 declares {actual[column]}, the "
                    f"spec reads {expected[column]}; update its kind in "
                    "d1_migration/spec/tables.py",
                )
    return drift
