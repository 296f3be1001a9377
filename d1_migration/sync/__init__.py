"""Sync: which rows changed since the last run, and the one engine every entry point calls.

``shadow`` remembers, per target, what D1 looked like at the last committed sync (page
hashes, row digests, a generation the target confirms); ``target_lock`` makes sure only one
sync writes a target at a time; ``engine`` runs drift check, schema evolution and each
table's load in FK order with per-table isolation, for the Dagster assets, jobs, schedule,
cutover gate and CLI alike.
"""
