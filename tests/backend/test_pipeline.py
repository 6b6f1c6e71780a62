"""One scripted run of the backend on the real stack (Kafka + the MongoDB-wire server), then each test
checks one behaviour of its outputs against an independent oracle (tests/backend/conftest.py).

Script (event time from a fixed origin B, windows: tumbling 2 s, hopping 4 s every 2 s, grace 2 s):
  A. two places, three devices, readings across a window boundary, out of order within grace,
     null metrics, duplicates, and one malformed record;
  B. one reading per device 7 s later: the watermarks pass every window of phase A;
  C. readings for windows already final (late) and another duplicate; then every device goes quiet
     and only the idle timeout can close the windows of phase B.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from iot import contract, readings_store
from tests.support import unique, wait_for

from .conftest import (
    BASE_TS,
    SCOPES,
    BackendRig,
    Worker,
    as_comparable,
    assert_windows_equal,
    expected_windows,
    iot_windows,
    make_reading,
    wait_all_final,
)

pytestmark = pytest.mark.integration
B = BASE_TS


@dataclass
class Run:
    rig: BackendRig
    worker: Worker
    counted: list[dict[str, Any]]
    late: list[dict[str, Any]]
    phase_b: list[dict[str, Any]]
    marker: str
    duplicates: int


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    rig = BackendRig(tmp_path_factory.mktemp("pipeline"))
    # Phase C's readings lie 6.6 s and 7.5 s behind their keys' watermarks: past a 5 s allowed
    # lateness they are late (DLQ). Amendments within it: tests/backend/test_replay.py.
    rig.extra_env["IOT_WINDOW_ALLOWED_LATENESS_S"] = "5"
    try:
        yield _script(rig)
    finally:
        rig.close()


def _script(rig: BackendRig) -> Run:
    p1, p2 = unique("p1"), unique("p2")
    a, b, c = unique("da"), unique("db"), unique("dc")
    worker = rig.worker()
    phase_a = [
        make_reading(p1, a, 0, B + 1000),
        make_reading(p1, a, 1, B + 1600, temperature=None),
        make_reading(p1, a, 2, B + 1300),  # out of order, within grace
        make_reading(p1, a, 3, B + 2100),
        make_reading(p1, a, 4, B + 2900, luminosity=None),
        make_reading(p1, b, 0, B + 1100, temperature=-3.25),
        make_reading(p1, b, 1, B + 2000),  # a window's start is inclusive
        make_reading(p1, b, 2, B + 2500),
        make_reading(p1, b, 3, B + 1999),  # the previous window's end is exclusive; out of order
        make_reading(p2, c, 0, B + 1200),
        make_reading(p2, c, 1, B + 2200),
        make_reading(p2, c, 2, B + 2800, temperature=None, humidity=None, luminosity=None),
    ]
    duplicates = [phase_a[1], phase_a[5]]
    marker = unique("junk")
    rig.produce(phase_a + duplicates)
    rig.produce_raw(b'{"broken": "' + marker.encode(), key=b"junk")

    def count_readings() -> int:
        return readings_store.count(readings_store.collection(rig.db), [a, b, c])

    def place_tumbling_total() -> int:
        docs = rig.docs(contract.COLL_PLACE_WINDOWS).values()
        return sum(d["count"] for d in docs if d["kind"] == "tumbling")

    wait_for(lambda: count_readings() == 12, 60, "12 distinct readings of phase A in MongoDB")
    wait_for(lambda: place_tumbling_total() == 12, 30, "phase A counted in place windows")

    phase_b = [
        make_reading(p1, a, 5, B + 9000),
        make_reading(p1, b, 4, B + 9100),
        make_reading(p2, c, 3, B + 9200),
    ]
    rig.produce(phase_b)
    for scope, coll in SCOPES:
        wait_all_final(rig, expected_windows(phase_a, scope), coll, 30)

    late = [
        make_reading(p1, a, 6, B + 1500, temperature=80.0),
        make_reading(p2, c, 4, B + 2600, temperature=-40.0),
    ]
    rig.produce([*late, phase_a[0]])
    duplicates.append(phase_a[0])
    counted = phase_a + phase_b
    for scope, coll in SCOPES:
        wait_all_final(rig, expected_windows(counted, scope), coll, 60)
    wait_for(lambda: count_readings() == 17, 30, "17 distinct readings in MongoDB")
    return Run(rig, worker, counted, late, phase_b, marker, len(duplicates))


def test_sensor_windows_have_exact_count_mean_min_max(run: Run) -> None:
    assert_windows_equal(run.rig, expected_windows(run.counted, "sensor"), contract.COLL_SENSOR_WINDOWS)


def test_place_windows_have_exact_values_and_list_their_devices(run: Run) -> None:
    expected = expected_windows(run.counted, "place")
    assert_windows_equal(run.rig, expected, contract.COLL_PLACE_WINDOWS)
    assert any(len(d["devices"]) == 2 for d in expected.values())


def test_hopping_windows_overlap_and_count_a_reading_in_each(run: Run) -> None:
    docs = run.rig.docs(contract.COLL_SENSOR_WINDOWS)
    device = run.counted[0]["device"]
    hopping = sorted(
        (d for d in docs.values() if d["device"] == device and d["kind"] == "hopping"),
        key=lambda d: d["start"],
    )
    tumbling_total = sum(
        d["count"] for d in docs.values() if d["device"] == device and d["kind"] == "tumbling"
    )
    assert sum(d["count"] for d in hopping) == 2 * tumbling_total  # size 4 s / step 2 s: two windows each


def test_late_readings_go_to_dlq_and_leave_final_windows_unchanged(run: Run) -> None:
    records = [json.loads(v) for _, v in run.rig.read_output(contract.TOPIC_DLQ)]
    late = {
        (r["topic"], json.loads(base64.b64decode(r["payload_b64"]))["seq"])
        for r in records
        if r["reason"] == "late"
    }
    expected = {(contract.reading_topic(r["place"], r["device"]), r["seq"]) for r in run.late}
    assert late == expected
    m = run.worker.metrics()
    assert m['iot_backend_late_total{scope="sensor"}'] == 2
    assert m['iot_backend_late_total{scope="place"}'] == 2
    # the windows equal the oracle built without the late readings (see the two tests above)
    for r in run.late:
        wid = contract.window_id(r["device"], "tumbling", 2, r["ts"] - r["ts"] % 2000)
        assert run.rig.docs(contract.COLL_SENSOR_WINDOWS)[wid]["temperature"]["max"] != r["temperature"]


def test_duplicates_are_counted_once_and_reported_in_metrics(run: Run) -> None:
    m = run.worker.metrics()
    assert m['iot_backend_duplicates_total{scope="sensor"}'] == run.duplicates
    # The sensor scope forwards each distinct reading once: the place scope sees no duplicate.
    assert m.get('iot_backend_duplicates_total{scope="place"}', 0) == 0
    place_readings = len({(r["device"], r["boot"], r["seq"]) for r in run.counted + run.late})
    assert m['iot_backend_readings_total{scope="place"}'] == place_readings


def test_idle_devices_last_windows_are_final(run: Run) -> None:
    # Nothing came after phase B: only the idle timeout can have closed these windows.
    ids = expected_windows(run.phase_b, "sensor")
    docs = run.rig.docs(contract.COLL_SENSOR_WINDOWS)
    assert ids and all(docs[i]["final"] for i in ids)


def test_every_distinct_reading_is_stored_once_with_bson_dates(run: Run) -> None:
    devices = sorted({r["device"] for r in run.counted})
    stored = list(readings_store.every_copy(readings_store.collection(run.rig.db), devices))
    ids = [d["_id"] for d in stored]
    wanted = {contract.reading_id(r["device"], r["boot"], r["seq"]) for r in run.counted + run.late}
    assert sorted(ids) == sorted(wanted)
    doc = stored[0]
    assert doc["ts"].tzinfo is not None and doc["received_at"].tzinfo is not None


def test_final_windows_are_produced_to_kafka_as_in_mongodb(run: Run) -> None:
    for topic, coll, key in (
        (contract.TOPIC_WINDOWS_SENSOR, contract.COLL_SENSOR_WINDOWS, "device"),
        (contract.TOPIC_WINDOWS_PLACE, contract.COLL_PLACE_WINDOWS, "place"),
    ):
        stored = run.rig.docs(coll)
        mine = {i: {**as_comparable(d), "revision": d["revision"]} for i, d in stored.items()}
        produced: dict[str, dict[str, Any]] = {}
        for k, v in run.rig.read_output(topic):
            doc = json.loads(v)
            if doc["_id"] in mine:
                assert k.decode() == doc[key]
                # A consumer keeps the highest revision per _id (the contract's rule).
                if doc["_id"] not in produced or doc["revision"] >= produced[doc["_id"]]["revision"]:
                    produced[doc["_id"]] = {**as_comparable(doc), "revision": doc["revision"]}
        assert produced == mine


def test_malformed_record_goes_to_dlq_and_backend_keeps_running(run: Run) -> None:
    records = [json.loads(v) for _, v in run.rig.read_output(contract.TOPIC_DLQ)]
    junk = [r for r in records if run.marker.encode() in base64.b64decode(r["payload_b64"])]
    assert [r["reason"] for r in junk] == ["malformed_json"]
    assert run.worker.proc is not None and run.worker.proc.poll() is None


def test_metrics_expose_latest_final_window_means(run: Run) -> None:
    m = run.worker.metrics()
    r = run.phase_b[0]
    key = (
        f'iot_backend_sensor_window_mean{{device="{r["device"]}",metric="pressure",'
        f'place="{r["place"]}",window="tumbling_2s"}}'
    )
    assert m[key] == r["pressure"]
    assert m['iot_backend_windows_finalized_total{kind="tumbling",scope="sensor"}'] > 0


def test_iot_windows_prints_recent_windows_of_a_place(run: Run) -> None:
    place = run.counted[0]["place"]
    done = iot_windows(run.rig.db_name, "--place", place, "--last", "100000d")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:5] == ["key", "kind", "size", "start", "(UTC)"]
    rows = [ln for ln in lines[1:] if ln.startswith(place)]
    assert len(rows) == len(expected_windows([r for r in run.counted if r["place"] == place], "place"))
