"""The column kinds: one entry per kind says everything about it, from D1 to Postgres.

SQLite is dynamically typed: an INTEGER column can hold text, a TEXT column a blob. So for each
column the batch query selects the storage class of a value the kind does not accept plus a
projection that is homogeneous for its kind (integers only, text only, ...), which Arrow can take
without per-value inspection; checks that need a JSON parser run there, in SQLite's JSON1,
because Arrow has none. An entry names that projection and its Arrow type, the storage classes
the kind accepts, its D1 and Postgres types, and its converter: a function on the batch's Arrow
arrays that returns the target values and records every value it cannot convert faithfully (a
reason code and a sentence). The spec (model.py), the source query (source/snapshot.py) and the
batch conversion (transforms.py) read these entries and never switch on a kind, so a new kind is
one ``ColumnKind``: add it to ``Kind``.

Per-value Python runs only on the rare paths Arrow has no kernel for: UUIDv5 of non-UUID ids
(memoised), SHA-256 of session tokens, and locating invalid UTF-8 (or the array element holding
it) once a batch is known to contain some.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import IntEnum
from functools import lru_cache, partial
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from d1_migration.spec.model import Column, Schema


class StorageClass(IntEnum):
    """SQLite's typeof(), as a small integer so a batch carries it cheaply."""

    NULL = 0
    INTEGER = 1
    REAL = 2
    TEXT = 3
    BLOB = 4


@dataclass(frozen=True)
class Projection:
    """One value the batch query selects for a column, as ``<column>__<suffix>``."""

    suffix: str
    sql: str  # {x} stands for the column's source expression
    arrow: pa.DataType
    # a value projection's: the storage classes it gives a value for (NULL for any other)
    classes: tuple[StorageClass, ...] = ()


WRONG_CLASS = "wrong_class"  # the suffix of wrong_class(): read apart (Snapshot.arrow_batches)


def wrong_class(accepts: tuple[StorageClass, ...]) -> Projection:
    """The storage class of a value its kind does not accept, NULL for any other (an accepted
    value, or NULL): what the converters check the class for."""
    others = [c for c in StorageClass if c is not StorageClass.NULL and c not in accepts]
    whens = " ".join(f"WHEN '{c.name.lower()}' THEN {int(c)}" for c in others)
    sql = f"CASE typeof({{x}}) {whens} END" if others else "NULL"
    return Projection(WRONG_CLASS, sql, pa.int8())


def value_of(classes: tuple[StorageClass, ...], expr: str, arrow: pa.DataType) -> Projection:
    """A kind's value: ``expr`` for a value of one of ``classes`` (never NULL for one), NULL
    for any other."""
    names = ", ".join(f"'{c.name.lower()}'" for c in classes)
    return Projection(
        "value", f"CASE WHEN typeof({{x}}) IN ({names}) THEN {expr} END", arrow, classes
    )


INTEGER_VALUE = value_of((StorageClass.INTEGER,), "{x}", pa.int64())
REAL_VALUE = value_of((StorageClass.INTEGER, StorageClass.REAL), "CAST({x} AS REAL)", pa.float64())
# Text arrives as bytes; the converters validate UTF-8 in bulk.
TEXT_VALUE = value_of((StorageClass.TEXT,), "{x}", pa.binary())
TEMPORAL_VALUE = value_of(
    (StorageClass.INTEGER, StorageClass.REAL, StorageClass.TEXT), "CAST({x} AS TEXT)", pa.binary()
)
JSON_OK = Projection("ok", "CASE WHEN typeof({x}) = 'text' THEN json_valid({x}) END", pa.int8())
# A JSON array of strings (or nulls) rendered as a Postgres array literal, in element order.
_ARRAY_OK_SQL = (
    "CASE WHEN typeof({x}) != 'text' THEN NULL WHEN NOT json_valid({x}) THEN 0 "
    "WHEN json_type({x}) != 'array' THEN 0 "
    "ELSE NOT EXISTS (SELECT 1 FROM json_each({x}) WHERE type NOT IN ('text', 'null')) END"
)
ARRAY_OK = Projection("ok", _ARRAY_OK_SQL, pa.int8())
ARRAY_LITERAL = Projection(
    "array",
    "CASE WHEN (" + _ARRAY_OK_SQL + ") = 1 THEN '{{' || coalesce((SELECT group_concat(CASE "
    "WHEN type = 'null' THEN 'NULL' ELSE '\"' || replace(replace(value, '\\', '\\\\'), '\"', "
    "'\\\"') || '\"' END, ',') FROM (SELECT type, value FROM json_each({x}) ORDER BY key)), '') "
    "|| '}}' END",
    pa.binary(),
)


