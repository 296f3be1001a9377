"""The target: PostgreSQL as the spec describes it, and how rows get there.

``connection`` opens it without ever showing its password, ``embedded`` starts a local one
when none is configured, ``ddl`` creates the spec's tables and the bookkeeping schema
(``d1_migration.*``: id_map, ref_map, rejected_rows, sync_state), ``evolve`` brings an
existing target up to the spec or refuses with the DDL to review, and ``load`` moves a
table's converted batches in (stage, quarantine rules, merge), one transaction per table.
"""
