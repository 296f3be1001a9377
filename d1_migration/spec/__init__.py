"""The spec: what Postgres must look like, and how each D1 column becomes a Postgres one.

``model`` holds the vocabulary (Schema, Table, Column, enums), ``kinds`` the one registry of
column kinds (D1 projection, Arrow type, Postgres type, converter), ``tables`` the 66 tables
of the schema migration map written in that vocabulary. Everything downstream (DDL, schema
evolution, transforms, assets, checks, sync, fixtures) is derived from it.
"""
