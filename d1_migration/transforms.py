"""Vectorised conversion of one source batch into target-typed Arrow columns plus reject reasons.

Each column is converted by its kind's converter (spec/kinds.py); what every kind shares happens
here: the storage-class check, the UTF-8 and NUL checks of text, NOT NULL, the spec's flag rules,
and the original ids the load keeps in d1_migration.id_map and ref_map. No row is dropped here: a
row with any reason goes to quarantine, the rest to Postgres.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import pyarrow as pa
import pyarrow.compute as pc

from d1_migration.source.snapshot import ROWID

# ID_NAMESPACE and uuid_for are the ID kind's mapping; the load and the tests name them here.
from d1_migration.spec.kinds import ID_NAMESPACE as ID_NAMESPACE
from d1_migration.spec.kinds import (
    WRONG_CLASS,
    ColumnBatch,
    Failures,
    Kind,
    decode_utf8,
    epoch_number,
    sentence,
)
from d1_migration.spec.kinds import uuid_for as uuid_for
from d1_migration.spec.model import Column, Schema, Table

SOURCE_ID = "_source_id"
SOURCE_TEXT = "_source_text_"  # + column name: the D1 text of a remapped id (unlinked_ids)
CLASS_NAMES = pa.array(["NULL", "integer", "real", "text", "BLOB"])


@dataclass(frozen=True)
class Reject:
    rowid: int
    column: str | None
    code: str
    reason: str
    target_pk: str | None = None


@dataclass
class Converted:
    """Good rows as target-typed columns (plus _rowid), the rejected rows, and the target key
    and source identity (the original id text) of every row whose key converted."""

    good: pa.Table
    rejects: list[Reject]
    keys: pa.Table


def _convert_column(
    table: Table, column: Column, batch: pa.RecordBatch, fail: Failures, schema: Schema
) -> tuple[pa.Array, pa.Array | None]:
    """The target values, and for kinds that decode text the decoded source text (NULL where it
    is not storable text, which is filed as a failure here)."""
    name, kind = column.name, column.kind
    label = column.source_name or column.name
    cls = batch[f"{name}__{WRONG_CLASS}"]
    raw = batch[f"{name}__value"]

    fail.add(
        name,
        pc.is_valid(cls),
        "wrong_type",
        lambda: sentence(
            f"{label} holds a ",
            pc.take(CLASS_NAMES, cls),
            f" value where {kind.expected} is required; correct it in D1",
        ),
    )

    text, value = None, raw
    if kind.decodes_text:
        text = value = _decode_text(column, raw, fail)
        if kind.empty_is_null:
            value = pc.if_else(pc.equal(text, ""), None, text)
    values = kind.convert(ColumnBatch(column, batch, schema, fail), value)

    missing = pc.and_(pc.is_null(values), pc.invert(fail.failed))
    if not column.nullable:
        fail.add(
            name,
            missing,
            "not_null",
            f"{label} is NULL or empty, but {table.name}.{name} "
            "is NOT NULL in Postgres; give it a value in D1",
        )
    return values, text


def _decode_text(column: Column, raw: pa.Array, fail: Failures) -> pa.Array:
    """The column's text, NULL where Postgres text cannot hold it (filed as failures)."""
    name = column.name
    label = column.source_name or column.name
    text, bad_utf8 = decode_utf8(raw)
    fail.add(
        name,
        bad_utf8,
        "invalid_utf8",
        f"{label} is not valid UTF-8 text; its bytes are kept "
        "in raw_row as base64; re-save the value in D1 as UTF-8",
    )
    if not _may_hold_nul(raw):
        return text
    has_nul = pc.match_substring(text, "\x00")
    fail.add(
        name,
        has_nul,
        "nul_character",
        f"{label} contains a NUL character, which Postgres text cannot hold; remove it in D1",
    )
    return pc.if_else(pc.fill_null(has_nul, False), None, text)


def _may_hold_nul(raw: pa.Array) -> bool:
    """Whether any value of a binary array may hold a NUL byte. A NUL in a value is one in the
    array's data buffer, which one scan at memchr speed rules out for nearly every batch, so
    only a batch that holds one (or whose buffer does outside its values) is searched row by
    row."""
    data = raw.buffers()[2]
    return data is not None and b"\x00" in data.to_pybytes()


def _apply_flags(
    table: Table, columns: dict[str, pa.Array], texts: dict[str, pa.Array | None]
) -> None:
    """The spec's rule for numbers that are flags in a datetime column (Column.flags)."""
    for column in table.source_columns:
        for number, other in column.flags:
            hit = pc.fill_null(pc.equal(epoch_number(texts[column.name]), number), False)
            current = columns[column.name]
            value = columns[other] if other else pa.scalar(None, current.type)
            columns[column.name] = pc.if_else(hit, value, current)


def convert_batch(table: Table, batch: pa.RecordBatch, schema: Schema) -> Converted:
    fail = Failures(batch.num_rows)
    # A column derived from another table's row (source_sql) fails only because that row does;
    # the FK check names the real reason, so its own failures are not filed here.
    derived = Failures(batch.num_rows)
    columns, texts = {}, {}
    for c in table.source_columns:
        target = derived if c.source_sql else fail
        columns[c.name], texts[c.name] = _convert_column(table, c, batch, target, schema)
    _apply_flags(table, columns, texts)
    failed = fail.failed
    extra = {}
    pk = table.column(table.primary_key[0])
    key_columns = {name: columns[name] for name in table.primary_key}
    if pk.kind is Kind.ID:  # the original id where the target differs, for d1_migration.id_map
        original = texts[pk.name]
        extra[SOURCE_ID] = pc.if_else(pc.equal(original, columns[pk.name]), None, original)
        key_columns[SOURCE_ID] = original
    for c in table.unlinked_ids:  # likewise, for d1_migration.ref_map
        changed = pc.not_equal(texts[c.name], pc.cast(columns[c.name], pa.string()))
        extra[SOURCE_TEXT + c.name] = pc.if_else(changed, texts[c.name], None)
    keys = pa.table(key_columns)
    keys = keys.filter(reduce(pc.and_, (pc.is_valid(keys[n]) for n in table.primary_key)))
    good = pa.table({ROWID: batch[ROWID], **columns, **extra}).filter(pc.invert(failed))
    rejects = []
    if pc.any(failed).as_py():
        pk = table.primary_key[0]
        picked = pa.table(
            {
                "rowid": batch[ROWID],
                "column": fail.column,
                "code": fail.code,
                "reason": fail.reason,
                "target_pk": pc.cast(columns[pk], pa.string()),
            }
        ).filter(failed)
        rejects = [Reject(**row) for row in picked.to_pylist()]
    return Converted(good, rejects, keys)
