"""Bad input into the backend on the real stack (Kafka + the MongoDB-wire server), among good readings:
poison records, corrupted stored windows, boards that reboot often or leave many gaps, conflicting
duplicates, ids with a trailing newline. One worker runs one script; each test checks one case and
accounts for that case's good readings (stored once, in every window they belong to, per the oracle).

Script (event time from a fixed origin B; windows: tumbling 2 s, hopping 4 s every 2 s, grace 2 s;
allowed lateness: the default day, so readings for closed windows are amendments):
  1. every case's first readings, poison records among them, all produced before the worker starts
     (so they share its first batches);
  2. once the corrupted case's windows are final, their stored documents are corrupted, and the late
     readings, the re-sent boot, the filled gaps and the duplicates follow;
  3. one more late reading per corrupted window.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from iot import contract, readings_store
from tests.support import poll_until, unique

from .conftest import (
    BASE_TS,
    KAFKA,
    BackendRig,
    Worker,
    as_comparable,
    expected_windows,
    make_reading,
)

pytestmark = pytest.mark.integration
B = BASE_TS


@dataclass
class Case:
    """One case's good readings (what must be stored once and counted) and its ids."""

    place: str
    devices: list[str]
    good: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Run:
    rig: BackendRig
    worker: Worker
    cases: dict[str, Case]
    dlq: list[dict[str, Any]]
    newline_device: str
    conflict: dict[str, Any]


def committed_to_end(rig: BackendRig) -> bool:
    """The worker's group committed the end of its source topic: every record was taken (processed,
    dead-lettered, or lost)."""
    c = Consumer({"bootstrap.servers": KAFKA, "group.id": rig.app_id, "enable.auto.commit": False})
    try:
        parts = c.list_topics(rig.source, timeout=10).topics[rig.source].partitions
        tps = [TopicPartition(rig.source, p) for p in parts]
        committed = {tp.partition: tp.offset for tp in c.committed(tps, timeout=10)}
        ends = {p: c.get_watermark_offsets(TopicPartition(rig.source, p), timeout=10)[1] for p in parts}
        # A partition nothing was produced to has nothing to commit (its committed offset stays unset).
        return all(ends[p] == 0 or committed[p] >= ends[p] for p in parts)
    finally:
        c.close()


def settle(condition: Callable[[], bool], timeout: float) -> bool:
    """Wait for `condition` like tests.support.wait_for, but report instead of failing: the script
    goes on, and each test asserts its own case (so the old code fails case by case)."""
    return poll_until(condition, timeout, interval=0.2)


def produce_value(rig: BackendRig, value: bytes, key: bytes) -> None:
    rig.produce_raw(value, key=key)


def with_received_at(reading: dict[str, Any]) -> dict[str, Any]:
    return {**reading, "received_at": B}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    rig = BackendRig(tmp_path_factory.mktemp("bad-input"))
    try:
        yield _script(rig)
    finally:
        rig.close()


