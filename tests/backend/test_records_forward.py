"""The place stage's decode of forwarded readings gives exactly what full validation gives."""

from __future__ import annotations

import pytest

from backend.records import decode_forward, decode_reading, encode_forward
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
