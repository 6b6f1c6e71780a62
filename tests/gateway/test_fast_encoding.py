"""The gateway's formatted encodings give exactly the bytes of the one JSON encoding of the contract
(`iot.contract.encode`, compact, no NaN): what consumers parse does not depend on the fast path."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import records
from iot import contract

pytestmark = pytest.mark.unit

_COUNTS = st.integers(0, 2**63 - 1)


@settings(max_examples=300, deadline=None)
@given(
    boot=_COUNTS,
    seqs=st.lists(_COUNTS | st.integers(0, 300), max_size=200)
    # One run of seqs, shuffled and repeated: one range, the usual ack.
    | st.builds(
        lambda first, n, order: sorted(range(first, first + n), key=lambda s: s * order % 7) * 2,
        _COUNTS,
        st.integers(1, 6),
        st.integers(1, 6),
    ),
)
def test_ack_payloads_are_the_json_encoding_of_their_ranges(boot: int, seqs: list[int]) -> None:
    ranges = contract.seq_ranges(seqs)
    expected = [
        contract.encode({"boot": boot, "ranges": ranges[i : i + contract.ACK_MAX_RANGES]})
        for i in range(0, len(ranges), contract.ACK_MAX_RANGES)
    ]
    got = contract.encode_acks(boot, seqs)
    assert got == expected
    assert [contract.decode_ack(p) for p in got] == [
        (boot, [tuple(r) for r in json.loads(p)["ranges"]]) for p in expected
    ]


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
_METRIC = (
    st.none()
    | st.floats(-200.0, 200_000.0)
    | st.integers(-50, 150_000)
    | st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e16])
)
_ID = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


def _reading_like(restamped: bool, wild: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts shaped like route()'s readings: the usual types, or (`wild`) one field of any type."""
    fields: dict[str, st.SearchStrategy[Any]] = {
        "v": st.just(1),
        "device": _ID,
        "place": _ID,
        "boot": _COUNTS,
        "seq": _COUNTS,
        "ts": st.integers(contract.TS_MIN_MS, contract.TS_MAX_MS * 2),
        "time_valid": st.booleans(),
        **{metric: _METRIC for metric in contract.METRICS},
        "fw": st.text(min_size=1, max_size=32),
    }
    if restamped:
        fields["device_ts"] = st.integers(-(2**63), 2**63 - 1)
    fields["received_at"] = st.integers(0, 2**45)
    order = list(fields)
    # In route()'s key order (fixed_dictionaries does not keep it): the only order formatted itself.
    plain = st.fixed_dictionaries(fields).map(lambda d: {name: d[name] for name in order})
    if not wild:
        return plain
    # One field of any other type (its key keeps its place).
    return st.tuples(plain, st.sampled_from(order), _SCALARS).map(lambda t: {**t[0], t[1]: t[2]})


def _encoded_or_error(encode: Any, obj: dict[str, Any]) -> bytes | str:
    try:
        return bytes(encode(obj))
    except (ValueError, TypeError) as exc:
        return type(exc).__name__


@settings(max_examples=600, deadline=None)
@given(
    reading=_reading_like(False, wild=False)
    | _reading_like(True, wild=False)
    | _reading_like(False)
    | _reading_like(True)
    | st.dictionaries(st.sampled_from([*contract.FIELDS, "received_at", "device_ts", "x"]), _SCALARS)
)
def test_reading_records_are_the_contract_encoding_of_the_reading(reading: dict[str, Any]) -> None:
    assert _encoded_or_error(records.encode_reading, reading) == _encoded_or_error(contract.encode, reading)


@settings(max_examples=300, deadline=None)
@given(
    reading=_reading_like(False, wild=False),
    received_at=st.integers(contract.TS_MIN_MS, contract.TS_MAX_MS - 1),
)
def test_a_routed_reading_is_the_contract_encoding_of_the_validated_reading(
    reading: dict[str, Any], received_at: int
) -> None:
    topic = contract.reading_topic("kitchen", "k-1")
    payload = json.dumps({**reading, "device": "k-1", "place": "kitchen"}).encode()
    out = records.route(topic, payload, received_at)
    if out.reason is not None:
        return
    decoded = json.loads(out.value)
    assert out.value == contract.encode(decoded)
    expected = contract.validate_reading(topic, payload)
    assert decoded == {
        **expected,
        **{k: decoded[k] for k in ("ts", "time_valid", "received_at", "device_ts") if k in decoded},
    }
    assert decoded["received_at"] == received_at