def _script(rig: BackendRig) -> Run:
    cases: dict[str, Case] = {}

    # --- poison records in the middle of a batch of good readings ---------------------------------
    poison = cases["poison"] = Case(unique("pp"), [unique("pd")])
    dev = poison.devices[0]
    first = [make_reading(poison.place, dev, i, B + 100 * i) for i in range(6)]
    then = [make_reading(poison.place, dev, i, B + 100 * i) for i in range(6, 12)]
    poison.good = first + then
    rig.produce(first)
    # json's recursion limit (RecursionError) and a lone surrogate (orjson refuses to encode it).
    produce_value(rig, b"[" * 3000 + b"]" * 3000, dev.encode())
    surrogate = with_received_at(make_reading(poison.place, dev, 99, B + 50, fw="\ud800"))
    produce_value(rig, json.dumps(surrogate).encode(), dev.encode())
    rig.produce(then)

    # --- a trailing newline in a device id -----------------------------------------------------------
    newline = cases["newline"] = Case(unique("np"), [unique("nd")])
    bad_device = newline.devices[0] + "\n"
    newline.good = [make_reading(newline.place, newline.devices[0], i, B + 300 * i) for i in range(3)]
    rig.produce(newline.good)
    produce_value(
        rig,
        contract.encode(with_received_at(make_reading(newline.place, bad_device, 0, B + 100))),
        bad_device.encode(),
    )

    # --- a board rebooted 12 times, then re-sends its oldest boot -------------------------------------
    boots = cases["boots"] = Case(unique("bp"), [unique("bd")])
    dev = boots.devices[0]
    boots.good = [
        make_reading(boots.place, dev, s, B + 1000 * b + 400 * s, boot=b) for b in range(12) for s in (0, 1)
    ]
    rig.produce(boots.good)

    # --- one boot with 351 gaps, filled later ----------------------------------------------------------
    gaps = cases["gaps"] = Case(unique("gp"), [unique("gd")])
    dev = gaps.devices[0]
    evens = [make_reading(gaps.place, dev, s, B + 10 * s) for s in range(0, 702, 2)]
    odds = [make_reading(gaps.place, dev, s, B + 10 * s) for s in range(1, 702, 2)]
    gaps.good = evens + odds
    rig.produce(evens)

    # --- duplicates: conflicting, identical, and re-stamped by the gateway -----------------------------
    dups = cases["dups"] = Case(unique("xp"), [unique("xd")])
    dev = dups.devices[0]
    dups.good = [make_reading(dups.place, dev, s, B + 200 * s) for s in range(4)]
    unsynced = make_reading(dups.place, dev, 4, B + 900, time_valid=False)
    dups.good.append(unsynced)
    rig.produce(dups.good)

    # --- stored windows corrupted between two amendments ------------------------------------------------
    corrupt = cases["corrupt"] = Case(unique("cp"), [unique("c1"), unique("c2"), unique("c3")])
    for d in corrupt.devices:
        corrupt.good += [make_reading(corrupt.place, d, s, B + 100 + 300 * s) for s in range(3)]
        corrupt.good.append(make_reading(corrupt.place, d, 3, B + 9000))  # closes the first windows
    rig.produce(corrupt.good)

    worker = rig.worker()
    settle(lambda: committed_to_end(rig), 60)
    tumbling0 = [contract.window_id(d, "tumbling", 2, B) for d in corrupt.devices]
    place0 = contract.window_id(corrupt.place, "tumbling", 2, B)

    def first_windows_final() -> bool:
        sensor = rig.docs(contract.COLL_SENSOR_WINDOWS)
        place = rig.docs(contract.COLL_PLACE_WINDOWS)
        return all(i in sensor and sensor[i]["final"] for i in tumbling0) and (
            place0 in place and place[place0]["final"]
        )

    if settle(first_windows_final, 60):
        sensor = rig.db[contract.COLL_SENSOR_WINDOWS]
        sensor.update_one({"_id": tumbling0[0]}, {"$set": {"temperature.count": "three"}})
        sensor.update_one({"_id": tumbling0[1]}, {"$set": {"sums.temperature": 5}})
        sensor.update_one({"_id": tumbling0[2]}, {"$unset": {"humidity": ""}})
        rig.db[contract.COLL_PLACE_WINDOWS].update_one({"_id": place0}, {"$set": {"devices": 42}})
    # A worker keeps the final documents it wrote last and amends from them without reading MongoDB:
    # a restarted one reads the corrupted documents.
    settle(lambda: committed_to_end(rig), 60)
    worker.stop()
    rig.restart(worker)

    # --- phase 2 -----------------------------------------------------------------------------------------
    late = [make_reading(corrupt.place, d, 4, B + 500, temperature=30.5) for d in corrupt.devices]
    later = [make_reading(corrupt.place, d, 5, B + 9500) for d in corrupt.devices]
    corrupt.good += late + later
    rig.produce(late + later)
    rig.produce([r for r in boots.good if r["boot"] == 0])  # the oldest boot, again
    rig.produce(odds)
    conflicting = {**dups.good[1], "temperature": dups.good[1]["temperature"] + 5.0}
    restamped = {**unsynced, "ts": unsynced["ts"] + 700}
    rig.produce([conflicting, dups.good[2], restamped])
    settle(lambda: committed_to_end(rig), 60)

    # --- phase 3: one more late reading per corrupted window -----------------------------------------
    again = [make_reading(corrupt.place, d, 6, B + 700, temperature=-5.25) for d in corrupt.devices]
    corrupt.good += again
    rig.produce(again)
    settle(lambda: committed_to_end(rig), 60)

    def all_final() -> bool:
        for case in cases.values():
            for scope, coll in (
                ("sensor", contract.COLL_SENSOR_WINDOWS),
                ("place", contract.COLL_PLACE_WINDOWS),
            ):
                got = rig.docs(coll)
                if not all(i in got and got[i]["final"] for i in expected_windows(case.good, scope)):
                    return False
        return True

    settle(all_final, 45)
    mine = {rig.source}
    dlq = [
        rec
        for rec in (json.loads(v) for _, v in rig.read_output(contract.TOPIC_DLQ))
        if rec.get("source", {}).get("topic") in mine
        or any(d in rec["topic"] for c in cases.values() for d in [c.place, *c.devices])
    ]
    return Run(rig, worker, cases, dlq, bad_device, conflicting)