# A reject's sentence per row, or a function that makes it (most batches fail no row).
Reason = pa.Array | str | Callable[[], pa.Array | str]


class Failures:
    """Accumulates, per row, the first failing column and code and every reason."""

    def __init__(self, n: int) -> None:
        self.column = pa.nulls(n, pa.string())
        self.code = pa.nulls(n, pa.string())
        self.reason = pa.nulls(n, pa.string())

    def add(self, column: str, mask: pa.Array, code: str, reason: Reason) -> None:
        """``reason`` may be a function that makes it: called only when a row fails."""
        if not pc.any(mask).as_py():  # nulls skipped: no failure (a NULL mask row is none)
            return
        mask = pc.fill_null(mask, False)
        if callable(reason):
            reason = reason()
        reason_arr = pc.if_else(mask, reason, pa.scalar(None, pa.string()))
        first = pc.and_(mask, pc.is_null(self.code))
        self.column = pc.if_else(first, column, self.column)
        self.code = pc.if_else(first, code, self.code)
        both = pc.binary_join_element_wise(self.reason, reason_arr, "; ")
        self.reason = pc.coalesce(both, self.reason, reason_arr)

    @property
    def failed(self) -> pa.Array:
        return pc.is_valid(self.code)


@dataclass(frozen=True)
class ColumnBatch:
    """One column of one source batch, as its converter sees it."""

    column: Column
    batch: pa.RecordBatch
    schema: Schema
    fail: Failures

    @property
    def label(self) -> str:
        """The column as D1 names it, for reasons a person fixes in D1."""
        return self.column.source_name or self.column.name

    def projection(self, suffix: str) -> pa.Array:
        return self.batch[f"{self.column.name}__{suffix}"]

    def reject(self, mask: pa.Array, code: str, reason: Reason) -> None:
        self.fail.add(self.column.name, mask, code, reason)


# The column's values (its ``value`` projection, as text when the kind decodes it) to the target
# values; a row the converter rejects is quarantined, whatever value it returns for it.
Converter = Callable[[ColumnBatch, pa.Array], pa.Array]


@dataclass(frozen=True, eq=False)
class ColumnKind:
    """How a source value becomes a target value. The built-in kinds are ``Kind``'s entries; an
    entry is complete on its own, so a column may use one declared anywhere (the tests do).

    ``pg_type`` None means the column's own enum type. ``decodes_text``: the value arrives as
    UTF-8 text, checked (invalid_utf8, nul_character) before the converter sees it and kept as
    the row's source text (the original id for d1_migration.id_map and ref_map, the number a
    flag rule looks for). ``empty_is_null``: '' means "no value", as it does for typed columns.
    """

    name: str
    pg_type: str | None
    convert: Converter
    d1_type: str = "TEXT"  # D1's declared type (its SQLite affinity)
    accepts: tuple[StorageClass, ...] = (StorageClass.TEXT,)
    expected: str = "text"  # what a wrong_type reason says the column requires
    value: Projection = TEXT_VALUE
    extras: tuple[Projection, ...] = ()
    decodes_text: bool = True
    empty_is_null: bool = True

    def __reduce__(self) -> tuple:
        """A built-in kind unpickles as Kind's own entry, which code compares by identity
        (``kind is Kind.ID``): the engine's process receives the schema pickled
        (sync/apart.py). Any other kind is rebuilt from its fields."""
        for attr, kind in vars(Kind).items():
            if kind is self:
                return getattr, (Kind, attr)
        return ColumnKind, tuple(getattr(self, f.name) for f in fields(self))

    def __post_init__(self) -> None:
        # A value read is then a value accepted: what lets Snapshot.arrow_batches tell the
        # rows with a wrong class by their count of values, not by each value's class.
        if set(self.value.classes) != set(self.accepts):
            given = sorted(c.name for c in self.value.classes)
            accepted = sorted(c.name for c in self.accepts)
            raise ValueError(
                f"{self.name}: its value projection gives values of {given} but the kind accepts"
                f" {accepted}; they must be the same classes"
            )

    @property
    def projections(self) -> tuple[Projection, ...]:
        """Everything the batch query selects for a column of this kind, in order."""
        return (wrong_class(self.accepts), self.value, *self.extras)

    def __repr__(self) -> str:
        return f"ColumnKind({self.name!r})"


