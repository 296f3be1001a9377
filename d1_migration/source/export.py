"""A `wrangler d1 export` file as a source: replayed into a local SQLite file, then read as one.

The export is SQL that SQLite itself runs: `PRAGMA defer_foreign_keys`, tables in creation order
(foreign keys are off while replaying), `INSERT INTO "t" VALUES(...)` with or without a column
list, `replace('a\\nb','\\n',char(10))` for newlines, `X'..'` blobs, `9e999` for infinity,
`sqlite_sequence` upkeep and statements over several lines. The file is streamed line by line,
so a dump of several GB needs no more memory than its longest statement; the replay is cached
by the file's size and modification time.

Exports are lossy (cloudflare/workers-sdk#9042): integers beyond 2^53 are rounded, REAL 3.0
becomes 3, and text holding a backslash-n next to real newlines can be corrupted. A file copy
of the database keeps exact values.
"""

import hashlib
import sqlite3
from pathlib import Path

from d1_migration.private_files import private_dir, private_file

# Statements the replay manages itself: one transaction around everything.
_SKIPPED_PREFIXES = ("BEGIN", "COMMIT", "END TRANSACTION", "ROLLBACK")


class ExportError(ValueError):
    """The export cannot be replayed faithfully; the message says where and why."""


def replayed_path(export: Path, cache_dir: Path) -> Path:
    """The SQLite file replaying ``export``: built once per version of the export."""
    stat = export.stat()
    key = hashlib.sha256(f"{export.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    database = cache_dir / f"export-{key.hexdigest()[:16]}.sqlite"
    if not database.exists():
        private_dir(cache_dir)
        partial = database.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        replay(export, private_file(partial))
        partial.rename(database)
    return private_file(database)  # a replay cached by an earlier version may be wider


def replay(export: Path, database: Path) -> int:
    """Run the export's statements into a new SQLite file; returns how many ran."""
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")  # a scratch copy: rebuilt if anything fails
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    statements = 0
    pending: list[str] = []
    try:
        with export.open(encoding="utf-8", newline="") as lines:
            for number, line in enumerate(lines, start=1):
                pending.append(line)
                if not line.rstrip().endswith(";"):
                    continue
                statement = "".join(pending)
                if not sqlite3.complete_statement(statement):
                    continue  # the ';' was inside a string literal
                pending.clear()
                statements += _run(conn, statement, number)
        if "".join(pending).strip():
            raise ExportError(f"{export}: the file ends inside a statement (cut short?)")
        conn.execute("COMMIT")
    finally:
        conn.close()
    return statements


def _run(conn: sqlite3.Connection, statement: str, line: int) -> int:
    head = statement.lstrip().upper()
    if head.startswith(_SKIPPED_PREFIXES):
        return 0
    if "\x00" in statement:
        raise ExportError(
            f"line {line}: a statement holds a NUL character, which SQLite cannot parse; "
            "migrate from a file copy of the database instead"
        )
    try:
        conn.execute(statement)
    except sqlite3.OperationalError as error:
        if "sqlite_sequence" in statement and "no such table" in str(error):
            return 0  # no AUTOINCREMENT table here: nothing to keep in step
        raise ExportError(f"line {line}: {error}") from error
    return 1
