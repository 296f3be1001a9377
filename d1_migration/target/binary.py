"""Converted rows as Postgres's binary COPY format (pgpq), for the first load's COPY into the
target and the staged path's COPY into its temporary stage.

Binary spares the CSV text both ways: Arrow writing it, Postgres parsing every timestamp, UUID
and number back. UUIDs go as their 16 bytes (the ID kind's canonical text, hex-decoded in one
call per batch), JSONB with pgpq's jsonb encoder, the rest as pgpq infers from the Arrow type;
a table with another kind (TEXT[], BYTEA) keeps CSV, and so does a batch whose ids are not
canonical UUID text.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence

import pgpq
import pgpq.encoders
import pgpq.schema
import pyarrow as pa
import pyarrow.compute as pc

from d1_migration.spec.model import Column, Kind

BINARY = True  # False: CSV COPY for every table (benchmarks)

# Kinds pgpq encodes in Postgres's binary COPY format (a table with another takes CSV).
_BINARY_KINDS = {
    Kind.ID,
    Kind.TEXT,
    Kind.ENUM,
    Kind.INTEGER,
    Kind.BIGINT,
    Kind.BOOLEAN,
    Kind.DOUBLE,
    Kind.TIMESTAMPTZ,
    Kind.DATE,
    Kind.JSONB,
}
_NIL_UUID = "00000000-0000-0000-0000-000000000000"
_HYPHENS = (8, 13, 18, 23)  # where canonical UUID text has them
# A binary COPY stream: this header, the tuples, this trailer (Postgres's COPY file format).
HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
TRAILER = b"\xff\xff"


def uuid_bytes(text: pa.Array) -> pa.Array | None:
    """Canonical UUID text (what the ID kind gives) as 16-byte values, Postgres's binary uuid;
    None where a value is not 32 hex digits with hyphens at 8, 13, 18 and 23.

    All in C, on the batch's text as one buffer of 36-byte values: one copy, four strided
    slices for the hyphens, one deletion of them (bytes.translate: 70% of replace's time) and
    one decode (unhexlify takes bytes, where fromhex wants a str copy and skips whitespace).
    A 2M-row load has about 5M ids."""
    n = len(text)
    filled = pc.fill_null(text, _NIL_UUID) if text.null_count else text
    if n == 0 or not pc.all(pc.equal(pc.binary_length(filled), 36)).as_py():
        return None if n else pa.array([], pa.binary(16))
    filled = pa.concat_arrays([filled])  # one contiguous data buffer
    offsets = memoryview(filled.buffers()[1]).cast("i")
    data = filled.buffers()[2][offsets[0] : offsets[n]].to_pybytes()
    if any(data[at::36] != b"-" * n for at in _HYPHENS):
        return None
    try:
        raw = binascii.unhexlify(data.translate(None, b"-"))
    except binascii.Error:  # not hex, or a hyphen elsewhere (odd length)
        return None
    if len(raw) != 16 * n:
        return None
    values = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(raw)])
    if not text.null_count:
        return values
    return pc.if_else(pc.is_valid(text), values, pa.scalar(None, pa.binary(16)))


class BinaryRows:
    """A table's rows as a binary COPY stream (pgpq): ``columns`` by their kinds, then the
    ``extra`` columns (a stage's rowid and source texts) as their Arrow type says."""

    def __init__(self, columns: list[Column], extra: Sequence[str] = ()) -> None:
        self.columns, self.extra = columns, list(extra)
        self.names = [c.name for c in columns] + self.extra  # the COPY's column list
        fields, encoders = [], {}
        for c in columns:
            if c.kind is Kind.ID:
                spec = pa.field(c.name, pa.binary(16))
                encoders[c.name] = pgpq.encoders.FixedSizeBinaryEncoderBuilder(spec)
            elif c.kind is Kind.JSONB:
                spec = pa.field(c.name, pa.string())
                encoders[c.name] = pgpq.encoders.StringEncoderBuilder.new_with_output(
                    spec, pgpq.schema.Jsonb()
                )
            else:
                spec = None
            fields.append(spec)
        self.fields, self.encoders = fields + [None] * len(self.extra), encoders

    @classmethod
    def of(cls, columns: list[Column], extra: Sequence[str] = ()) -> BinaryRows | None:
        """The encoder for these columns; None where binary COPY is off or a column's kind has
        no encoder (the table takes CSV)."""
        if BINARY and all(c.kind in _BINARY_KINDS for c in columns):
            return cls(columns, extra)
        return None

    def encode(self, rows: pa.Table) -> bytes | None:
        """The stream of ``rows`` (self.names of them), or None where an id is not canonical."""
        tuples = self.tuples(rows)
        return None if tuples is None else HEADER + tuples + TRAILER

    def tuples(self, rows: pa.Table) -> bytes | None:
        """``rows`` as the tuples of a stream (its body: streams of several batches share one
        header and trailer), or None where an id is not canonical."""
        arrays, fields = [], []
        kinds = [c.kind for c in self.columns] + [None] * len(self.extra)
        for name, kind, spec in zip(self.names, kinds, self.fields, strict=True):
            values = rows[name].combine_chunks()
            if kind is Kind.ID:
                values = uuid_bytes(values)
                if values is None:
                    return None
            arrays.append(values)
            fields.append(spec or pa.field(name, values.type))
        batch = pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))
        encoders = dict(self.encoders)
        for spec in fields:
            if spec.name not in encoders:
                encoders[spec.name] = pgpq.ArrowToPostgresBinaryEncoder.infer_encoder(spec)
        encoder = pgpq.ArrowToPostgresBinaryEncoder.new_with_encoders(batch.schema, encoders)
        data = encoder.write_header() + encoder.write_batch(batch) + encoder.finish()
        assert data.startswith(HEADER) and data.endswith(TRAILER), "pgpq's framing changed"
        return data[len(HEADER) : -len(TRAILER)]