# -- Arrow helpers the converters share ----------------------------------------------------


def quoted(text: pa.Array) -> pa.Array:
    """'value' for a reason sentence, cut to 60 characters."""
    return pc.binary_join_element_wise("'", pc.utf8_slice_codeunits(text, 0, 60), "'", "")


def sentence(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def decode_utf8(raw: pa.Array) -> tuple[pa.Array, pa.Array]:
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


# -- ids -------------------------------------------------------------------------------------

# Fixed forever: changing it would re-key every non-UUID id on the next sync.
ID_NAMESPACE = uuid.UUID("6f1b1c1e-8d3a-5b7e-9c2d-d1d1d1d1d1d1")
UUID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


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


def _convert_id(_: ColumnBatch, text: pa.Array) -> pa.Array:
    return _map_ids(text)


# -- numbers and text --------------------------------------------------------------------------

INT32 = (-(2**31), 2**31 - 1)


def _as_is(_: ColumnBatch, values: pa.Array) -> pa.Array:
    return values


def _convert_integer(cb: ColumnBatch, raw: pa.Array) -> pa.Array:
    fits = pc.and_(pc.greater_equal(raw, INT32[0]), pc.less_equal(raw, INT32[1]))
    cb.reject(
        pc.invert(fits),
        "out_of_range",
        lambda: sentence(
            f"{cb.label} = ",
            pc.cast(raw, pa.string()),
            " is beyond the range of INTEGER (-2147483648 to 2147483647)",
        ),
    )
    return pc.cast(pc.if_else(fits, raw, None), pa.int32())


def _convert_boolean(cb: ColumnBatch, raw: pa.Array) -> pa.Array:
    is_bit = pc.is_in(raw, pa.array([0, 1], pa.int64()))
    cb.reject(
        pc.and_(pc.is_valid(raw), pc.invert(is_bit)),
        "bad_boolean",
        lambda: sentence(
            f"{cb.label} = ", pc.cast(raw, pa.string()), " but a boolean flag must be 0 or 1"
        ),
    )
    return pc.equal(raw, 1)


def _convert_token_hash(_: ColumnBatch, raw: pa.Array) -> pa.Array:
    digests = [
        None if v is None else "\\x" + hashlib.sha256(v).hexdigest() for v in raw.to_pylist()
    ]
    return pa.array(digests, pa.string())


def _convert_enum(cb: ColumnBatch, text: pa.Array) -> pa.Array:
    enum = cb.column.enum
    allowed = cb.schema.enum(enum).values
    ok = pc.is_in(text, pa.array(allowed))
    cb.reject(
        pc.and_(pc.is_valid(text), pc.invert(ok)),
        "bad_enum",
        lambda: sentence(
            f"{cb.label} = ", quoted(text), f" is not a {enum} ({', '.join(allowed)})"
        ),
    )
    return text


def _convert_hex(cb: ColumnBatch, text: pa.Array) -> pa.Array:
    ok = pc.match_substring_regex(text, r"^([0-9a-fA-F]{2})*$")
    cb.reject(
        pc.invert(ok),
        "bad_hex",
        lambda: sentence(f"{cb.label} = ", quoted(text), " is not hexadecimal text; fix it in D1"),
    )
    return pc.binary_join_element_wise("\\x", text, "")


def _no_d1_value(cb: ColumnBatch, _: pa.Array) -> pa.Array:
    raise TypeError(
        f"{cb.column.name}: an inet column has no D1 value to convert; "
        "the map adds such columns (declare it added=True)"
    )


# -- JSON ------------------------------------------------------------------------------------

UNESCAPED_NUL_RE = r"(^|[^\\])(\\\\)*\\u0000"  # \u0000 not preceded by an escaping backslash


def _reject_json_nul(cb: ColumnBatch, text: pa.Array) -> None:
    # Postgres refuses U+0000 in text and JSONB, and SQLite's string functions would cut
    # the value at it while building an array literal; so catch the escape in the JSON.
    cb.reject(
        pc.match_substring_regex(text, UNESCAPED_NUL_RE),
        "nul_character",
        f"{cb.label} contains the JSON escape \\u0000, which Postgres cannot store; "
        "remove it in D1",
    )


def _convert_jsonb(cb: ColumnBatch, text: pa.Array) -> pa.Array:
    _reject_json_nul(cb, text)
    ok = pc.equal(cb.projection("ok"), 1)
    cb.reject(
        pc.invert(ok),
        "bad_json",
        lambda: sentence(f"{cb.label} is not valid JSON: ", quoted(text), "; fix or NULL it in D1"),
    )
    return text


def _convert_text_array(cb: ColumnBatch, text: pa.Array) -> pa.Array:
    _reject_json_nul(cb, text)
    ok = pc.equal(cb.projection("ok"), 1)
    cb.reject(
        pc.and_(pc.is_valid(text), pc.invert(ok)),
        "bad_text_array",
        lambda: sentence(
            f"{cb.label} is not a JSON array of strings: ", quoted(text), "; fix it in D1"
        ),
    )
    # SQLite decodes a lone surrogate escape ("\ud800") into bytes that are not UTF-8.
    literal, unstorable = decode_utf8(cb.projection("array"))
    unstorable = pc.and_(unstorable, pc.is_valid(text))
    if pc.any(unstorable).as_py():
        cb.reject(unstorable, "bad_text_array", _element_reasons(cb.label, text, unstorable))
    return pc.if_else(pc.is_valid(text), literal, None)


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


# -- datetimes -------------------------------------------------------------------------------

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
DAYS_IN_MONTH = pa.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], pa.int64())


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


