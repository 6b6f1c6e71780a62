"""The Mongo sink on the real MongoDB-wire server: window writes go by insert and `{_id}`-only statements,
and still a final document is never overwritten by an open or a replayed final write, whichever sink
(a restarted worker's, a new owner's) writes it; amendments read back what was stored."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pymongo import MongoClient

from backend.engine import Item, ScopeEngine
from backend.metrics import BackendMetrics
from backend.mongo_sink import MongoSink, is_ferretdb
from backend.records import PLACE, SENSOR
from backend.windows import specs_from_seconds
from iot import contract
from iot.harness import payloads
from iot.harness.stack import private_ferretdb
from tests.support import unique

from .conftest import MONGO

pytestmark = pytest.mark.integration

T0 = 1_750_000_000_000


def doc(start: int, count: int, final: bool, device: str = "d1") -> dict[str, Any]:
    return {
        "_id": contract.window_id(device, "tumbling", 2, start),
        "device": device,
        "place": "p1",
        "kind": "tumbling",
        "size_s": 2,
        "step_s": 2,
        "start": start,
        "end": start + 2000,
        "count": count,
        "final": final,
        "updated_at": T0,
    }


@pytest.fixture
def db_uri() -> Iterator[str]:
    name = unique("sink").replace("-", "_")
    yield f"{MONGO}/{name}"
    client: MongoClient[dict[str, Any]] = MongoClient(MONGO)
    client.drop_database(name)
    client.close()


def stored(uri: str) -> dict[str, dict[str, Any]]:
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        coll = client.get_default_database()[contract.COLL_SENSOR_WINDOWS]
        return {d["_id"]: d for d in coll.find()}
    finally:
        client.close()


def test_open_then_final_then_stale_writes_from_any_sink_leave_the_final_document(db_uri: str) -> None:
    a, b = MongoSink(db_uri), MongoSink(db_uri)
    try:
        a.write_windows(SENSOR, [doc(T0, 1, False), doc(T0 + 2000, 1, False)])
        a.write_windows(SENSOR, [doc(T0, 2, False)])  # rewritten by the sink that wrote it open
        a.write_windows(SENSOR, [doc(T0, 3, True)])
        # A restarted worker (fresh sink) replays: an open and a final write of a window already final.
        b.write_windows(SENSOR, [doc(T0, 2, False), doc(T0 + 2000, 5, False)])
        b.write_windows(SENSOR, [doc(T0, 9, True)])
        got = stored(db_uri)
        assert (got[doc(T0, 0, True)["_id"]]["count"], got[doc(T0, 0, True)["_id"]]["final"]) == (3, True)
        # The open document the other sink wrote is not final: the new writer replaces it.
        assert got[doc(T0 + 2000, 0, False)["_id"]]["count"] == 5
        # A rebalance: the window goes back to a, and b, which wrote it open, is told to forget.
        a.forget()
        b.forget()
        a.write_windows(SENSOR, [doc(T0 + 2000, 4, True)])
        b.write_windows(SENSOR, [doc(T0 + 2000, 1, False)])  # b's stale batch, after the rebalance
        got = stored(db_uri)
        assert got[doc(T0 + 2000, 0, False)["_id"]]["final"] is True
    finally:
        a.close()
        b.close()


def _counts(registry: CollectorRegistry, name: str) -> dict[str, float]:
    """Observations per collection of one of the backend's MongoDB latency histograms."""
    return {
        s.labels["collection"]: s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == f"{name}_count"
    }


def test_on_ferretdb_the_sink_creates_no_index_it_would_pay_for_on_every_write(db_uri: str) -> None:
    sink = MongoSink(db_uri)
    sink.ensure_indexes()
    sink.write_readings([Item(payloads.reading("p1", "d-ix", 0, ts=T0, received_at=T0 + 5), 0, 0)])
    sink.write_windows(SENSOR, [doc(T0, 1, True, device="d-ix")])
    client: MongoClient[dict[str, Any]] = MongoClient(db_uri)
    try:
        db = client.get_default_database()
        for coll in (contract.COLL_READINGS, contract.COLL_SENSOR_WINDOWS, contract.COLL_PLACE_WINDOWS):
            # The stack's server is FerretDB: only `_id`'s index (place_windows, not written to, may not
            # exist yet), the one look-up it serves by index.
            assert set(db[coll].index_information()) <= {"_id_"}, coll
    finally:
        client.close()
        sink.close()


def test_ferretdb_and_mongodb_are_told_apart_by_their_build_info() -> None:
    # MongoDB 7.0's buildInfo (the keys that matter) and FerretDB 1.24's, as the stack's answers.
    assert not is_ferretdb({"version": "7.0.14", "gitVersion": "ce59cfc", "modules": [], "ok": 1.0})
    assert is_ferretdb({"version": "7.0.42", "ferretdbFeatures": {"aggregationStages": []}, "ok": 1.0})


