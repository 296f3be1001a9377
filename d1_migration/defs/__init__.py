"""The Dagster layer: a thin shell over spec, source, target, sync and verify.

``keys`` names the assets (``d1/<table>`` sources, ``pg/<table>`` copies), ``resources`` the
configurable D1 source, Postgres target and sync settings (each falling back to its
environment variable at run time), ``assets`` the asset factory over the spec with the one
table step that calls the sync engine, ``asset_checks`` the checks' specs and their runner,
``jobs`` the cutover gate job, and ``dagster_storage`` Dagster's own pooled storage. The code
location itself is ``d1_migration.definitions``.
"""