def _civil_micros(
    fields: dict[str, pa.Array], negative_offset: pa.Array
) -> tuple[pa.Array, pa.Array]:
    """Microseconds (UTC) of ISO fields as integers (y, mo, d, h, mi, s, frac in microseconds,
    oh, om), and whether they name a real date and time; both parsers share it, so a text gets
    the same arithmetic and the same calendar rules whichever of them reads it."""
    y, mo, d, h, mi, s, frac, oh, om = (
        fields[name] for name in ("y", "mo", "d", "h", "mi", "s", "frac", "oh", "om")
    )
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
    offset_min = pc.if_else(negative_offset, pc.negate(offset_min), offset_min)
    micros = pc.add(
        pc.add(pc.multiply(days, US_PER_DAY), pc.multiply(seconds, 1_000_000)),
        pc.subtract(frac, pc.multiply(offset_min, 60_000_000)),
    )
    return micros, real


def _midnight(micros: pa.Array, is_number: pa.Array) -> pa.Array:
    """Whether an instant is midnight UTC; never for an epoch number (no date was written)."""
    midnight = pc.equal(
        pc.subtract(micros, pc.multiply(pc.divide(micros, US_PER_DAY), US_PER_DAY)), 0
    )
    return pc.and_(midnight, pc.invert(is_number))


def parse_datetime_general(text: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """``parse_datetime`` of any text, in every accepted form and every failure: two regex
    extractions and some eighty kernels on every row, which is why parse_datetime sends it only
    the rows its common shapes do not take."""
    text = pc.utf8_trim_whitespace(text)
    epoch_us, is_number = _epoch_micros(text)

    parts = pc.extract_regex(text, ISO_RE)
    matched = pc.is_valid(parts)
    field = {
        name: pc.fill_null(pc.struct_field(parts, name), "")
        for name in ("y", "mo", "d", "h", "mi", "s", "f", "z", "sign", "oh", "om")
    }
    fields = {name: _int(field[name]) for name in ("y", "mo", "d", "h", "mi", "s", "oh", "om")}
    fields["frac"] = _int(pc.utf8_rpad(pc.utf8_slice_codeunits(field["f"], 0, 6), 6, "0"))
    iso_us, real = _civil_micros(fields, pc.equal(field["sign"], "-"))

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
    return micros, code, _midnight(micros, is_number)


# The shapes nearly every value has (SQLite's datetime(), JavaScript's toISOString(), an ISO
# offset, a date, epoch seconds or milliseconds as integer text), which parse_datetime reads
# from fixed positions instead of through ISO_RE: no whitespace, 'T' or ' ', seconds always,
# a zone only as 'Z' or '+HH:MM'. Every other accepted spelling is parse_datetime_general's.
COMMON_ISO_RE = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:[0-9]{2})?)?$"
)
COMMON_EPOCH_DIGITS = 13  # up to 9999999999999 (ms, the year 2286): whole * 1e6 fits int64


def _digits_at(text: pa.Array, start: int, stop: int | None) -> pa.Array:
    """The integer at text[start:stop] of texts that hold ASCII digits there."""
    return pc.cast(pc.binary_slice(text, start, stop), pa.int64())


