"""Asset keys: ``d1/<table>`` for a D1 table (read only), ``pg/<table>`` for its Postgres copy."""

from dagster import AssetKey

SOURCE_PREFIX = "d1"
TARGET_PREFIX = "pg"


def source_key(table: str) -> AssetKey:
    return AssetKey([SOURCE_PREFIX, table])


def target_key(table: str) -> AssetKey:
    return AssetKey([TARGET_PREFIX, table])
