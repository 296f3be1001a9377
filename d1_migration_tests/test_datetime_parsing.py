"""parse_datetime (vectorised, on Arrow) against a plain Python reference of its docstring.

The reference recognises the accepted forms by hand ('YYYY-MM-DD', then optionally 'T' or ' ',
'HH:MM', ':SS', a fraction; then optionally 'Z' or an offset; or an epoch number, |n| >= 1e11
meaning milliseconds) and leaves calendar rules and arithmetic to ``datetime.fromisoformat``
and ``Decimal``. Generated valid, impossible and malformed texts must get the same microseconds
or the same rejection from both, in batches, so the vectorised masks are exercised together.
"""

import itertools
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pyarrow as pa
from hypothesis import example, given
from hypothesis import strategies as st

from d1_migration.spec.kinds import MAX_US, parse_datetime, parse_datetime_general

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
FIRST_YEAR, LAST_YEAR = datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)
LAST_MICROS = (LAST_YEAR - EPOCH) // MICROSECOND + 86_400_000_000 - 1  # 9999-12-31T23:59:59.999999
FIRST_MICROS = (FIRST_YEAR - EPOCH) // MICROSECOND
APP_STARTED = (datetime(2001, 1, 1, tzinfo=UTC) - EPOCH) // MICROSECOND


def digits(text: str, count: int | None = None) -> bool:
    return text.isascii() and text.isdigit() and (count is None or len(text) == count)


def reference_epoch(text: str) -> tuple[int | None, str | None]:
    """Exact decimal arithmetic; a fraction beyond microseconds truncates."""
    number = Decimal(text)
    scale = 1_000 if abs(number) >= 100_000_000_000 else 1_000_000
    micros = int(number * scale)
    if not FIRST_MICROS <= micros <= LAST_MICROS:
        return None, "out_of_range"
    if micros < APP_STARTED:
        return None, "implausible_datetime"
    return micros, None


def split_zone(rest: str) -> tuple[str, str] | None:
    """What follows the date, as (time part, offset '+HH:MM'); None if the zone is malformed.
    The zone comes last, after at most one space: 'Z', or a sign (which no time part holds)
    and 'HH', 'HHMM' or 'HH:MM'."""
    if rest[-1:] in ("Z", "z"):
        return rest[:-1].removesuffix(" "), "+00:00"
    cut = max(rest.rfind("+"), rest.rfind("-"))
    if cut < 0:
        return rest, "+00:00"
    zone = rest[cut:]
    hours, minutes = zone[1:3], zone[3:]
    if minutes.startswith(":"):  # 'HH:MM', never 'HH:'
        minutes = minutes[1:] or "malformed"
    if not digits(hours, 2) or (minutes and not digits(minutes, 2)):
        return None
    return rest[:cut].removesuffix(" "), f"{zone[0]}{hours}:{minutes or '00'}"


def normal_time(time: str) -> str | None:
    """'HH:MM:SS.ffffff' of '', 'THH:MM', ' HH:MM:SS' or with a fraction of 1 to 9 digits."""
    if time == "":
        return "00:00:00.000000"
    if time[0] not in "T ":
        return None
    clock, _, fraction = time[1:].partition(".")
    if "." in time and not (digits(fraction) and 1 <= len(fraction) <= 9):
        return None
    parts = clock.split(":")
    if len(parts) not in (2, 3) or not all(digits(p, 2) for p in parts):
        return None
    seconds = parts[2] if len(parts) == 3 else "00"
    if "." in time and len(parts) == 2:
        return None
    return f"{parts[0]}:{parts[1]}:{seconds}.{fraction[:6].ljust(6, '0')}"


def reference(text: str | None) -> tuple[int | None, str | None, bool | None]:
    """(microseconds since the epoch UTC, failure code, midnight UTC) per the docstring."""
    if text is None:
        return None, None, None
    text = text.strip()  # what utf8_trim_whitespace trims too, in ASCII
    whole, _, fraction = text.removeprefix("-").partition(".")
    if digits(whole) and len(whole) <= 16 and ("." not in text or digits(fraction)):
        micros, code = reference_epoch(text)
        return micros, code, None if micros is None else False
    date, rest = text[:10], text[10:]
    shaped = (
        digits(date[0:4], 4)
        and date[4:5] == "-"
        and digits(date[5:7], 2)
        and date[7:8] == "-"
        and digits(date[8:10], 2)
    )
    parts = split_zone(rest) if shaped else None
    clock = normal_time(parts[0]) if parts else None
    if clock is None:
        return None, "bad_datetime", None
    try:
        moment = datetime.fromisoformat(f"{date}T{clock}{parts[1]}")
    except ValueError:
        return None, "impossible_datetime", None
    if int(parts[1][-2:]) > 59:  # fromisoformat takes '+00:60' as an hour
        return None, "impossible_datetime", None
    micros = (moment - EPOCH) // MICROSECOND
    if not FIRST_MICROS <= micros <= LAST_MICROS:
        return None, "out_of_range", None
    return micros, None, micros % 86_400_000_000 == 0