def _common_iso_micros(text: pa.Array) -> pa.Array:
    """Microseconds of COMMON_ISO_RE texts, NULL where they are no real instant in range (the
    general parser names the reason). A date alone is padded with zeros to the time's width; the
    offset is read from the end and cut off, and a 'Z' trimmed, before the fraction is read."""
    padded = pc.utf8_rpad(text, 19, "0").cast(pa.binary())
    at = partial(_digits_at, padded)
    sign = pc.binary_slice(padded, -6, -5)  # a sign there can only be the offset's
    has_offset = pc.or_(pc.equal(sign, b"+"), pc.equal(sign, b"-"))
    offset = pc.if_else(has_offset, pc.binary_slice(padded, -6, None), b"+00:00")
    core = pc.if_else(has_offset, pc.binary_slice(padded, 0, -6), padded)
    fraction = pc.utf8_rtrim(pc.binary_slice(core, 20, 26).cast(pa.string()), "Z")
    fields = {
        "y": at(0, 4),
        "mo": at(5, 7),
        "d": at(8, 10),
        "h": at(11, 13),
        "mi": at(14, 16),
        "s": at(17, 19),
        "frac": pc.cast(pc.utf8_rpad(fraction, 6, "0"), pa.int64()),
        "oh": _digits_at(offset, 1, 3),
        "om": _digits_at(offset, 4, 6),
    }
    micros, real = _civil_micros(fields, pc.equal(sign, b"-"))
    in_range = pc.and_(pc.greater_equal(micros, MIN_US), pc.less_equal(micros, MAX_US))
    return pc.if_else(pc.and_(real, in_range), micros, None)


def _common_epoch_micros(digits: pa.Array) -> pa.Array:
    """Microseconds of integer texts of at most COMMON_EPOCH_DIGITS digits, NULL where they are
    before 2001 (the general parser says why)."""
    whole = pc.cast(digits, pa.int64())
    scale = pc.if_else(pc.greater_equal(whole, EPOCH_MS_THRESHOLD), 1_000, 1_000_000)
    micros = pc.multiply(whole, scale)
    return pc.if_else(pc.greater_equal(micros, FIRST_PLAUSIBLE_US), micros, None)


