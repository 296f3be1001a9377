"""Vectorised conversion of one source batch into target-typed Arrow columns plus reject reasons.

Each converter takes a column's projections (see source.py) and returns the converted array and,
for rows it cannot convert faithfully, a reason code and a sentence. No row is dropped here: a
row with any reason goes to quarantine, the rest to Postgres. Per-value Python runs only on the
rare paths Arrow has no kernel for: UUIDv5 of non-UUID ids (memoised), SHA-256 of session tokens,
and locating invalid UTF-8 (or the array element holding it) once a batch is known to contain some.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from functools import lru_cache, reduce

import pyarrow as pa
import pyarrow.compute as pc

from d1_migration.source import ROWID, StorageClass
from d1_migration.spec import Column, Kind, Schema, Table

SOURCE_ID = "_source_id"
SOURCE_TEXT = "_source_text_"  # + column name: the D1 text of a remapped id (unlinked_ids)
# Fixed forever: changing it would re-key every non-UUID id on the next sync.
ID_NAMESPACE = uuid.UUID("6f1b1c1e-8d3a-5b7e-9c2d-d1d1d1d1d1d1")

UUID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
UNESCAPED_NUL_RE = r"(^|[^\\])(\\\\)*\\u0000"  # \u0000 not preceded by an escaping backslash
NUMBER_RE = r"^(?P<sign>-?)(?P<whole>[0-9]{1,16})(?:\.(?P<fraction>[0-9]+))?$"
ISO_RE = (
    r"^(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})"
    r"(?:[T ](?P<h>[0-9]{2}):(?P<mi>[0-9]{2})(?::(?P<s>[0-9]{2})(?:\.(?P<f>[0-9]{1,9}))?)?)?"
    r" ?(?:(?P<z>[Zz])|(?P<sign>[+-])(?P<oh>[0-9]{2})(?::?(?P<om>[0-9]{2}))?)?$"
)
US_PER_DAY = 86_400_000_000
MIN_US = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
MAX_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
EPOCH_MS_THRESHOLD = 100_000_000_000  # |n| >= 1e11 is milliseconds (1e11 s is the year 5138)
# A number earlier than this is no instant the app wrote (it started in 2024): a flag, a counter
# or a bug, never a time. 2001-01-01T00:00:00Z.
FIRST_PLAUSIBLE_US = 978_307_200_000_000
INT32 = (-(2**31), 2**31 - 1)
CLASS_NAMES = pa.array(["NULL", "integer", "real", "text", "BLOB"])
DAYS_IN_MONTH = pa.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], pa.int64())

ALLOWED_CLASSES = {
    Kind.INTEGER: (StorageClass.INTEGER,),
    Kind.BIGINT: (StorageClass.INTEGER,),
    Kind.BOOLEAN: (StorageClass.INTEGER,),
    Kind.DOUBLE: (StorageClass.INTEGER, StorageClass.REAL),
    Kind.TIMESTAMPTZ: (StorageClass.INTEGER, StorageClass.REAL, StorageClass.TEXT),
    Kind.DATE: (StorageClass.INTEGER, StorageClass.REAL, StorageClass.TEXT),
}
EXPECTED = {
    Kind.INTEGER: "an integer",
    Kind.BIGINT: "an integer",
    Kind.BOOLEAN: "0 or 1",
    Kind.DOUBLE: "a number",
    Kind.TIMESTAMPTZ: "a datetime",
    Kind.DATE: "a date",
}


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


class _Failures:
    """Accumulates, per row, the first failing column and code and every reason."""

    def __init__(self, n: int) -> None:
        self.column = pa.nulls(n, pa.string())
        self.code = pa.nulls(n, pa.string())
        self.reason = pa.nulls(n, pa.string())

    def add(self, column: str, mask: pa.Array, code: str, reason: pa.Array | str) -> None:
        mask = pc.fill_null(mask, False)
        if not pc.any(mask).as_py():
            return
        reason_arr = pc.if_else(mask, reason, pa.scalar(None, pa.string()))
        first = pc.and_(mask, pc.is_null(self.code))
        self.column = pc.if_else(first, column, self.column)
        self.code = pc.if_else(first, code, self.code)
        both = pc.binary_join_element_wise(self.reason, reason_arr, "; ")
        self.reason = pc.coalesce(both, self.reason, reason_arr)

    @property
    def failed(self) -> pa.Array:
        return pc.is_valid(self.code)


def _quoted(text: pa.Array) -> pa.Array:
    """'value' for a reason sentence, cut to 60 characters."""
    return pc.binary_join_element_wise("'", pc.utf8_slice_codeunits(text, 0, 60), "'", "")


def _sentence(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _decode_utf8(raw: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Binary to string, and a mask of values that are not valid UTF-8."""
    try:
        return raw.cast(pa.string()), pa.repeat(False, len(raw))
    except pa.ArrowInvalid:
        bad = pa.array([_invalid_utf8(v) for v in raw.to_pylist()], pa.bool_())
        cleaned = pc.if_else(bad, pa.scalar(None, pa.binary()), raw)
        return cleaned.cast(pa.string()), bad


