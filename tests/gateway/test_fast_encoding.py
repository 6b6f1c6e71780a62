"""The gateway's formatted encodings give exactly the bytes of the one JSON encoding of the contract
(`iot.contract.encode`, compact, no NaN): what consumers parse does not depend on the fast path."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iot import contract

pytestmark = pytest.mark.unit

_COUNTS = st.integers(0, 2**63 - 1)


@settings(max_examples=300, deadline=None)
@given(boot=_COUNTS, seqs=st.lists(_COUNTS | st.integers(0, 300), max_size=200))
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
