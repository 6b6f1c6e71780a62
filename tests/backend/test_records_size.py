"""The size check of decode_reading without a re-encode (records.encoded_size_bound): it accepts and
rejects exactly what the contract's encoded size does."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest

from backend.records import RejectedRecord, decode_reading, encoded_size_bound
from iot import contract

pytestmark = pytest.mark.unit


def record(**extra: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "device": "d1",
        "place": "p1",
        "boot": 0,
        "seq": 7,
        "ts": 1_750_000_000_000,
        "time_valid": True,
        "temperature": 21.5,
        "humidity": 40.0,
        "pressure": 1013.25,
        "luminosity": None,
        "fw": "1.0",
        "received_at": 1_750_000_000_005,
        **extra,
    }


def exact_verdict(value: bytes) -> str:
    """What the contract's rule says about the size: the payload without received_at, re-encoded."""
    obj = json.loads(value)
    obj.pop("received_at")
    return "too_large" if len(contract.encode(obj)) > contract.MAX_PAYLOAD_BYTES else "ok"


def verdict(value: bytes) -> str:
    try:
        decode_reading(value)
    except RejectedRecord as exc:
        assert exc.reason == contract.REASON_TOO_LARGE, exc
        return "too_large"
    return "ok"


def test_a_gateway_record_is_far_enough_under_the_limit_to_need_no_re_encode() -> None:
    value = contract.encode(record())
    bound = encoded_size_bound(value)
    assert bound is not None and bound <= contract.MAX_PAYLOAD_BYTES
    assert verdict(value) == "ok"


@pytest.mark.parametrize(
    "value",
    [
        # Short exponent floats in an unknown field: 1,000 bytes as sent, over 1,024 re-encoded.
        contract.encode(record()).replace(b"}", b',"x":[' + b",".join([b"1e5"] * 160) + b"]}"),
        # DEL is one byte as sent and \u007f (six) re-encoded.
        contract.encode(record()).replace(b'"fw":"1.0"', b'"fw":"' + b"\x7f" * 150 + b'"'),
        # Non-ASCII: two bytes as sent, six re-encoded.
        contract.encode(record()).replace(b'"fw":"1.0"', b'"fw":"' + "é".encode() * 200 + b'"'),
        # Whitespace: over the limit as sent, under it re-encoded.
        contract.encode(record()).replace(b",", b",    ").replace(b"}", b"," + b" " * 600 + b'"y":1}'),
    ],
)
def test_records_near_the_limit_get_the_verdict_of_the_re_encoded_size(value: bytes) -> None:
    assert verdict(value) == exact_verdict(value)


def test_the_bound_is_never_below_the_re_encoded_size() -> None:
    rng = random.Random(24)
    atoms: list[Any] = [0, -1, 10**30, 1e5, 1e-7, 123.456, -0.0, 5e-324, "a\\b", 'q"', "\t", True, None]
    for _ in range(2_000):
        obj = {f"k{i}": rng.choice(atoms) for i in range(rng.randint(1, 8))}
        obj["arr"] = [rng.choice(atoms) for _ in range(rng.randint(0, 6))]
        texts = [json.dumps(obj), json.dumps(obj, separators=(",", ":"))]
        if 10**30 not in obj.values() and 10**30 not in obj["arr"]:
            texts.append(orjson.dumps(obj).decode())  # orjson writes no integer beyond 64 bits
        for text in texts:
            value = text.encode()
            bound = encoded_size_bound(value)
            assert bound is not None
            assert bound >= len(contract.encode(orjson.loads(value))), text