def product(texts: list[str | None]) -> list[tuple[int | None, str | None, bool | None]]:
    micros, codes, midnight = parse_datetime(pa.array(texts, pa.string()))
    return list(zip(micros.to_pylist(), codes.to_pylist(), midnight.to_pylist(), strict=True))


def two(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda n: f"{n:02d}")


def zones(impossible: bool) -> st.SearchStrategy[str]:
    """None, 'Z', or an offset in each accepted spelling (beyond 23:59 if ``impossible``)."""
    offset = st.tuples(
        st.sampled_from(["", " "]),
        st.sampled_from("+-"),
        two(0, 29 if impossible else 23),
        st.sampled_from(["", ":", "none"]),
        two(0, 69 if impossible else 59),
    ).map(lambda z: f"{z[0]}{z[1]}{z[2]}" + ("" if z[3] == "none" else f"{z[3]}{z[4]}"))
    return st.one_of(st.just(""), st.sampled_from(["Z", "z", " Z"]), offset)


@st.composite
def iso_texts(draw: st.DrawFn, impossible: bool) -> str:
    """Texts of every accepted shape: real instants, or (``impossible``) fields out of range."""
    if impossible:
        date = f"{draw(st.integers(0, 9999)):04d}-{draw(two(0, 19))}-{draw(two(0, 39))}"
        clock = [draw(two(0, 29)), draw(two(0, 69)), draw(two(0, 69))]
    else:
        moment = draw(st.datetimes(datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59)))
        date = moment.date().isoformat()
        clock = [f"{moment.hour:02d}", f"{moment.minute:02d}", f"{moment.second:02d}"]
    text = date
    if draw(st.booleans()):
        seconds = draw(st.booleans())
        text += draw(st.sampled_from("T ")) + ":".join(clock if seconds else clock[:2])
        if seconds and draw(st.booleans()):
            text += "." + draw(st.text("0123456789", min_size=1, max_size=9))
    text += draw(zones(impossible))
    return draw(st.sampled_from(["", " ", "\t"])) + text + draw(st.sampled_from(["", " ", "\n"]))


epoch_texts = st.one_of(
    st.integers(-(10**16) + 1, 10**16 - 1).map(str),
    st.integers(978_307_200, 9_999_999_999).map(str),  # seconds, 2001 to 2286
    st.integers(978_307_200_000, 9_999_999_999_999).map(str),  # milliseconds
    st.tuples(
        st.integers(-(10**12), 10**16 - 1), st.text("0123456789", min_size=1, max_size=9)
    ).map(lambda p: f"{p[0]}.{p[1]}"),
)
noise = st.one_of(
    st.text("0123456789-:T Zz+.e", max_size=30),
    st.text(st.characters(codec="ascii"), max_size=30),
)
texts = st.one_of(
    iso_texts(impossible=False), iso_texts(impossible=True), epoch_texts, noise, st.none()
)


@given(st.lists(texts, min_size=1, max_size=20))
@example(["2026-01-06 10:11:12", "2026-01-06T10:11:12.123456789Z", "2026-02-30", None])
@example(["1767694272", "1767694272123", "1767694272.5", "99999999999", "100000000000"])
# Through float64 these were a microsecond off (rounded; lost after the year 2255).
@example(["978307200.0000006", "1767694272123.4567", "9735816447.655505", "156005350437694"])
@example(["2026-01-06T10:11:12+05:30", "2026-01-06 10:11-0800", "0001-01-01T00:00:00+01:00"])
def test_parse_datetime_agrees_with_the_reference(batch):
    assert product(batch) == [reference(text) for text in batch]


@given(iso_texts(impossible=False))
def test_every_real_instant_in_an_accepted_form_is_accepted(text):
    """Valid by construction (the offset may push it past year 9999 or before year 1)."""
    micros, code, _ = product([text])[0]
    assert (micros is None) == (code == "out_of_range"), (text, code)


# -- the common shapes' fast path against the general parser ---------------------------------
# parse_datetime reads the common shapes from fixed positions and sends only the other rows to
# parse_datetime_general; the texts below sit on and around the fast path's edges, so that a
# row the fast path takes wrongly, or declines wrongly, gives a result that differs from the
# general parser's: every spelling of every part (deterministically, all combinations), each
# common shape with one character replaced, inserted or deleted anywhere, numbers either side
# of each threshold, and (hypothesis) field values from valid to impossible, mixed in batches.

