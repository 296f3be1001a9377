"""Writes a SQLite database as `wrangler d1 export` does, quirks included, for source tests."""

import sqlite3
from pathlib import Path


def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"X'{value.hex().upper()}'"
    if isinstance(value, float):
        return {float("inf"): "9e999", float("-inf"): "-9e999"}.get(value, repr(value))
    if isinstance(value, int):
        return str(value)
    text = "'" + value.replace("'", "''") + "'"
    if "\n" in value:  # wrangler's form, which #9042 shows can corrupt a literal backslash-n
        return f"replace({text.replace(chr(10), chr(92) + 'n')},'\\n',char(10))"
    return text


def write_export(database: Path, export: Path) -> None:
    """Tables in creation order, INSERTs with a column list for every other table."""
    conn = sqlite3.connect(database)
    conn.text_factory = lambda b: b.decode("utf-8", "replace")  # as the JS runtime reads text
    tables = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY rowid"
    ).fetchall()
    with export.open("w", encoding="utf-8") as out:
        out.write("PRAGMA defer_foreign_keys=TRUE;\n")
        for position, (name, sql) in enumerate(tables):
            out.write(f"{sql};\n")
            columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{name}")')]
            listed = " (" + ",".join(f'"{c}"' for c in columns) + ")" if position % 2 else ""
            typed = ", ".join(f'"{c}"' for c in columns)
            for row in conn.execute(f'SELECT {typed} FROM "{name}" ORDER BY rowid'):
                values = ",".join(_literal(v) for v in row)
                out.write(f'INSERT INTO "{name}"{listed} VALUES({values});\n')
        for (sql,) in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        ):
            out.write(f"{sql};\n")
        has_sequence = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'"
        ).fetchone()
        if has_sequence:
            out.write("DELETE FROM sqlite_sequence;\n")
            for name, seq in conn.execute("SELECT name, seq FROM sqlite_sequence"):
                out.write(f"INSERT INTO \"sqlite_sequence\" VALUES('{name}',{seq});\n")
    conn.close()
