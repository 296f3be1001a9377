"""Verification: is the copy trustworthy? Plain functions over a Postgres connection and a
D1 snapshot, which the asset checks, the engine and the cutover gate call.

``drift`` compares D1's schema with the spec before any data moves, ``content`` re-derives a
table (whole or a rotating slice) from D1 and compares it value by value with Postgres,
``checks`` holds each check's query and result, and ``cutover`` the gate's verdict: two
syncs and every check, with readable reasons when NOT READY.
"""
