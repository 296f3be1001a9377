"""Asset keys: ``d1/d1_<table>`` for a D1 table (read only), ``pg/<table>`` for its Postgres copy.

The asset graph titles a node by the last part of its key, so the source's is ``d1_<table>``:
``d1_users`` and ``users`` read apart at a glance, where two nodes titled ``users`` did not.
"""

from dagster import AssetKey

SOURCE_PREFIX = "d1"
TARGET_PREFIX = "pg"
SOURCE_NAME_PREFIX = "d1_"


def source_key(table: str) -> AssetKey:
    return AssetKey([SOURCE_PREFIX, SOURCE_NAME_PREFIX + table])


def target_key(table: str) -> AssetKey:
    return AssetKey([TARGET_PREFIX, table])


def table_of(key: AssetKey) -> str:
    """The table a ``d1/`` or ``pg/`` asset key names."""
    prefix, name = key.path
    if prefix == SOURCE_PREFIX:
        return name.removeprefix(SOURCE_NAME_PREFIX)
    return name