# --- accounting -----------------------------------------------------------------------------------------
def account(run: Run, case: Case) -> dict[str, Any]:
    """Published good readings, stored once, missing, and the windows that differ from the oracle."""
    wanted = {contract.reading_id(r["device"], r["boot"], r["seq"]) for r in case.good}
    stored = [
        d["_id"] for d in readings_store.every_copy(readings_store.collection(run.rig.db), case.devices)
    ]
    differing = []
    for scope, coll, field_ in (
        ("sensor", contract.COLL_SENSOR_WINDOWS, "device"),
        ("place", contract.COLL_PLACE_WINDOWS, "place"),
    ):
        expected = expected_windows(case.good, scope)
        keys = case.devices if scope == "sensor" else [case.place]
        got = {d["_id"]: as_comparable(d) for d in run.rig.db[coll].find({field_: {"$in": keys}})}
        differing += [i for i in set(expected) | set(got) if expected.get(i) != got.get(i)]
    return {
        "published": len(wanted),
        "stored": len(set(stored) & wanted),
        "missing": len(wanted - set(stored)),
        "missing_ids": sorted(wanted - set(stored))[:5],
        "extra": len(set(stored) - wanted),
        "windows_differing": sorted(differing),
    }


def assert_exact(run: Run, name: str) -> None:
    got = account(run, run.cases[name])
    assert (got["stored"], got["missing"], got["extra"], got["windows_differing"]) == (
        got["published"],
        0,
        0,
        [],
    ), got


def payload_of(rec: dict[str, Any]) -> bytes:
    return base64.b64decode(rec["payload_b64"])


# --- the tests ----------------------------------------------------------------------------------------------
def test_poison_records_go_to_the_dlq_with_their_context_and_their_batch_is_counted(run: Run) -> None:
    assert_exact(run, "poison")
    dev = run.cases["poison"].devices[0]
    poison = [
        r for r in run.dlq if r.get("source", {}).get("key_b64") == base64.b64encode(dev.encode()).decode()
    ]
    assert sorted(r["reason"] for r in poison) == ["malformed_json", "schema"], poison
    for r in poison:
        src = r["source"]
        assert src["topic"] == run.rig.source and src["partition"] >= 0 and src["offset"] >= 0
    nested = next(r for r in poison if r["reason"] == "malformed_json")
    assert payload_of(nested).startswith(b"[[[")
    surrogate = next(r for r in poison if r["reason"] == "schema")
    assert b"\\ud800" in payload_of(surrogate) and "fw" in surrogate["detail"]


def test_a_trailing_newline_in_a_device_id_is_a_bad_id_not_a_device(run: Run) -> None:
    assert_exact(run, "newline")
    assert readings_store.count(readings_store.collection(run.rig.db), [run.newline_device]) == 0
    assert run.rig.db[contract.COLL_SENSOR_WINDOWS].count_documents({"device": run.newline_device}) == 0
    bad = [
        r
        for r in run.dlq
        if r["reason"] == "bad_id" and run.cases["newline"].devices[0] in r["topic"] + str(payload_of(r))
    ]
    assert len(bad) == 1, bad


def test_a_board_that_rebooted_12_times_re_sending_its_oldest_boot_is_counted_once(run: Run) -> None:
    assert_exact(run, "boots")


def test_a_boot_with_351_gaps_filled_later_keeps_all_702_readings(run: Run) -> None:
    assert_exact(run, "gaps")


def test_a_conflicting_duplicate_keeps_the_first_reading_and_goes_to_the_dlq(run: Run) -> None:
    assert_exact(run, "dups")
    case = run.cases["dups"]
    first = case.good[1]
    rid = contract.reading_id(first["device"], first["boot"], first["seq"])
    stored = readings_store.find(readings_store.collection(run.rig.db), [rid]).get(rid)
    assert stored is not None and stored["temperature"] == first["temperature"]
    conflicts = [r for r in run.dlq if r["reason"] == "conflicting_duplicate"]
    assert len(conflicts) == 1, [r["reason"] for r in run.dlq]
    assert json.loads(payload_of(conflicts[0]))["temperature"] == run.conflict["temperature"]
    assert conflicts[0]["source"]["topic"] == run.rig.source
    # An identical copy and a copy re-stamped by the gateway (time_valid false) are plain duplicates.
    assert not [
        r for r in run.dlq if r["reason"] not in ("conflicting_duplicate",) and case.devices[0] in r["topic"]
    ]


def test_corrupted_stored_windows_are_rebuilt_from_the_readings_and_the_dlq_keeps_them(run: Run) -> None:
    assert_exact(run, "corrupt")
    case = run.cases["corrupt"]
    corrupted = [r for r in run.dlq if r["reason"] == "corrupt_window"]
    ids = {json.loads(payload_of(r))["_id"] for r in corrupted}
    assert ids == {
        *(contract.window_id(d, "tumbling", 2, B) for d in case.devices),
        contract.window_id(case.place, "tumbling", 2, B),
    }


def test_the_worker_survived_the_script(run: Run) -> None:
    assert run.worker.proc is not None and run.worker.proc.poll() is None
    assert committed_to_end(run.rig)
