"""Fuzzing the backend on the real stack: hypothesis scripts of Kafka records (good readings across
boots and gaps, copies identical or conflicting, poison of every kind, tests/backend/test_fuzz_batches.py)
produced into one running worker; each example with device and place ids of its own. The invariant:
every good reading stored once and counted once in every window it belongs to (the oracle), every bad
record in the DLQ with a reason and its source, nothing else there, and the worker still running.
The pure-logic fuzz (crashes, corrupted documents, a tiny de-duplication memory) is test_fuzz_batches;
this one proves the same on Faust, Kafka and FerretDB, with few examples (each takes seconds)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iot import contract, readings_store
from tests.support import unique, wait_for

from .conftest import KAFKA, BackendRig, Worker, as_comparable, expected_windows
from .test_bad_input import committed_to_end
from .test_fuzz_batches import (
    DEVICES,
    PLACES,
    again_step,
    claim,
    good_step,
    poison_step,
    poison_value,
    reading,
    record,
)

pytestmark = pytest.mark.integration
SIZES = (2000, 4000, 2000)  # tests/backend/conftest.py's windows, as test_fuzz_batches writes readings

script = st.lists(st.one_of(good_step, good_step, again_step, poison_step), min_size=1, max_size=40)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BackendRig, Worker]]:
    rig = BackendRig(tmp_path_factory.mktemp("fuzz-stack"))
    try:
        yield rig, rig.worker()
    finally:
        rig.close()


def produce(rig: BackendRig, value: bytes | None, key: bytes) -> tuple[int, int]:
    """Produce one record and return where Kafka put it (partition, offset)."""
    where: list[tuple[int, int]] = []
    producer = Producer({"bootstrap.servers": KAFKA})
    producer.produce(
        rig.source, value, key, on_delivery=lambda _err, msg: where.append((msg.partition(), msg.offset()))
    )
    assert producer.flush(30) == 0 and where
    return where[0]


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(script)
def test_any_records_leave_every_good_reading_stored_and_counted_once_and_every_bad_one_in_the_dlq(
    stack: tuple[BackendRig, Worker], script: list[tuple[Any, ...]]
) -> None:
    rig, worker = stack
    ids = {name: unique(name[0] + "f") for name in (*DEVICES, *set(PLACES.values()))}
    first: dict[str, dict[str, Any]] = {}
    produced: list[dict[str, Any]] = []
    good: list[dict[str, Any]] = []
    bad: set[tuple[int, int]] = set()
    conflicts: set[tuple[int, int]] = set()
    for step in script:
        if step[0] == "good":
            _, device, boot, seq, dt, temperature, valid = step
            r = reading(device, boot, seq, dt, temperature, valid, ids)
        elif step[0] == "poison":
            value, key = poison_value(step[1], step[2], step[3], ids)
            bad.add(produce(rig, value, key))
            continue
        elif produced:
            r = dict(produced[step[1] % len(produced)])
            if step[0] == "conflict":
                t = r["temperature"]
                r["temperature"] = 5.0 if t is None else (t - 1.0 if t > 0 else t + 1.0)
        else:
            continue
        where = produce(rig, record(r), r["device"].encode())
        produced.append(r)
        rid = contract.reading_id(r["device"], r["boot"], r["seq"])
        if rid not in first:
            first[rid] = r
            good.append(r)
        elif claim(first[rid]) != claim(r):
            conflicts.add(where)
    wait_for(lambda: committed_to_end(rig), 60, "every record taken")
    devices = [ids[d] for d in DEVICES]
    places = sorted({ids[p] for p in PLACES.values()})
    # Stored once, as first sent.
    held = list(readings_store.every_copy(readings_store.collection(rig.db), devices))
    stored = {d["_id"]: d for d in held}
    assert len(held) == len(stored), "a reading held twice"
    assert set(stored) == set(first)
    for rid, r in first.items():
        assert stored[rid]["temperature"] == r["temperature"], rid
    # Counted once in every window, once final.
    for scope, coll, field_, keys in (
        ("sensor", contract.COLL_SENSOR_WINDOWS, "device", devices),
        ("place", contract.COLL_PLACE_WINDOWS, "place", places),
    ):
        expected = expected_windows(good, scope, *SIZES)

        def final(coll: str = coll, expected: dict[str, Any] = expected) -> bool:
            docs = {d["_id"]: d for d in rig.db[coll].find({"_id": {"$in": list(expected)}})}
            return len(docs) == len(expected) and all(d["final"] for d in docs.values())

        wait_for(final, 60, f"{len(expected)} final {scope} windows")
        got = {d["_id"]: as_comparable(d) for d in rig.db[coll].find({field_: {"$in": keys}})}
        assert got == expected, scope
    # The DLQ: every bad record with a reason and its source; nothing else of this example.
    records = [json.loads(v) for _, v in rig.read_output(contract.TOPIC_DLQ)]
    offsets_of_mine = bad | conflicts
    mine = [
        r
        for r in records
        if r.get("source", {}).get("topic") == rig.source
        and (r["source"]["partition"], r["source"]["offset"]) in offsets_of_mine | _all_sources(records, ids)
    ]
    sources = {(r["source"]["partition"], r["source"]["offset"]) for r in mine}
    assert bad <= sources, bad - sources
    assert {
        (r["source"]["partition"], r["source"]["offset"])
        for r in mine
        if r["reason"] == contract.REASON_CONFLICTING_DUPLICATE
    } == conflicts
    assert sources <= bad | conflicts, sources - bad - conflicts
    assert all(r["reason"] in contract.DLQ_REASONS for r in mine)
    assert not [r for r in mine if r["reason"] == contract.REASON_UNPROCESSABLE]
    assert worker.alive()


def _all_sources(records: list[dict[str, Any]], ids: dict[str, str]) -> set[tuple[int, int]]:
    """Sources of DLQ records whose payload or key names one of this example's ids (to find a record
    dead-lettered that should not have been)."""
    out = set()
    for r in records:
        src = r.get("source") or {}
        text = base64.b64decode(r["payload_b64"]) + base64.b64decode(src.get("key_b64") or "")
        if any(i.encode() in text for i in ids.values()):
            out.add((src.get("partition"), src.get("offset")))
    return out