def test_a_look_up_is_timed_as_a_read_and_only_writes_as_writes(db_uri: str) -> None:
    """iot_backend_mongo_write_seconds is the duration of one bulk write: a restarted worker's look-up
    of a window it could not insert (is it final?) and a de-duplication look-up are reads, in
    iot_backend_mongo_read_seconds. Both histograms' series are the ones there from the start."""
    registry = CollectorRegistry()
    before = BackendMetrics(registry)
    first = MongoSink(db_uri)
    sink = MongoSink(db_uri, before)
    try:
        first.write_windows(SENSOR, [doc(T0, 3, True)])
        written = set(_counts(registry, "iot_backend_mongo_write_seconds"))
        read = set(_counts(registry, "iot_backend_mongo_read_seconds"))
        # One insert_many (the document exists), one find_one (it is final: left as it is), no replace.
        sink.write_windows(SENSOR, [doc(T0, 2, False)])
        sink.find_readings([contract.reading_id("d1", 1, 0)])
        writes = _counts(registry, "iot_backend_mongo_write_seconds")
        reads = _counts(registry, "iot_backend_mongo_read_seconds")
        assert writes[contract.COLL_SENSOR_WINDOWS] == 1 and sum(writes.values()) == 1, writes
        assert reads[contract.COLL_SENSOR_WINDOWS] == 1 and reads[contract.COLL_READINGS] == 1, reads
        assert (set(writes), set(reads)) == (written, read)
        assert stored(db_uri)[doc(T0, 0, True)["_id"]]["count"] == 3
    finally:
        first.close()
        sink.close()


def test_amendment_base_is_the_stored_document_from_memory_or_from_mongodb(db_uri: str) -> None:
    writer = MongoSink(db_uri)
    try:
        final = doc(T0, 3, True)
        writer.write_windows(SENSOR, [final])
        amended = {**doc(T0, 4, True), "revision": 1, "late_count": 1}
        writer.write_amended(SENSOR, [amended])
        ids = [final["_id"], doc(T0 + 2000, 0, True)["_id"]]
        from_memory = writer.load_windows(SENSOR, ids)
        fresh = MongoSink(db_uri)
        try:
            from_mongo = fresh.load_windows(SENSOR, ids)
        finally:
            fresh.close()
        assert set(from_memory) == set(from_mongo) == {final["_id"]}
        assert from_memory[final["_id"]] == from_mongo[final["_id"]] == amended
    finally:
        writer.close()


def test_open_windows_are_not_rewritten_while_the_input_is_a_backlog() -> None:
    eng = ScopeEngine(SENSOR, specs_from_seconds(2, 4, 2), 1000, 60_000, {}.get, open_write_ms=500)
    old = {
        "v": 1,
        "device": "d1",
        "place": "p1",
        "boot": 0,
        "seq": 0,
        "ts": T0,
        "time_valid": True,
        "temperature": 20.0,
        "humidity": None,
        "pressure": None,
        "luminosity": None,
        "fw": "1",
        "received_at": T0,
    }
    now = T0 + 3_600_000  # an hour behind
    assert eng.process([Item(old, 0, 0)], now).open_docs == []
    assert eng.expire(now + 1000, {0}, []).open_docs == []
    live = {**old, "seq": 1, "ts": T0 + 100, "received_at": now + 2000}
    assert {d["count"] for d in eng.process([Item(live, 0, 1)], now + 2000).open_docs} == {2}


@pytest.fixture(scope="module")
def private_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A FerretDB of its own: before the fix the next test wedged the server's database for good."""
    with private_ferretdb(tmp_path_factory.mktemp("ferretdb")) as stack:
        yield stack.mongo_uri


def test_window_replaces_of_both_scopes_at_once_do_not_wedge_ferretdb(private_uri: str) -> None:
    # The sensor and the place scope write from two threads into one database. FerretDB holds a pool
    # connection per statement of an update command until the command ends (pool of 100): two commands
    # of 50 at once waited for ever for a 101st (before: NetworkTimeout, then the database dead).
    sink = MongoSink(private_uri, timeout_ms=3000)
    docs = {
        scope: [{**doc(T0 + i * 2000, 1, False, device=scope), "device": scope} for i in range(400)]
        for scope in (SENSOR, PLACE)
    }
    errors: list[BaseException] = []

    def rewrite(scope: str) -> None:
        try:
            for count in range(1, 11):  # written open, then rewritten open: {_id} replaces
                sink.write_windows(scope, [{**d, "count": count} for d in docs[scope]])
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=rewrite, args=(scope,)) for scope in docs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        db = sink.db
        for scope, coll in ((SENSOR, contract.COLL_SENSOR_WINDOWS), (PLACE, contract.COLL_PLACE_WINDOWS)):
            assert db[coll].find_one({"_id": docs[scope][-1]["_id"]})["count"] == 10
    finally:
        sink.close()