def _invalid_utf8(value: bytes | None) -> bool:
    if value is None:
        return False
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@lru_cache(maxsize=1 << 20)
def uuid_for(source_id: str) -> str:
    """The target UUID of any source id text: the UUID itself, or its UUIDv5."""
    normalised = source_id.strip().lower()
    try:
        if len(normalised) == 36 and str(uuid.UUID(normalised)) == normalised:
            return normalised
    except ValueError:
        pass
    return str(uuid.uuid5(ID_NAMESPACE, source_id))


def _map_ids(text: pa.Array) -> pa.Array:
    normalised = pc.utf8_lower(pc.utf8_trim_whitespace(text))
    is_uuid = pc.fill_null(pc.match_substring_regex(normalised, UUID_RE), True)
    if pc.all(is_uuid).as_py():
        return normalised
    others = pc.filter(text, pc.invert(is_uuid)).to_pylist()
    mapped = pa.array([uuid_for(v) for v in others], pa.string())
    return pc.replace_with_mask(normalised, pc.invert(is_uuid), mapped)


def _int(field: pa.Array) -> pa.Array:
    return pc.cast(pc.if_else(pc.equal(field, ""), "0", field), pa.int64())


def epoch_number(text: pa.Array) -> pa.Array:
    """The number a datetime text holds (epoch seconds or milliseconds), NULL for other text."""
    text = pc.utf8_trim_whitespace(text)
    is_number = pc.fill_null(pc.match_substring_regex(text, NUMBER_RE), False)
    return pc.cast(pc.if_else(is_number, text, None), pa.float64())


