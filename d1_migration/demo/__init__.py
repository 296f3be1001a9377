"""The demo's own code, outside the migration's core: a sample D1 database built from the spec.

Nothing in the migration imports it; the `demo` command, the tests and the benchmarks do.
"""
