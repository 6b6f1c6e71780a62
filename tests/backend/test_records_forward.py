"""The place stage's decode of forwarded bundles gives exactly what full validation gave the sensor
stage; anything else in a bundle is rejected, never counted."""

from __future__ import annotations

import pytest

from backend import records
from backend.records import (
    RejectedRecord,
    decode_forwarded,
    decode_reading,
    encode_bundle,
    encode_forward,
)
from iot import contract
from iot.harness import payloads

pytestmark = pytest.mark.unit

RECORD = payloads.reading(
    "p1",
    "d1",
    7,
    1_750_000_000_123,
    boot=2,
    temperature=21,  # an integer on the wire: the reading holds 21.0
    humidity=None,
    pressure=1000.25,
    luminosity=0.1,
    fw="1.0",
    extra="dropped by validation",
    received_at=1_750_000_000_200,
)


@pytest.mark.parametrize("device_ts", [None, 1_750_000_009_000])
def test_a_bundle_decodes_to_its_validated_readings_in_order(device_ts: int | None) -> None:
    record = RECORD if device_ts is None else {**RECORD, "device_ts": device_ts}
    readings = [decode_reading(contract.encode({**record, "seq": s})) for s in range(5)]
    back = decode_forwarded(encode_bundle([(2, 40 + i, encode_forward(r)) for i, r in enumerate(readings)]))
    assert back == [(r, (2, 40 + i)) for i, r in enumerate(readings)]
    first = back[0]
    assert not isinstance(first, RejectedRecord)
    assert [type(first[0][m]) for m in contract.METRICS] == [float, type(None), float, float]


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"{not json",
        contract.encode(RECORD),  # a single reading, not a bundle
        b"[]",
    ],
)
def test_a_record_that_is_not_a_bundle_is_rejected(value: bytes | None) -> None:
    items = decode_forwarded(value)
    assert len(items) == 1 and isinstance(items[0], RejectedRecord)


def test_a_bundle_element_that_is_not_a_normalised_reading_is_rejected() -> None:
    good = decode_reading(contract.encode(RECORD))
    bundle = encode_bundle([(0, 1, encode_forward(good)), (0, 2, contract.encode(RECORD))])
    items = decode_forwarded(bundle + b"")
    assert items[0] == (good, (0, 1))
    assert isinstance(items[1], RejectedRecord) and items[1].reason == contract.REASON_SCHEMA
    # An element without its origin is no forwarded reading either.
    bare = decode_forwarded(b"[" + encode_forward(good) + b"]")
    assert isinstance(bare[0], RejectedRecord)


def test_watermarks_record_round_trips_with_caught_up_partitions_as_none() -> None:
    marks = {0: 1_750_000_000_123, 3: None, 5: -1}
    assert records.decode_watermarks(records.encode_watermarks(marks)) == marks


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"[]",
        b'{"source_watermarks": 3}',
        b'{"source_watermarks": {"x": 1}}',
        b'{"source_watermarks": {"1": 1.5}}',
    ],
)
def test_a_malformed_watermarks_record_is_rejected_with_a_reason(value: bytes) -> None:
    with pytest.raises(records.RejectedRecord) as err:
        records.decode_watermarks(value)
    assert err.value.reason == contract.REASON_SCHEMA


def test_the_watermarks_key_can_be_no_place() -> None:
    assert not contract.is_id(records.WATERMARKS_KEY)


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 21},  # an integer where the sensor stage always forwards a float
        {"humidity": "45.0"},
        {"pressure": True},
        {"luminosity": [1.0]},
    ],
)
def test_a_forwarded_reading_with_a_metric_not_float_or_null_is_rejected(change: dict[str, object]) -> None:
    good = decode_reading(contract.encode(RECORD))
    bad = {**good, **change}
    items = decode_forwarded(encode_bundle([(0, 1, encode_forward(good)), (0, 2, encode_forward(bad))]))
    assert items[0] == (good, (0, 1))
    assert isinstance(items[1], RejectedRecord) and items[1].reason == contract.REASON_SCHEMA


@pytest.mark.parametrize("origin", [b"-1,5", b"0,-1", b"true,5", b"0,5.0", b'"0",5'])
def test_a_forwarded_reading_with_a_bad_origin_is_rejected(origin: bytes) -> None:
    good = encode_forward(decode_reading(contract.encode(RECORD)))
    items = decode_forwarded(b"[[" + origin + b"," + good + b"]]")
    assert len(items) == 1 and isinstance(items[0], RejectedRecord)
