"""Dagster's own cost of one Materialize all of this project, with no data moved: the table
step's 66 asset specs and their check specs, yielding the events a real run yields (each
table's D1 observation, its materialization with the same metadata, its checks' results, the
sources' drift checks), into an ephemeral instance like the harness's runs. What is left when
the sync costs nothing: the floor under the ~70k target and the no-change re-sync.

    PYTHONPATH=. python -m benchmarks.dagster_floor [--repeat 5]

Variants, to see what costs what: ``as the project`` (everything above, Dagster's console
logger at its default, DEBUG, as the UI and the harness run); ``lean metadata``
(materializations without column schema and lineage); ``console at WARNING`` (the console
logger prints no event).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator

from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetObservation,
    DagsterInstance,
    MaterializeResult,
    MetadataValue,
    RunConfig,
    materialize,
    multi_asset,
)

from d1_migration.defs.asset_checks import check_specs
from d1_migration.defs.assets import table_spec
from d1_migration.defs.keys import source_key, target_key
from d1_migration.defs.table_metadata import (
    COLUMN_LINEAGE,
    COLUMN_SCHEMA,
    ROW_COUNT,
    TABLE_NAME,
    column_lineage,
    target_column_schema,
)
from d1_migration.spec.model import Table
from d1_migration.spec.tables import SCHEMA
from d1_migration.target.ddl import load_order
from d1_migration.verify.checks import SCHEMA_MATCHES

VARIANTS = ("as the project", "lean metadata", "console at WARNING")


def source_checks() -> Iterator[AssetCheckEvaluation]:
    """The sources' drift checks, which a run yields before any table."""
    for table in SCHEMA.tables:
        yield AssetCheckEvaluation(
            asset_key=source_key(table.name),
            check_name=SCHEMA_MATCHES,
            passed=True,
            metadata={"columns": len(table.columns)},
            severity=AssetCheckSeverity.ERROR,
        )


def table_events(
    table: Table, checks: dict[AssetKey, list[str]], rows: int = 1000, variant: str = VARIANTS[0]
) -> Iterator:
    """One table's events, shaped like the table step's (assets._table_events); ``checks``:
    each asset's check names (check_names)."""
    yield AssetObservation(
        asset_key=source_key(table.name),
        metadata={ROW_COUNT: rows, "d1_table": table.name},
    )
    metadata = {
        "mode": "full",
        "source_rows": rows,
        "quarantine_reasons": MetadataValue.json({}),
        "inserted": rows,
        "seconds": 0.1,
        ROW_COUNT: rows,
        TABLE_NAME: f"db.public.{table.name}",
    }
    if variant != "lean metadata":
        metadata[COLUMN_SCHEMA] = target_column_schema(table, SCHEMA)
        metadata[COLUMN_LINEAGE] = column_lineage(table)
    yield MaterializeResult(asset_key=target_key(table.name), metadata=metadata)
    for name in checks[target_key(table.name)]:
        yield AssetCheckResult(
            asset_key=target_key(table.name),
            check_name=name,
            passed=True,
            metadata={"d1_rows": rows, "postgres_rows": rows, "seconds": 0.01},
        )


def check_names(table_checks: list[AssetCheckSpec]) -> dict[AssetKey, list[str]]:
    checks: dict[AssetKey, list[str]] = {}
    for spec in table_checks:
        checks.setdefault(spec.asset_key, []).append(spec.name)
    return checks


def _run(variant: str) -> float:
    specs = [table_spec(t, SCHEMA) for t in SCHEMA.tables]
    table_checks = check_specs(SCHEMA)
    checks = check_names(table_checks)

    @multi_asset(name="migrate_tables", specs=specs, check_specs=table_checks)
    def migrate_tables():
        yield from source_checks()
        for table in load_order(SCHEMA):  # Dagster wants a multi-asset's outputs in FK order
            yield from table_events(table, checks, variant=variant)

    with DagsterInstance.ephemeral() as instance:
        started = time.perf_counter()
        result = materialize(
            [migrate_tables],
            instance=instance,
            raise_on_error=False,
            run_config=RunConfig(loggers={"console": {"config": {"log_level": "WARNING"}}})
            if variant == "console at WARNING"
            else None,
        )
        seconds = time.perf_counter() - started
    assert result.success, variant
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    _run("as the project")  # warm: imports, first-definition costs
    for variant in VARIANTS:
        runs = [_run(variant) for _ in range(args.repeat)]
        print(
            f"{variant:18} median {statistics.median(runs):.2f} s "
            f"(min {min(runs):.2f}, max {max(runs):.2f}, {args.repeat} runs)"
        )


if __name__ == "__main__":
    main()
