"""The Dagster code location: ``dagster dev`` and ``dagster asset materialize`` load ``defs``."""

from __future__ import annotations

import os

from dagster import AssetSelection, Definitions, EnvVar, define_asset_job, in_process_executor

from d1_migration.assets import TARGET_PREFIX, build_assets
from d1_migration.checks import build_table_checks, wallet_matches_ledger
from d1_migration.resources import D1Source, PostgresTarget
from d1_migration.tables import SCHEMA

SOURCE_ENV = "D1_MIGRATION_SOURCE"
TARGET_ENV = "D1_MIGRATION_TARGET_URL"


def build_resources() -> dict:
    """EnvVar keeps the URL out of the UI; unset variables fall back to the demo/embedded setup."""
    d1 = D1Source(path=EnvVar(SOURCE_ENV)) if os.environ.get(SOURCE_ENV) else D1Source()
    postgres = (
        PostgresTarget(url=EnvVar(TARGET_ENV)) if os.environ.get(TARGET_ENV) else PostgresTarget()
    )
    return {"d1": d1, "postgres": postgres}


migrate_job = define_asset_job(
    "migrate",
    selection=AssetSelection.key_prefixes(TARGET_PREFIX),
    description="Migrate every D1 table into Postgres (parents first) and run the checks.",
)

ASSETS = build_assets(SCHEMA)
ASSET_CHECKS = [build_table_checks(SCHEMA), wallet_matches_ledger]

defs = Definitions(
    assets=ASSETS,
    asset_checks=ASSET_CHECKS,
    jobs=[migrate_job],
    resources=build_resources(),
    # One process for all 66 steps: the multiprocess executor spends ~5 s per step starting
    # Python on a 2-core machine (measured 308 s vs 15 s for 66 trivial assets).
    executor=in_process_executor,
)