def parse_datetime(text: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Microseconds since the epoch (UTC), a failure code per row, and whether it is midnight UTC.

    Accepts what Workers apps write: SQLite's 'YYYY-MM-DD HH:MM:SS' (UTC), ISO 8601 with 'T',
    fractional seconds, 'Z' or an offset, date-only, and epoch seconds or milliseconds (as
    numbers or text; |n| >= 1e11 means milliseconds) from 2001 on. Fractions beyond microseconds
    truncate, in both forms.

    The rows in a common shape are read from fixed positions; only the others (and common
    shapes that fail) go through parse_datetime_general, filtered out and scattered back, with
    the same results (test_datetime_parsing compares the two on adversarial texts).
    """
    n = len(text)
    micros = pa.nulls(n, pa.int64())
    is_number = pc.fill_null(
        pc.and_(
            pc.ascii_is_decimal(text), pc.less_equal(pc.binary_length(text), COMMON_EPOCH_DIGITS)
        ),
        False,
    )
    is_iso = pc.fill_null(pc.match_substring_regex(text, COMMON_ISO_RE), False)
    for shape, parse in ((is_number, _common_epoch_micros), (is_iso, _common_iso_micros)):
        if pc.any(shape).as_py():
            micros = pc.replace_with_mask(micros, shape, parse(pc.filter(text, shape)))
    midnight = _midnight(micros, is_number)
    code = pa.nulls(n, pa.string())
    rest = pc.and_(pc.is_valid(text), pc.is_null(micros))
    if pc.any(rest).as_py():
        other = parse_datetime_general(pc.filter(text, rest))
        micros, code, midnight = (
            pc.replace_with_mask(whole, rest, part)
            for whole, part in zip((micros, code, midnight), other, strict=True)
        )
    return micros, code, midnight


DATETIME_REASONS = {
    "bad_datetime": " is not a datetime in a recognised form (ISO 8601, 'YYYY-MM-DD HH:MM:SS' or "
    "epoch seconds/milliseconds); correct it in D1",
    "impossible_datetime": " is not a real calendar date/time; correct it in D1",
    "out_of_range": " is outside the years 1 to 9999; correct it in D1",
    "implausible_datetime": " read as epoch seconds/milliseconds is before 2001, so it is no "
    "time the app wrote (a flag or a counter?); put the real time, or NULL, in D1",
}


def _parsed_datetime(cb: ColumnBatch, text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Microseconds and midnight mask of a datetime column, its failures filed."""
    micros, code, midnight = parse_datetime(text)
    flags = cb.column.flags
    if flags:  # the spec's rule gives these their value (transforms._apply_flags), not quarantine
        numbers = pa.array([number for number, _ in flags], pa.float64())
        code = pc.if_else(pc.is_in(epoch_number(text), numbers), None, code)
    for reason_code, tail in DATETIME_REASONS.items():
        cb.reject(
            pc.equal(code, reason_code),
            reason_code,
            lambda tail=tail: sentence(f"{cb.label} = ", quoted(text), tail),
        )
    return micros, midnight


def _convert_timestamptz(cb: ColumnBatch, text: pa.Array) -> pa.Array:
    micros, _ = _parsed_datetime(cb, text)
    stamps = pc.cast(micros, pa.timestamp("us", tz="UTC"))
    if cb.column.shift:
        stamps = pc.add(stamps, pa.scalar(cb.column.shift, pa.duration("us")))
    return stamps


def _convert_date(cb: ColumnBatch, text: pa.Array) -> pa.Array:
    micros, midnight = _parsed_datetime(cb, text)
    cb.reject(
        pc.and_(pc.is_valid(micros), pc.invert(midnight)),
        "date_has_time",
        lambda: sentence(
            f"{cb.label} = ",
            quoted(text),
            " has a time of day, which a DATE would drop; store the date only in D1",
        ),
    )
    return pc.cast(pc.cast(pc.divide(micros, US_PER_DAY), pa.int32()), pa.date32())


# -- the registry ----------------------------------------------------------------------------

_NUMBERS = (StorageClass.INTEGER, StorageClass.REAL)
_TEMPORAL = (StorageClass.INTEGER, StorageClass.REAL, StorageClass.TEXT)


# Kinds D1 stores as INTEGER: only SQLite integers are accepted, read as int64.
_stored_as_integer = partial(
    ColumnKind,
    d1_type="INTEGER",
    accepts=(StorageClass.INTEGER,),
    value=INTEGER_VALUE,
    decodes_text=False,
)


class Kind:
    """Every kind a column can have; tables.py names them (``Kind.ID``)."""

    # UUID text normalised, any other text mapped to a deterministic UUIDv5
    ID = ColumnKind("uuid", "UUID", _convert_id)
    TEXT = ColumnKind("text", "TEXT", _as_is, empty_is_null=False)
    INTEGER = _stored_as_integer("integer", "INTEGER", _convert_integer, expected="an integer")
    BIGINT = _stored_as_integer("bigint", "BIGINT", _as_is, expected="an integer")
    BOOLEAN = _stored_as_integer("boolean", "BOOLEAN", _convert_boolean, expected="0 or 1")
    DOUBLE = ColumnKind(
        "double precision",
        "DOUBLE PRECISION",
        _as_is,
        d1_type="REAL",
        accepts=_NUMBERS,
        expected="a number",
        value=REAL_VALUE,
        decodes_text=False,
    )
    TIMESTAMPTZ = ColumnKind(
        "timestamptz",
        "TIMESTAMPTZ",
        _convert_timestamptz,
        accepts=_TEMPORAL,
        expected="a datetime",
        value=TEMPORAL_VALUE,
    )
    DATE = ColumnKind(
        "date",
        "DATE",
        _convert_date,
        accepts=_TEMPORAL,
        expected="a date",
        value=TEMPORAL_VALUE,
    )
    JSONB = ColumnKind("jsonb", "JSONB", _convert_jsonb, extras=(JSON_OK,))
    # JSON array of strings
    TEXT_ARRAY = ColumnKind(
        "text[]", "TEXT[]", _convert_text_array, extras=(ARRAY_OK, ARRAY_LITERAL)
    )
    HEX_BYTEA = ColumnKind("bytea", "BYTEA", _convert_hex)  # hex text
    # secret text stored only as its SHA-256 digest (BYTEA), hashed from D1's exact bytes
    TOKEN_HASH = ColumnKind("sha256", "BYTEA", _convert_token_hash, decodes_text=False)
    ENUM = ColumnKind("enum", None, _convert_enum)
    INET = ColumnKind("inet", "INET", _no_d1_value)  # only for columns the map adds
