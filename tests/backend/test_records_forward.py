"""The place stage's decode of forwarded readings (single or in bundles) gives exactly what full
validation gives."""

from __future__ import annotations

import pytest

from backend.records import (
    RejectedRecord,
    decode_forward,
    decode_forwarded,
    decode_reading,
    encode_bundle,
    encode_forward,
)
from iot import contract

pytestmark = pytest.mark.unit

RECORD = {
    "v": 1,
    "device": "d1",
    "place": "p1",
    "boot": 2,
    "seq": 7,
    "ts": 1_750_000_000_123,
    "time_valid": True,
    "temperature": 21,  # an integer on the wire: the reading holds 21.0
    "humidity": None,
    "pressure": 1000.25,
    "luminosity": 0.1,
    "fw": "1.0",
    "extra": "dropped by validation",
    "received_at": 1_750_000_000_200,
}


@pytest.mark.parametrize("device_ts", [None, 1_750_000_009_000])
def test_forwarded_reading_decodes_to_the_validated_reading(device_ts: int | None) -> None:
    record = RECORD if device_ts is None else {**RECORD, "device_ts": device_ts}
    reading = decode_reading(contract.encode(record))
    back = decode_forward(encode_forward(reading))
    assert back == reading
    assert [type(back[m]) for m in contract.METRICS] == [type(reading[m]) for m in contract.METRICS]


def test_a_forwarded_original_record_is_validated_in_full() -> None:
    # What an older version forwarded: the record as received (integer metric, extra field).
    value = contract.encode(RECORD)
    assert decode_forward(value) == decode_reading(value)
    assert type(decode_forward(value)["temperature"]) is float


def test_a_bundle_decodes_to_its_validated_readings_in_order() -> None:
    readings = [decode_reading(contract.encode({**RECORD, "seq": s})) for s in range(5)]
    bundle = encode_bundle([encode_forward(r) for r in readings])
    assert decode_forwarded(bundle) == readings


def test_a_bundle_element_that_is_not_normalised_is_validated_in_full() -> None:
    good = decode_reading(contract.encode(RECORD))
    bad = {**RECORD, "seq": -1}
    items = decode_forwarded(encode_bundle([contract.encode(RECORD), contract.encode(bad)]))
    assert items[0] == good
    assert isinstance(items[1], RejectedRecord) and items[1].reason == contract.REASON_OUT_OF_RANGE


def test_a_single_forwarded_reading_of_an_older_version_still_decodes() -> None:
    value = contract.encode(RECORD)
    assert decode_forwarded(value) == [decode_reading(value)]
    assert isinstance(decode_forwarded(b"{not json")[0], RejectedRecord)
