"""The readings layout (contract revision 4) without a server: how readings are cut into buckets, which
`_id`s hold a reading, and that a bucket gives back exactly the readings packed into it."""

from __future__ import annotations

import random
from typing import Any

import bson
import pytest
from bson.datetime_ms import DatetimeMS

from iot import contract, readings_store
from iot.harness import payloads

pytestmark = pytest.mark.unit


def _reading(seq: int, device: str = "d-1", boot: int = 0, place: str = "kitchen") -> dict[str, Any]:
    ts = 1_700_000_000_000 + seq * 1000
    # A null metric among the columns: it must come back null.
    return payloads.reading(place, device, seq, ts=ts, boot=boot, humidity=None, received_at=ts + 500)


def test_a_run_becomes_the_fewest_aligned_blocks() -> None:
    assert readings_store.blocks(list(range(100, 220))) == [
        *[(100, 4), (104, 4), (108, 4)],
        *[(s, 16) for s in range(112, 208, 16)],
        *[(208, 4), (212, 4), (216, 4)],
    ]
    assert readings_store.blocks([0, 1, 2, 3, 5, 7, 8]) == [(0, 4), (5, 1), (7, 1), (8, 1)]
    assert readings_store.blocks(list(range(64))) == [(0, 16), (16, 16), (32, 16), (48, 16)]


def test_every_block_is_aligned_covers_its_run_once_and_one_holder_id_names_it() -> None:
    rng = random.Random(7)
    for _ in range(200):
        seqs = sorted(set(rng.sample(range(600), rng.randint(1, 300))))
        covered = []
        for first, n in readings_store.blocks(seqs):
            assert n in readings_store.SIZES and first % n == 0
            covered += range(first, first + n)
            for seq in range(first, first + n):
                assert readings_store.bucket_id("d", 3, first, n) in readings_store.holders("d", 3, seq)
        assert covered == seqs


def test_a_bucket_of_one_has_the_reading_id_and_holders_are_distinct() -> None:
    ids = readings_store.holders("d-1", 2, 77)
    assert ids[0] == contract.reading_id("d-1", 2, 77)
    assert len(set(ids)) == len(ids) == len(readings_store.SIZES)
    assert readings_store.parse_id(contract.reading_id("d-1", 2, 77)) == ("d-1", 2, 77)
    assert readings_store.parse_id("d-1:2:64+64") is None


def test_packed_readings_come_back_flat_each_once_with_their_source() -> None:
    readings = [_reading(s) for s in (5, 3, 4, 6, 7, 9)] + [_reading(4, place="hall"), _reading(0, boot=1)]
    readings.append(_reading(5))  # the same identity again: the first is kept
    docs = readings_store.pack((r, 100 + i) for i, r in enumerate(readings))
    got = {r["_id"]: r for d in docs for r in readings_store.unpack(d)}
    # Place changes cut runs: (d-1, 0, hall) is a run of its own; an identity is held once per place.
    assert sorted(d["_id"] for d in docs) == ["d-1:0:3", "d-1:0:4", "d-1:0:4+4", "d-1:0:9", "d-1:1:0"]
    first = {contract.reading_id("d-1", r["boot"], r["seq"]) for r in readings[:6]}
    assert first <= set(got)
    r5 = got["d-1:0:5"]
    assert r5["src"] == 100 and r5["place"] == "kitchen" and r5["humidity"] is None
    assert int(r5["ts"]) == _reading(5)["ts"]
    assert {k for k in r5 if k not in ("_id", "src")} == set(_reading(5))
    four = next(d for d in docs if d["_id"] == "d-1:0:4+4")
    assert (four["seq"], four["n"], [int(t) for t in four["ts"]]) == (
        4,
        4,
        [_reading(s)["ts"] for s in range(4, 8)],
    )
    assert int(four["start"]) == _reading(4)["ts"] and int(four["end"]) == _reading(7)["ts"]
    assert "device_ts" not in four and "r" not in four


def test_a_field_only_some_readings_have_comes_back_only_on_those() -> None:
    restamped = {**_reading(1), "device_ts": 1_900_000_000_000, "time_valid": False}
    restamped_too = {**_reading(3), "device_ts": 1_900_000_000_000, "time_valid": False}
    docs = readings_store.pack([(_reading(0), 1), (restamped, 2), (_reading(2), 3), (restamped_too, 4)])
    assert [d["_id"] for d in docs] == ["d-1:0:0+4"]
    assert docs[0]["device_ts"] == [None, 1_900_000_000_000, None, 1_900_000_000_000]
    first, second, *_ = readings_store.unpack(docs[0])
    assert "device_ts" not in first and second["device_ts"] == 1_900_000_000_000
    assert first["humidity"] is None  # a null metric stays a null metric


def test_a_revision_3_document_reads_as_a_bucket_of_one_and_bad_shapes_give_what_they_hold() -> None:
    flat = {**_reading(8), "_id": "d-1:0:8", "src": 4}
    assert readings_store.unpack(flat) == [flat]
    assert readings_store.unpack({"_id": "x", "n": "two"}) == []
    assert readings_store.unpack({"_id": "x", "n": 10_000, "seq": 0}) == []
    odd = readings_store.unpack({"_id": "d:0:0+4", "device": "d", "boot": 0, "n": 2, "seq": 0, "ts": [5]})
    assert [(r["_id"], r["seq"], r["ts"]) for r in odd] == [("d:0:0", 0, 5), ("d:0:1", 1, None)]


def test_a_bucket_document_is_exactly_the_revision_4_layout() -> None:
    # The stored shape is the contract (docs/CONTRACT.md): pack builds it column by column, and a
    # bucket of one (live traffic) on a path of its own; both must give exactly these documents.
    base = 1_700_000_000_000
    restamped = {**_reading(5), "device_ts": 1_900_000_000_000}
    docs = readings_store.pack([(_reading(4), 7), (restamped, 8), (_reading(6), 9), (_reading(7), 10)])
    docs += readings_store.pack([(_reading(9, boot=2), 11)])
    dates = [DatetimeMS(base + s * 1000) for s in range(4, 8)]
    rx = [DatetimeMS(base + s * 1000 + 500) for s in range(4, 8)]
    expected = [
        {
            "_id": "d-1:0:4+4",
            "device": "d-1",
            "place": "kitchen",
            "boot": 0,
            "seq": 4,
            "n": 4,
            "start": dates[0],
            "end": dates[3],
            "v": [1] * 4,
            "ts": dates,
            "received_at": rx,
            "time_valid": [True] * 4,
            "temperature": [21.5] * 4,
            "humidity": [None] * 4,
            "pressure": [1012.5] * 4,
            "luminosity": [300.0] * 4,
            "fw": ["test-1.0"] * 4,
            "src": [7, 8, 9, 10],
            "device_ts": [None, 1_900_000_000_000, None, None],
        },
        {
            "_id": "d-1:2:9",
            "device": "d-1",
            "place": "kitchen",
            "boot": 2,
            "seq": 9,
            "n": 1,
            "start": DatetimeMS(base + 9000),
            "end": DatetimeMS(base + 9000),
            "v": [1],
            "ts": [DatetimeMS(base + 9000)],
            "received_at": [DatetimeMS(base + 9500)],
            "time_valid": [True],
            "temperature": [21.5],
            "humidity": [None],
            "pressure": [1012.5],
            "luminosity": [300.0],
            "fw": ["test-1.0"],
            "src": [11],
        },
    ]
    assert [list(d.items()) for d in docs] == [list(d.items()) for d in expected]
    assert [bson.encode(d) for d in docs] == [bson.encode(d) for d in expected]
