"""Outage replays on the real stack (Kafka + the MongoDB-wire server): a board offline for a while keeps
its readings in its outbox and replays them in order on reconnect, in a place whose other boards stayed
online. Afterwards every sensor and place window, tumbling and hopping, must equal the oracle over all
distinct readings (tests/backend/conftest.py); the windows the replay reached are amendments.

Timestamps are scripted (a fixed event-time origin), so six hours of outage take seconds; the readings
are produced in the order the broker would deliver them: the online boards as they go, the offline
board's outbox at its reconnect.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from iot import contract, readings_store
from iot.harness.oracle import BOOKKEEPING
from tests.support import unique, wait_for

from .conftest import (
    BASE_TS,
    GRACE_MS,
    SCOPES,
    TUMBLING_MS,
    BackendRig,
    as_comparable,
    assert_windows_equal,
    expected_windows,
    iot_windows,
    make_reading,
)

pytestmark = pytest.mark.integration
HOUR_MS = 3_600_000


@dataclass
class Script:
    place: str
    online: list[str]
    offline: str
    order: list[dict[str, Any]]  # as produced, duplicates included
    outage: list[dict[str, Any]]  # the offline board's readings taken while offline
    reconnect: int  # index in `order` where the offline board comes back

    @property
    def devices(self) -> list[str]:
        return [*self.online, self.offline]


def outage_script(
    period_ms: int,
    before_ms: int,
    outage_ms: int,
    after_ms: int,
    reboot: bool = False,
    live_first: bool = False,
    resend: int = 0,
) -> Script:
    """Two online boards and one offline for `outage_ms`, one reading per `period_ms` each.
    reboot: the offline board restarts halfway through the outage (boot + 1, seq from 0, outbox kept).
    live_first: on reconnect it publishes its current reading before draining the outbox.
    resend: the first `resend` outbox readings are sent twice (an ack lost: de-duplicated downstream)."""
    place = unique("pl")
    online = [unique("on0"), unique("on1")]
    x = unique("off")
    n = (before_ms + outage_ms + after_ms) // period_ms
    down, up = before_ms // period_ms, (before_ms + outage_ms) // period_ms
    boot, seq = 0, 0
    xs = []
    for k in range(n):
        if reboot and boot == 0 and k >= (down + up) // 2:
            boot, seq = 1, 0
        xs.append(make_reading(place, x, seq, BASE_TS + k * period_ms, boot=boot))
        seq += 1
    order: list[dict[str, Any]] = []
    reconnect = 0
    for k in range(n):
        order += [make_reading(place, d, k, BASE_TS + k * period_ms) for d in online]
        if k < down:
            order.append(xs[k])
        elif k == up:
            reconnect = len(order)
            outbox = xs[down:up]
            order += [xs[k], *outbox] if live_first else [*outbox, xs[k]]
            order += outbox[:resend]
        elif k > up:
            order.append(xs[k])
    return Script(place, online, x, order, xs[down:up], reconnect)


def produce(
    rig: BackendRig,
    s: Script,
    partition_of: dict[str, int] | None = None,
    tumbling_ms: int = TUMBLING_MS,
    grace_ms: int = GRACE_MS,
) -> None:
    """Produce as the fleet would deliver it in real time: what came before the reconnect has been
    processed by the time the outbox arrives (Kafka orders nothing across partitions, so producing
    all at once would let the backend see the outbox before the online boards' readings)."""
    before = s.order[: s.reconnect]
    rig.produce(before, partition_of)
    # Produced at once, these are a backlog: the place stage holds its windows until every source
    # partition's input passed them. In real time they would be final by the reconnect; so are the
    # ones event time alone closes (by the last of them) before the outbox comes.
    top = max(r["ts"] for r in before)
    closable = sum(1 for r in before if r["ts"] - r["ts"] % tumbling_ms + tumbling_ms + grace_ms <= top)

    def processed() -> bool:
        docs = list(
            rig.db[contract.COLL_PLACE_WINDOWS].find(
                {"place": s.place, "kind": "tumbling"}, {"count": 1, "final": 1, "end": 1}
            )
        )
        final = sum(
            d["count"] for d in docs if d["final"] and int(d["end"].timestamp() * 1000) + GRACE_MS <= top
        )
        return sum(d["count"] for d in docs) == len(before) and final >= closable

    wait_for(
        processed, 600, f"the {len(before)} readings before the reconnect in the place windows", interval=0.3
    )
    rig.produce(s.order[s.reconnect :], partition_of)


def settle(rig: BackendRig, s: Script, extra: int = 0, **sizes: int) -> dict[str, dict[str, dict[str, Any]]]:
    """Wait until MongoDB holds every distinct reading (and `extra` more) and every oracle window
    final; return both scopes' oracles."""
    distinct = {contract.reading_id(r["device"], r["boot"], r["seq"]) for r in s.order}
    wait_for(
        lambda: readings_store.count(readings_store.collection(rig.db), s.devices) == len(distinct) + extra,
        600,  # generous: the 6 h replay's amendments are upserts, slow on FerretDB under load
        f"{len(distinct)} distinct readings in MongoDB",
        interval=0.5,
    )
    expected = {}
    for scope, coll in SCOPES:
        want = expected[coll] = expected_windows(s.order, scope, **sizes)

        def final(c: str = coll, w: dict[str, Any] = want) -> bool:
            ids = list(w)
            n = 0
            for i in range(0, len(ids), 500):
                n += rig.db[c].count_documents({"_id": {"$in": ids[i : i + 500]}, "final": True})
            return n == len(ids)

        wait_for(final, 600, f"{len(want)} final documents in {coll}", interval=0.5)
    return expected


def late_records(rig: BackendRig, s: Script) -> list[dict[str, Any]]:
    topics = {contract.reading_topic(s.place, d) for d in s.devices}
    records = [json.loads(v) for _, v in rig.read_output(contract.TOPIC_DLQ, timeout=10)]
    return [r for r in records if r["topic"] in topics and r["reason"] == contract.REASON_LATE]


def figures(rig: BackendRig, s: Script, label: str) -> dict[str, Any]:
    """What the run did, for the issue's closing note (printed; -s shows it)."""
    out: dict[str, Any] = {"case": label, "produced": len(s.order), "outage_readings": len(s.outage)}
    out["distinct"] = readings_store.count(readings_store.collection(rig.db), s.devices)
    for coll in (contract.COLL_SENSOR_WINDOWS, contract.COLL_PLACE_WINDOWS):
        docs = list(rig.db[coll].find({}, {"count": 1, "revision": 1, "late_count": 1}))
        out[coll] = {
            "windows": len(docs),
            "amended": sum(1 for d in docs if d["revision"] > 0),
            "created_by_replay": sum(1 for d in docs if d["late_count"] == d["count"] > 0),
            "late_readings_counted": sum(d["late_count"] for d in docs),
            "max_revision": max((d["revision"] for d in docs), default=0),
        }
    out["dlq_late"] = len(late_records(rig, s))
    print(f"\nFIGURES {json.dumps(out)}")
    return out


def check_bookkeeping(rig: BackendRig) -> None:
    """revision counts amendments; late_count counts readings that came after the window was final."""
    for coll in (contract.COLL_SENSOR_WINDOWS, contract.COLL_PLACE_WINDOWS):
        for d in rig.db[coll].find():
            assert 0 <= d["late_count"] <= d["count"], d["_id"]
            if d["late_count"] == 0:
                assert d["revision"] == 0, d["_id"]
            elif d["late_count"] < d["count"]:
                assert d["revision"] >= 1, f"{d['_id']} took late readings but was not amended"


# --- one board offline for 60 s; then a reading past the allowed lateness -----------------------------
@dataclass
class Run60:
    rig: BackendRig
    script: Script
    expected: dict[str, dict[str, dict[str, Any]]]
    figures: dict[str, Any]
    before_late: dict[str, dict[str, dict[str, Any]]]
    late: dict[str, Any]


@pytest.fixture(scope="module")
def run60(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run60]:
    rig = BackendRig(tmp_path_factory.mktemp("replay60"))
    try:
        s = outage_script(1000, 30_000, 60_000, 30_000, resend=10)
        worker = rig.worker()
        produce(rig, s)
        expected = settle(rig, s)
        stats = figures(rig, s, "offline 60 s, 1 Hz, windows 2 s / 4 s every 2 s")
        assert worker.metrics().get('iot_backend_amended_readings_total{scope="place"}', 0) > 0
        # Two days before the first window: further behind every watermark than the allowed lateness.
        before = {c: rig.docs(c) for c in (contract.COLL_SENSOR_WINDOWS, contract.COLL_PLACE_WINDOWS)}
        late = make_reading(s.place, s.offline, 10_000, BASE_TS - 2 * 24 * HOUR_MS)
        rig.produce([late])
        wait_for(lambda: len(late_records(rig, s)) >= 2, 60, "the late reading in the DLQ for both scopes")
        yield Run60(rig, s, expected, stats, before, late)
    finally:
        rig.close()


def test_offline_60s_every_sensor_window_equals_the_oracle(run60: Run60) -> None:
    assert_windows_equal(
        run60.rig, run60.expected[contract.COLL_SENSOR_WINDOWS], contract.COLL_SENSOR_WINDOWS
    )


def test_offline_60s_every_place_window_equals_the_oracle_and_was_amended(run60: Run60) -> None:
    assert_windows_equal(run60.rig, run60.expected[contract.COLL_PLACE_WINDOWS], contract.COLL_PLACE_WINDOWS)
    check_bookkeeping(run60.rig)
    place = run60.figures[contract.COLL_PLACE_WINDOWS]
    outage = len(run60.script.outage)
    # The whole outage but its last seconds (whose windows the grace still held open) came late, in
    # 1 tumbling + 2 hopping windows each. (After the reconnect the rest is produced at once, and Kafka
    # orders nothing across the boards' partitions, so a few more can arrive after their window.)
    assert place["late_readings_counted"] >= 3 * (outage - 4)
    assert place["amended"] >= outage // 2


def test_offline_60s_amendments_are_produced_again_with_the_same_id(run60: Run60) -> None:
    stored = run60.rig.docs(contract.COLL_PLACE_WINDOWS)
    latest: dict[str, dict[str, Any]] = {}
    revisions: dict[str, set[int]] = {}
    for _, v in run60.rig.read_output(contract.TOPIC_WINDOWS_PLACE, timeout=10):
        doc = json.loads(v)
        if doc["_id"] in stored:
            revisions.setdefault(doc["_id"], set()).add(doc["revision"])
            if doc["_id"] not in latest or doc["revision"] >= latest[doc["_id"]]["revision"]:
                latest[doc["_id"]] = doc
    assert set(latest) == set(stored)
    for i, doc in latest.items():
        mine = {k: v for k, v in stored[i].items() if k not in BOOKKEEPING | {"start", "end"}}
        assert {k: v for k, v in doc.items() if k in mine} == mine, i
        assert doc["revision"] == stored[i]["revision"]
    assert any(len(r) > 1 for r in revisions.values()), "no window was produced in two revisions"


def test_iot_windows_marks_amended_windows(run60: Run60) -> None:
    done = iot_windows(run60.rig.db_name, "--place", run60.script.place, "--last", "100000d")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split()[-3:] == ["state", "rev", "late"]
    stored = run60.rig.docs(contract.COLL_PLACE_WINDOWS)
    amended = sum(1 for d in stored.values() if d["revision"] > 0 or d["late_count"] > 0)
    marked = [r.split() for r in rows if r.split()[-3] == "amended"]
    assert amended > 0 and len(marked) == min(amended, 200)  # iot windows shows the newest 200
    assert all(int(r[-2]) + int(r[-1]) > 0 for r in marked)
    assert all(r.split()[-3] == "final" for r in rows if r.split()[-3] != "amended")


def test_reading_past_allowed_lateness_goes_to_dlq_late_and_changes_no_window(run60: Run60) -> None:
    late = late_records(run60.rig, run60.script)
    payloads = [json.loads(base64.b64decode(r["payload_b64"])) for r in late]
    assert sorted(p["seq"] for p in payloads) == [10_000, 10_000]  # once per scope, nothing else
    assert run60.figures["dlq_late"] == 0
    for coll, before in run60.before_late.items():
        after = run60.rig.docs(coll)
        assert after == before, f"{coll} changed"
    rid = contract.reading_id(run60.late["device"], 0, 10_000)
    assert rid in readings_store.find(
        readings_store.collection(run60.rig.db), [rid]
    )  # kept in readings, as the contract says


# --- six hours, a reboot while offline, and a board that publishes live before its outbox -----------
def test_offline_six_hours_every_window_equals_the_oracle(rig: BackendRig) -> None:
    # Production-like windows (60 s; 300 s every 60 s), a reading every 30 s: 6 h = 720 outbox readings.
    sizes = {"tumbling_ms": 60_000, "hopping_ms": 300_000, "step_ms": 60_000}
    rig.extra_env.update(
        IOT_WINDOW_TUMBLING_S="60",
        IOT_WINDOW_HOPPING_S="300",
        IOT_WINDOW_HOP_STEP_S="60",
        IOT_WINDOW_GRACE_S="10",
    )
    s = outage_script(30_000, 10 * 60_000, 6 * HOUR_MS, 10 * 60_000, live_first=True)
    rig.worker()
    produce(rig, s, tumbling_ms=60_000, grace_ms=10_000)
    expected = settle(rig, s, **sizes)
    for coll, want in expected.items():
        assert_windows_equal(rig, want, coll)
    check_bookkeeping(rig)
    stats = figures(rig, s, "offline 6 h, every 30 s, windows 60 s / 300 s every 60 s, live reading first")
    assert stats["dlq_late"] == 0
    # Its live reading moved the board's own event time 6 h on: the outbox created its sensor windows.
    assert stats[contract.COLL_SENSOR_WINDOWS]["created_by_replay"] >= 6 * 60 - 5
    assert stats[contract.COLL_PLACE_WINDOWS]["amended"] >= 6 * 60


def test_board_rebooting_while_offline_replays_both_boots_into_the_oracle(rig: BackendRig) -> None:
    s = outage_script(1000, 20_000, 40_000, 20_000, reboot=True, live_first=True, resend=15)
    assert {r["boot"] for r in s.outage} == {0, 1}
    worker = rig.worker()
    produce(rig, s)
    expected = settle(rig, s)
    for coll, want in expected.items():
        assert_windows_equal(rig, want, coll)
    check_bookkeeping(rig)
    m = worker.metrics()
    assert m.get('iot_backend_duplicates_total{scope="sensor"}', 0) == 15
    # The sensor scope forwards each distinct reading once: the place scope sees no duplicate.
    assert m.get('iot_backend_duplicates_total{scope="place"}', 0) == 0
    assert late_records(rig, s) == []


# --- kill -9 in the middle of the amendments ------------------------------------------------------
def _run_to_the_end(rig: BackendRig, s: Script, kill_mid_amendment: bool) -> tuple[dict[str, Any], int]:
    """Run the script with every board on partition 0 (one input order, so which readings come late
    is the same in every run) and no idle close (event time alone closes windows: a flush reading an
    hour later); optionally kill -9 the worker once amendments are being written."""
    rig.extra_env.update(
        IOT_BACKEND_IDLE_TIMEOUT_S="600",
        IOT_BACKEND_BATCH_MAX="10",  # many small batches: the amendments take a while to write
        IOT_BACKEND_COMMIT_INTERVAL_S="60",  # no offset commit before the kill: everything replays
    )
    on_zero = dict.fromkeys(s.devices, 0)
    worker = rig.worker()
    produce(rig, s, on_zero)
    flush = [make_reading(s.place, d, 100_000, BASE_TS + HOUR_MS) for d in s.devices]
    rig.produce(flush, on_zero)
    amended_at_kill = -1
    if kill_mid_amendment:
        coll = rig.db[contract.COLL_PLACE_WINDOWS]
        wait_for(lambda: coll.count_documents({"late_count": {"$gt": 0}}) > 0, 60, "amendments written", 0.05)
        worker.kill()
        amended_at_kill = coll.count_documents({"late_count": {"$gt": 0}})
        rig.restart(worker)
    expected = settle(rig, s, extra=len(flush))
    docs = {}
    for coll, want in expected.items():
        stored = rig.docs(coll)
        assert {i: as_comparable(stored[i]) for i in want} == want, coll
        docs.update({i: stored[i] for i in want})
    return docs, amended_at_kill


def test_kill_9_while_amending_gives_the_documents_of_an_uninterrupted_run(
    rig: BackendRig, tmp_path: Any
) -> None:
    s = outage_script(1000, 20_000, 300_000, 20_000, reboot=True)
    clean, _ = _run_to_the_end(rig, s, kill_mid_amendment=False)
    (tmp_path / "crash").mkdir()
    other = BackendRig(tmp_path / "crash")
    try:
        crashed, amended_at_kill = _run_to_the_end(other, s, kill_mid_amendment=True)
        total_amended = sum(1 for d in clean.values() if d["late_count"] > 0 and "devices" in d)
        print(f"\nFIGURES kill -9 with {amended_at_kill} of {total_amended} place windows amended")
        assert 0 < amended_at_kill < total_amended, "the kill did not land in the middle of the amendments"
        assert other.workers[0].metrics().get('iot_backend_duplicates_total{scope="place"}', 0) > 0
    finally:
        other.close()
    # Same documents: figures, devices, final, late_count. Only `revision` may differ: it counts the
    # writes of an amended document, which depend on where batches were cut (and a crash cuts one).
    # `offset` is the input position of the last reading counted: after a crash the sensor agent
    # forwards its replay again, so the same readings sit at later offsets of the place topic.
    ignore = {"updated_at", "revision", "offset"}
    assert set(crashed) == set(clean)
    for i, doc in clean.items():
        differ = {
            k for k in doc.keys() | crashed[i].keys() if k not in ignore and doc.get(k) != crashed[i].get(k)
        }
        assert not differ, f"{i}: {[(k, doc.get(k), crashed[i].get(k)) for k in differ]}"
        assert (crashed[i]["revision"] > 0) == (doc["revision"] > 0), i
