"""Sources: how D1's rows are acquired and read, in the order they are needed.

``d1_api`` copies a live database over Cloudflare's API (``d1://``), ``export`` replays a
``wrangler d1 export`` SQL file, and ``snapshot`` reads any of them, or a plain SQLite/WAL
file, through one consistent read-only SQLite snapshot as Arrow batches, with the rowids,
page hashes and D1 table names the rest of the pipeline needs.
"""