def _epoch_micros(text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Microseconds of an epoch number text (NULL beyond the years 1 to 9999), and whether the
    text is a number. In integers, from the text's digits: through float64 a microsecond is
    lost after the year 2255 and a fraction would round where an ISO fraction truncates."""
    parts = pc.extract_regex(text, NUMBER_RE)
    whole = _int(pc.fill_null(pc.struct_field(parts, "whole"), ""))
    fraction = pc.fill_null(pc.struct_field(parts, "fraction"), "")
    millis = pc.greater_equal(whole, EPOCH_MS_THRESHOLD)
    scale = pc.if_else(millis, 1_000, 1_000_000)
    below = pc.if_else(
        millis,
        _int(pc.utf8_rpad(pc.utf8_slice_codeunits(fraction, 0, 3), 3, "0")),
        _int(pc.utf8_rpad(pc.utf8_slice_codeunits(fraction, 0, 6), 6, "0")),
    )
    fits = pc.less_equal(whole, MAX_US // 1_000)  # else whole * scale overflows int64
    micros = pc.add(pc.multiply(pc.if_else(fits, whole, None), scale), below)
    negative = pc.equal(pc.fill_null(pc.struct_field(parts, "sign"), ""), "-")
    return pc.if_else(negative, pc.negate(micros), micros), pc.is_valid(parts)


def parse_datetime(text: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Microseconds since the epoch (UTC), a failure code per row, and whether it is midnight UTC.

    Accepts what Workers apps write: SQLite's 'YYYY-MM-DD HH:MM:SS' (UTC), ISO 8601 with 'T',
    fractional seconds, 'Z' or an offset, date-only, and epoch seconds or milliseconds (as
    numbers or text; |n| >= 1e11 means milliseconds) from 2001 on. Fractions beyond microseconds
    truncate, in both forms.
    """
    text = pc.utf8_trim_whitespace(text)
    epoch_us, is_number = _epoch_micros(text)

    parts = pc.extract_regex(text, ISO_RE)
    matched = pc.is_valid(parts)
    field = {
        name: pc.fill_null(pc.struct_field(parts, name), "")
        for name in ("y", "mo", "d", "h", "mi", "s", "f", "z", "sign", "oh", "om")
    }
    y, mo, d = _int(field["y"]), _int(field["mo"]), _int(field["d"])
    h, mi, s = _int(field["h"]), _int(field["mi"]), _int(field["s"])
    frac = _int(pc.utf8_rpad(pc.utf8_slice_codeunits(field["f"], 0, 6), 6, "0"))
    oh, om = _int(field["oh"]), _int(field["om"])
    leap = pc.and_(
        pc.equal(pc.modulo(y, 4), 0),
        pc.or_(pc.not_equal(pc.modulo(y, 100), 0), pc.equal(pc.modulo(y, 400), 0)),
    )
    month_ok = pc.and_(pc.greater_equal(mo, 1), pc.less_equal(mo, 12))
    dim = pc.take(DAYS_IN_MONTH, pc.subtract(pc.if_else(month_ok, mo, 1), 1))
    dim = pc.add(dim, pc.cast(pc.and_(leap, pc.equal(mo, 2)), pa.int64()))
    real = pc.and_kleene(
        pc.and_(pc.and_(month_ok, pc.greater_equal(y, 1)), pc.greater_equal(d, 1)),
        pc.and_(
            pc.and_(pc.less_equal(d, dim), pc.less_equal(h, 23)),
            pc.and_(
                pc.and_(pc.less_equal(mi, 59), pc.less_equal(s, 59)),
                pc.and_(pc.less_equal(oh, 23), pc.less_equal(om, 59)),
            ),
        ),
    )
    # Days from civil (H. Hinnant); all operands are non-negative, so truncation is floor.
    y2 = pc.subtract(y, pc.cast(pc.less_equal(mo, 2), pa.int64()))
    era = pc.divide(y2, 400)
    yoe = pc.subtract(y2, pc.multiply(era, 400))
    mp = pc.if_else(pc.greater(mo, 2), pc.subtract(mo, 3), pc.add(mo, 9))
    doy = pc.add(pc.divide(pc.add(pc.multiply(mp, 153), 2), 5), pc.subtract(d, 1))
    doe = pc.add(
        pc.subtract(pc.add(pc.multiply(yoe, 365), pc.divide(yoe, 4)), pc.divide(yoe, 100)), doy
    )
    days = pc.subtract(pc.add(pc.multiply(era, 146_097), doe), 719_468)
    seconds = pc.add(pc.multiply(pc.add(pc.multiply(h, 60), mi), 60), s)
    offset_min = pc.add(pc.multiply(oh, 60), om)
    offset_min = pc.if_else(pc.equal(field["sign"], "-"), pc.negate(offset_min), offset_min)
    iso_us = pc.add(
        pc.add(pc.multiply(days, US_PER_DAY), pc.multiply(seconds, 1_000_000)),
        pc.subtract(frac, pc.multiply(offset_min, 60_000_000)),
    )

    valid_iso = pc.and_(matched, pc.fill_null(real, False))
    micros = pc.if_else(is_number, epoch_us, pc.if_else(valid_iso, iso_us, None))
    in_range = pc.and_(pc.greater_equal(micros, MIN_US), pc.less_equal(micros, MAX_US))
    code = pc.if_else(
        is_number,
        pc.if_else(in_range, None, "out_of_range"),
        pc.if_else(matched, pc.if_else(valid_iso, None, "impossible_datetime"), "bad_datetime"),
    )
    code = pc.if_else(
        pc.and_(pc.is_null(code), pc.invert(pc.fill_null(in_range, False))), "out_of_range", code
    )
    early = pc.fill_null(pc.and_(is_number, pc.less(micros, FIRST_PLAUSIBLE_US)), False)
    code = pc.if_else(pc.and_(pc.is_null(code), early), "implausible_datetime", code)
    code = pc.if_else(pc.is_valid(text), code, None)
    micros = pc.if_else(pc.is_null(code), micros, None)
    midnight = pc.equal(
        pc.subtract(micros, pc.multiply(pc.divide(micros, US_PER_DAY), US_PER_DAY)), 0
    )
    midnight = pc.and_(midnight, pc.invert(is_number))
    return micros, code, midnight


DATETIME_REASONS = {
    "bad_datetime": " is not a datetime in a recognised form (ISO 8601, 'YYYY-MM-DD HH:MM:SS' or "
    "epoch seconds/milliseconds); correct it in D1",
    "impossible_datetime": " is not a real calendar date/time; correct it in D1",
    "out_of_range": " is outside the years 1 to 9999; correct it in D1",
    "implausible_datetime": " read as epoch seconds/milliseconds is before 2001, so it is no "
    "time the app wrote (a flag or a counter?); put the real time, or NULL, in D1",
}


def _convert_column(
    table: Table, column: Column, batch: pa.RecordBatch, fail: _Failures, schema: Schema
) -> tuple[pa.Array, pa.Array | None]:
    """The target values, and for text kinds the decoded source text (NULL where it is not
    storable text, which is filed as a failure here)."""
    name, kind = column.name, column.kind
    label = column.source_name or column.name
    cls = batch[f"{name}__class"]
    raw = batch[f"{name}__value"]

    allowed = ALLOWED_CLASSES.get(kind, (StorageClass.TEXT,))
    present = pc.not_equal(cls, StorageClass.NULL)
    wrong = pc.and_(present, pc.invert(pc.is_in(cls, pa.array(allowed, pa.int8()))))
    fail.add(
        name,
        wrong,
        "wrong_type",
        _sentence(
            f"{label} holds a ",
            pc.take(CLASS_NAMES, cls),
            f" value where {EXPECTED.get(kind, 'text')} is required; correct it in D1",
        ),
    )

    text = None
    if kind is Kind.TOKEN_HASH:
        digests = [
            None if v is None else "\\x" + hashlib.sha256(v).hexdigest() for v in raw.to_pylist()
        ]
        values = pa.array(digests, pa.string())
    elif kind in (Kind.INTEGER, Kind.BIGINT):
        values = raw
        if kind is Kind.INTEGER:
            fits = pc.and_(pc.greater_equal(raw, INT32[0]), pc.less_equal(raw, INT32[1]))
            fail.add(
                name,
                pc.invert(fits),
                "out_of_range",
                _sentence(
                    f"{label} = ",
                    pc.cast(raw, pa.string()),
                    " is beyond the range of INTEGER (-2147483648 to 2147483647)",
                ),
            )
            values = pc.cast(pc.if_else(fits, raw, None), pa.int32())
    elif kind is Kind.BOOLEAN:
        is_bit = pc.is_in(raw, pa.array([0, 1], pa.int64()))
        fail.add(
            name,
            pc.and_(pc.is_valid(raw), pc.invert(is_bit)),
            "bad_boolean",
            _sentence(
                f"{label} = ", pc.cast(raw, pa.string()), " but a boolean flag must be 0 or 1"
            ),
        )
        values = pc.equal(raw, 1)
    elif kind is Kind.DOUBLE:
        values = raw
    else:
        text = _decode_text(column, raw, fail)
        values = _convert_text(table, column, text, fail, schema, batch)

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


def _decode_text(column: Column, raw: pa.Array, fail: _Failures) -> pa.Array:
    """The column's text, NULL where Postgres text cannot hold it (filed as failures)."""
    name = column.name
    label = column.source_name or column.name
    text, bad_utf8 = _decode_utf8(raw)
    fail.add(
        name,
        bad_utf8,
        "invalid_utf8",
        f"{label} is not valid UTF-8 text; its bytes are kept "
        "in raw_row as base64; re-save the value in D1 as UTF-8",
    )
    has_nul = pc.match_substring(text, "\x00")
    fail.add(
        name,
        has_nul,
        "nul_character",
        f"{label} contains a NUL character, which Postgres text cannot hold; remove it in D1",
    )
    return pc.if_else(pc.fill_null(has_nul, False), None, text)


def _convert_text(
    table: Table,
    column: Column,
    text: pa.Array,
    fail: _Failures,
    schema: Schema,
    batch: pa.RecordBatch,
) -> pa.Array:
    name, kind = column.name, column.kind
    label = column.source_name or column.name
    if kind is Kind.TEXT:
        return text
    text = pc.if_else(pc.equal(text, ""), None, text)  # '' means "no value" for typed columns

    if kind is Kind.ID:
        return _map_ids(text)
    if kind is Kind.ENUM:
        allowed = schema.enum(column.enum).values
        ok = pc.is_in(text, pa.array(allowed))
        fail.add(
            name,
            pc.and_(pc.is_valid(text), pc.invert(ok)),
            "bad_enum",
            _sentence(
                f"{label} = ", _quoted(text), f" is not a {column.enum} ({', '.join(allowed)})"
            ),
        )
        return text
    if kind in (Kind.JSONB, Kind.TEXT_ARRAY):
        # Postgres refuses U+0000 in text and JSONB, and SQLite's string functions would cut
        # the value at it while building an array literal; so catch the escape in the JSON.
        fail.add(
            name,
            pc.match_substring_regex(text, UNESCAPED_NUL_RE),
            "nul_character",
            f"{label} contains the JSON escape \\u0000, which Postgres cannot store; "
            "remove it in D1",
        )
    if kind is Kind.JSONB:
        ok = pc.equal(batch[f"{name}__ok"], 1)
        fail.add(
            name,
            pc.invert(ok),
            "bad_json",
            _sentence(f"{label} is not valid JSON: ", _quoted(text), "; fix or NULL it in D1"),
        )
        return text
    if kind is Kind.TEXT_ARRAY:
        ok = pc.equal(batch[f"{name}__ok"], 1)
        fail.add(
            name,
            pc.and_(pc.is_valid(text), pc.invert(ok)),
            "bad_text_array",
            _sentence(f"{label} is not a JSON array of strings: ", _quoted(text), "; fix it in D1"),
        )
        # SQLite decodes a lone surrogate escape ("\ud800") into bytes that are not UTF-8.
        literal, unstorable = _decode_utf8(batch[f"{name}__array"])
        unstorable = pc.and_(unstorable, pc.is_valid(text))
        if pc.any(unstorable).as_py():
            fail.add(name, unstorable, "bad_text_array", _element_reasons(label, text, unstorable))
        return pc.if_else(pc.is_valid(text), literal, None)
    if kind is Kind.HEX_BYTEA:
        ok = pc.match_substring_regex(text, r"^([0-9a-fA-F]{2})*$")
        fail.add(
            name,
            pc.invert(ok),
            "bad_hex",
            _sentence(f"{label} = ", _quoted(text), " is not hexadecimal text; fix it in D1"),
        )
        return pc.binary_join_element_wise("\\x", text, "")

    micros, code, midnight = parse_datetime(text)
    if column.flags:  # the spec's rule gives these their value (_apply_flags), not quarantine
        flags = pa.array([number for number, _ in column.flags], pa.float64())
        code = pc.if_else(pc.is_in(epoch_number(text), flags), None, code)
    for reason_code, tail in DATETIME_REASONS.items():
        fail.add(
            name,
            pc.equal(code, reason_code),
            reason_code,
            _sentence(f"{label} = ", _quoted(text), tail),
        )
    if kind is Kind.DATE:
        fail.add(
            name,
            pc.and_(pc.is_valid(micros), pc.invert(midnight)),
            "date_has_time",
            _sentence(
                f"{label} = ",
                _quoted(text),
                " has a time of day, which a DATE would drop; store the date only in D1",
            ),
        )
        return pc.cast(pc.cast(pc.divide(micros, US_PER_DAY), pa.int32()), pa.date32())
    stamps = pc.cast(micros, pa.timestamp("us", tz="UTC"))
    if column.shift:
        stamps = pc.add(stamps, pa.scalar(column.shift, pa.duration("us")))
    return stamps


def _element_reasons(label: str, text: pa.Array, mask: pa.Array) -> pa.Array:
    """For the arrays under ``mask``, a sentence naming the element Postgres cannot store."""
    reasons = [_element_reason(label, v) for v in pc.filter(text, mask).to_pylist()]
    return pc.replace_with_mask(pa.nulls(len(text), pa.string()), mask, pa.array(reasons))


def _element_reason(label: str, array_json: str) -> str:
    try:
        elements = json.loads(array_json)  # Python keeps a lone surrogate as a str of one
    except ValueError:  # a form this SQLite reads and Python does not (JSON5)
        elements = []
    for i, element in enumerate(elements):
        if isinstance(element, str):
            try:
                element.encode("utf-8")
            except UnicodeEncodeError:
                shown = element[:60].encode("utf-8", "backslashreplace").decode()
                return (
                    f'{label}[{i}] = "{shown}" holds a lone UTF-16 surrogate (a \\uD800-\\uDFFF '
                    "escape without its pair), which is no character and Postgres text cannot "
                    "store; fix that element in D1"
                )
    return f"{label} has an element that is not valid UTF-8 once decoded; fix it in D1"


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
    fail = _Failures(batch.num_rows)
    # A column derived from another table's row (source_sql) fails only because that row does;
    # the FK check names the real reason, so its own failures are not filed here.
    derived = _Failures(batch.num_rows)
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
