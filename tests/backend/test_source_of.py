"""Where a stored reading came from (`src`), read back as the client decodes it: an offset on partition
1 or above is a BSON int64, which pymongo returns as `bson.int64.Int64`, not `int`."""

from __future__ import annotations

import bson
import pytest

from backend.mongo_sink import source_code, source_of

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("partition", "offset"), [(0, 0), (0, 7), (1, 0), (5, 123_456_789)])
def test_the_source_of_a_stored_reading_survives_the_round_trip_through_bson(
    partition: int, offset: int
) -> None:
    stored = bson.decode(bson.encode({"src": source_code(partition, offset)}))
    assert source_of(stored) == (partition, offset)


@pytest.mark.parametrize("src", [None, -1, True, 1.5, "3", [1]])
def test_a_source_that_is_no_count_says_unknown(src: object) -> None:
    assert source_of({"src": src}) == (-1, -1)