COMMON = [
    "2026-01-06 10:11:12",
    "2026-01-06T10:11:12.345Z",
    "2026-01-06T10:11:12Z",
    "2026-01-06T10:11:12.345+05:30",
    "2026-01-06T10:11:12.345678-08:00",
    "2026-01-06",
    "1767694272",
    "1767694272123",
]
DATES = ["2026-01-06", "2024-02-29", "2023-02-29", "1900-02-29", "2000-02-29", "0001-01-01"]
DATES += ["9999-12-31", "0000-01-01", "2026-13-01", "2026-00-10", "2026-04-31", "2026-01-00"]
TIMES = ["10:11", "23:59:59", "10:11:12", "00:00:00", "24:00:00", "23:60:00", "23:59:60"]
FRACTIONS = ["", ".", ".5", ".05", ".9999999"] + ["." + "1234567890X"[:k] for k in range(1, 12)]
ZONES = ["", "Z", "z", " Z", " z", "ZZ", "+00:00", "+05:30", "-05:30", "-00:01", "+23:59"]
ZONES += ["+24:00", "+05:60", "+0530", "-0530", "+05", "+05:", " +05:30", "+5:30", "05:30"]
WRAPS = [("", ""), (" ", ""), ("", "\n"), ("\u00a0", "\u2003")]
MUTATION_CHARS = "0123456789-:.+ TtZz\t\u00a0\u0660x"
NUMBER_EDGES = [0, 978_307_200, 10**11, 978_307_200_000, 10**13, MAX_US // 1000, 10**16]


def spellings() -> list[str]:
    """Every combination of a date, a time, a fraction, a zone and surrounding whitespace."""
    clocks = [""] + [sep + time for sep in "T t" for time in TIMES]
    return [
        f"{before}{day}{clock}{fraction}{zone}{after}"
        for day, clock, zone, (before, after) in itertools.product(DATES, clocks, ZONES, WRAPS)
        for fraction in (FRACTIONS if clock else [""])
    ]


def mutations(text: str) -> list[str]:
    """``text`` with one character replaced, inserted or deleted, at every position."""
    return [
        text[:at] + edit + text[at + skip :]
        for at in range(len(text) + 1)
        for edit, skip in [
            ("", 1),
            *((c, 1) for c in MUTATION_CHARS),
            *((c, 0) for c in MUTATION_CHARS),
        ]
    ]


def numbers() -> list[str]:
    """Integers either side of each threshold and limit, in every spelling the parsers read."""
    values = [e + d for e in NUMBER_EDGES for d in range(-3, 4) if e + d >= 0]
    values += [int("9" * k) for k in range(1, 19)] + [10**k for k in range(19)]
    return [
        f"{prefix}{value}{suffix}"
        for value in values
        for prefix in ["", "0", "00", "-", "+", " "]
        for suffix in ["", ".0", ".5", ".", "e3", " "]
    ]


def assert_agree(texts: list[str | None], skip: int = 0) -> None:
    """Identical arrays (values, nulls, types) from both, also from an array that starts at an
    offset (``skip`` rows sliced off)."""
    text = pa.array([None] * skip + texts, pa.string()).slice(skip)
    for fast, general in zip(parse_datetime(text), parse_datetime_general(text), strict=True):
        if not fast.equals(general):
            rows = [i for i, (a, b) in enumerate(zip(fast, general, strict=True)) if a != b]
            differ = [(texts[i], fast[i], general[i]) for i in rows[:5]]
            assert fast.type == general.type and not rows, differ


def test_every_spelling_agrees_with_the_general_parser():
    assert_agree(spellings())


def test_every_near_miss_of_a_common_shape_agrees_with_the_general_parser():
    assert_agree([m for text in COMMON for m in mutations(text)] + numbers(), skip=1)


def fields(low: int, high: int, width: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda n: str(n).zfill(width))


@st.composite
def near_common_texts(draw: st.DrawFn) -> str:
    """A common shape (or one step from it), its fields anywhere from valid to impossible."""
    real = draw(st.booleans())
    if real:
        text = draw(st.dates(date(1, 1, 1), date(9999, 12, 31))).isoformat()
    else:
        text = f"{draw(fields(0, 9999, 4))}-{draw(fields(0, 19, 2))}-{draw(fields(0, 39, 2))}"
    hh, mm, ss = (
        draw(fields(0, 23 if real else 29, 2)),
        *(draw(fields(0, 59 if real else 69, 2)) for _ in range(2)),
    )
    if draw(st.integers(0, 4)):
        text += draw(st.sampled_from("T T")) + f"{hh}:{mm}:{ss}"
        if draw(st.booleans()):
            text += "." + draw(st.text("0123456789", min_size=1, max_size=10))
    offset = st.tuples(
        st.sampled_from("+-"),
        fields(0, 23 if real else 29, 2),
        st.sampled_from([":", ":", ""]),
        fields(0, 59 if real else 69, 2),
    ).map("".join)
    return text + draw(st.one_of(st.sampled_from(["", "Z", "Z", "z"]), offset))


@given(
    st.lists(
        st.one_of(
            near_common_texts(),
            st.integers(0, 10**14).map(str),
            iso_texts(impossible=False),
            iso_texts(impossible=True),
            epoch_texts,
            noise,
            st.none(),
        ),
        min_size=1,
        max_size=40,
    ),
    st.integers(0, 3),
)
def test_parse_datetime_agrees_with_the_general_parser(batch, skip):
    assert_agree(batch, skip)
