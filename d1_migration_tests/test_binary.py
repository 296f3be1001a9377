"""The binary COPY's UUIDs: uuid_bytes gives each id's 16 bytes, or None for a batch that holds
text that is not a canonical UUID (the batch then takes CSV, where Postgres parses the text)."""

import uuid

import pyarrow as pa
import pytest

from d1_migration.target.binary import uuid_bytes


@pytest.mark.parametrize("nulls", [False, True])
def test_each_id_becomes_its_16_bytes_and_a_null_stays_null(nulls: bool) -> None:
    ids = [str(uuid.uuid4()) for _ in range(1000)]
    values = [None if nulls and i % 7 == 0 else v for i, v in enumerate(ids)]
    text = pa.array(values, pa.string()).slice(3)  # offsets that do not start at 0

    raw = uuid_bytes(text)

    assert raw is not None and raw.type == pa.binary(16)
    assert raw.to_pylist() == [None if v is None else uuid.UUID(v).bytes for v in values[3:]]


@pytest.mark.parametrize(
    "odd",
    [
        "0000000g-0000-0000-0000-000000000000",  # not hex
        "00000000-0000-0000-0000-00000000000",  # 35 characters
        "00000000-0000-0000-0000 000000000000",  # a space for a hyphen
        "000000000000-0000-0000-000000000000",  # 36 characters, three hyphens
        "00000000-0000-0000-0000-0000-0000000",  # 36 characters, five hyphens
        "0000000-00000-0000-0000-000000000000",  # four hyphens, one out of place
    ],
)
def test_text_that_is_not_a_canonical_uuid_gives_none(odd: str) -> None:
    text = pa.array([str(uuid.uuid4()), odd, None, str(uuid.uuid4())])
    assert uuid_bytes(text) is None


def test_hyphens_out_of_place_in_two_values_that_even_out_give_none() -> None:
    """Three hyphens in one value and five in the next: as many hex digits as two UUIDs."""
    text = pa.array(["000000000000-0000-0000-000000000000", "00-000000-0000-0000-0000-0000000000"])
    assert uuid_bytes(text) is None


def test_no_ids_give_an_empty_array() -> None:
    assert uuid_bytes(pa.array([], pa.string())).to_pylist() == []
