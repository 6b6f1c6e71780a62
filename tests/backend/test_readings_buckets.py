"""The `readings` collection as buckets (contract revision 4) on the real MongoDB-wire server: the
de-duplication's look-ups stay exact, a replay after a crash stores nothing twice, revision 3 documents
read as they did, and `iot readings migrate` (iot/readings_migration.py) rewrites them, killed with
SIGKILL anywhere, without losing or doubling a reading."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.database import Database

from backend.engine import Item
from backend.mongo_sink import MongoSink, source_code, source_of
from backend.records import PLACE, SENSOR
from iot import contract, readings_migration, readings_store
from iot.harness import payloads
from tests.services import IOT
from tests.support import unique, wait_for

from .conftest import MONGO

pytestmark = pytest.mark.integration

T0 = 1_750_000_000_000
TOPIC = "iot.readings"


def reading(device: str, seq: int, boot: int = 0, place: str = "p1") -> dict[str, Any]:
    ts = T0 + seq * 1000
    return payloads.reading(
        place,
        device,
        seq,
        ts=ts,
        boot=boot,
        temperature=20 + seq / 100,
        humidity=None if seq % 7 == 0 else 40.5,
        pressure=1000.25,
        luminosity=float(seq % 5),
        fw="0.1.0",
        received_at=ts + 300,
    )


def items(readings: list[dict[str, Any]], partition: int = 0, first_offset: int = 0) -> list[Item]:
    return [Item(r, partition, first_offset + i) for i, r in enumerate(readings)]


@pytest.fixture
def db_name() -> Iterator[str]:
    name = unique("buckets").replace("-", "_")
    yield name
    client: MongoClient[dict[str, Any]] = MongoClient(MONGO)
    client.drop_database(name)
    client.close()


@pytest.fixture
def db(db_name: str) -> Iterator[Database[dict[str, Any]]]:
    client: MongoClient[dict[str, Any]] = MongoClient(f"{MONGO}/{db_name}", tz_aware=True)
    yield client.get_default_database()
    client.close()


def held(db: Database[dict[str, Any]]) -> list[str]:
    return sorted(r["_id"] for r in readings_store.every_copy(readings_store.collection(db)))


def test_lookups_are_exact_for_stored_absent_and_neighbouring_identities(
    db_name: str, db: Database[dict[str, Any]]
) -> None:
    sink = MongoSink(f"{MONGO}/{db_name}", source_topic=TOPIC)
    # Two devices, gaps, a second boot, a place change, 1-reading and 64-reading blocks.
    seqs = [*range(0, 150), *range(152, 200), 203, *range(260, 300)]
    batch = [reading("d-a", s, place="p1" if s < 170 else "p2") for s in seqs]
    batch += [reading("d-b", s) for s in range(0, 70)] + [reading("d-a", s, boot=1) for s in range(5)]
    sink.write_readings(items(batch))
    docs = list(readings_store.collection(db).find())
    assert len(docs) < len(batch) / 4, len(docs)  # buckets, not a document per reading
    stored = {contract.reading_id(r["device"], r["boot"], r["seq"]): (r, i) for i, r in enumerate(batch)}
    absent = [contract.reading_id("d-a", 0, s) for s in (150, 151, 200, 201, 202, 204, 259, 300, 5000)]
    absent += [contract.reading_id("d-a", 1, 5), contract.reading_id("d-b", 0, 70), "d-c:0:1"]
    ask = [*stored, *absent]
    random.Random(3).shuffle(ask)
    found = sink.find_readings(ask)
    assert set(found) == set(stored)
    for rid, (r, offset) in stored.items():
        got = found[rid]
        assert source_of(got) == (0, offset), rid
        assert {k: got[k] for k in r} == r, rid  # every field as written, dates back as epoch ms
    assert held(db) == sorted(stored)
    # What a corrupt window is rebuilt from: a key's readings in [start, end), each once.
    window = sink.window_readings(SENSOR, "d-a", T0 + 60_000, T0 + 180_000)
    assert sorted(r["seq"] for r in window if r["boot"] == 0) == [*range(60, 150), *range(152, 180)]
    place = sink.window_readings(PLACE, "p2", T0, T0 + 10**9)
    assert sorted(r["seq"] for r in place) == [*range(170, 200), 203, *range(260, 300)]
    sink.close()


def test_a_replay_cut_elsewhere_stores_nothing_twice_and_the_rest_once(
    db_name: str, db: Database[dict[str, Any]]
) -> None:
    uri = f"{MONGO}/{db_name}"
    batch = [reading("d-r", s) for s in range(100, 220)]
    first = MongoSink(uri, source_topic=TOPIC)
    first.write_readings(items(batch[:90], partition=2, first_offset=1000))  # then "killed"
    # The next owner replays from an older offset, cut elsewhere, and goes on past the first.
    again = MongoSink(uri, source_topic=TOPIC)
    again.write_readings(items(batch[10:50], partition=2, first_offset=1010))
    again.write_readings(items(batch[50:120], partition=2, first_offset=1050))
    assert held(db) == sorted(contract.reading_id("d-r", 0, s) for s in range(100, 220))
    assert readings_store.written_mark(db, TOPIC, 2) == 1119
    assert readings_store.count(readings_store.collection(db), ["d-r"]) == 120
    # Where each reading came from is the first write's, not the replay's (the same records here).
    found = again.find_readings([contract.reading_id("d-r", 0, 150)])
    assert source_of(found["d-r:0:150"]) == (2, 1050)
    first.close()
    again.close()


def _v3(device: str, seq: int, src: int) -> dict[str, Any]:
    r = reading(device, seq, boot=seq // 500)
    doc = dict(r, _id=contract.reading_id(device, r["boot"], seq), src=src)
    doc["ts"] = datetime.fromtimestamp(r["ts"] / 1000, UTC)
    doc["received_at"] = datetime.fromtimestamp(r["received_at"] / 1000, UTC)
    return doc


def _revision_3(db: Database[dict[str, Any]], n_devices: int, per_device: int) -> dict[str, dict[str, Any]]:
    """A revision 3 collection: a document per reading, with gaps, two boots and an odd document."""
    docs = {}
    for d in range(n_devices):
        for seq in range(per_device):
            if seq % 37 == 5:
                continue  # a gap
            doc = _v3(f"m-{d}", seq, source_code(d % 3, d * 10_000 + seq))
            docs[doc["_id"]] = doc
    coll = readings_store.collection(db)
    ordered = list(docs.values())
    random.Random(1).shuffle(ordered)  # stored in arrival order, not grouped
    coll.insert_many(ordered)
    coll.insert_one({"_id": "not-a-reading", "note": "left alone"})
    return docs


def test_revision_3_documents_read_as_before_and_a_replay_does_not_copy_them(
    db_name: str, db: Database[dict[str, Any]]
) -> None:
    docs = _revision_3(db, 2, 80)
    sink = MongoSink(f"{MONGO}/{db_name}", source_topic=TOPIC)
    some = sorted(docs)[:30]
    assert set(sink.find_readings(some)) == set(some)
    assert readings_migration.unmigrated(db)  # what the backend warns about at start
    # A rev-3 backend died after storing these: the migration's marks make the replay look them up.
    readings_migration.migrate(db, chunk=10_000)
    assert not readings_migration.unmigrated(db)
    rows = [docs[rid] for rid in sorted(docs) if rid.startswith("m-0:0:")]
    replay = [
        dict(r, ts=int(r["ts"].timestamp() * 1000), received_at=int(r["received_at"].timestamp() * 1000))
        for r in rows
    ]
    for r in replay:
        del r["_id"], r["src"]
    sink.write_readings(
        [Item(r, *source_of(docs[contract.reading_id(r["device"], 0, r["seq"])])) for r in replay]
    )
    assert held(db) == sorted([*docs, "not-a-reading"])
    sink.close()


MIGRATE = """
import sys
from pymongo import MongoClient
from iot import readings_migration
db = MongoClient(sys.argv[1], tz_aware=True).get_default_database()
done = readings_migration.migrate(db, chunk=int(sys.argv[2]))
print("migrated", done.readings, done.buckets, done.resumed, flush=True)
"""


def test_migration_killed_anywhere_loses_and_doubles_nothing(
    db_name: str, db: Database[dict[str, Any]]
) -> None:
    docs = _revision_3(db, 12, 400)
    uri = f"{MONGO}/{db_name}"
    coll, journal = readings_store.collection(db), db[readings_migration.MIGRATION]
    rng = random.Random(int(os.environ.get("IOT_TEST_SEED", "24")))
    kills = 0

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", MIGRATE, uri, "300"], stdout=subprocess.PIPE, text=True
        )

    # Kill it while a chunk is journaled (mid-chunk: buckets partly in, documents partly deleted), and
    # at random moments; every run after the first finishes the chunk a killed one left.
    for attempt in range(8):
        proc = start()
        if attempt % 2 == 0:
            wait_for(
                lambda p=proc: journal.find_one({"_id": "rev4"}) is not None or p.poll() is not None,
                60,
                "a chunk",
            )
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            time.sleep(rng.uniform(0.2, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(30)
        # Between kills every reading is readable (a killed chunk's maybe twice, until it is finished).
        ids = sorted(r["_id"] for r in readings_store.readings(coll))
        assert ids == [*sorted(docs), "not-a-reading"], (attempt, len(ids), len(docs))
    assert kills >= 4
    proc = start()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert held(db) == sorted([*docs, "not-a-reading"])
    assert journal.count_documents({}) == 0
    left = [d["_id"] for d in coll.find({"n": {"$exists": False}})]
    assert left == ["not-a-reading"]
    for rid, r in readings_store.find(coll, list(docs)).items():
        assert r == docs[rid], rid  # every field, `src` included, as revision 3 stored it
    # Run again: nothing to do.
    again = readings_migration.migrate(db)
    assert (again.readings, again.buckets, again.resumed) == (0, 0, False)
    assert coll.count_documents({}) < len(docs) / 4  # runs of 36 between gaps: ~8 blocks each
    # The source marks cover what revision 3 wrote: a replay after the upgrade looks it up.
    for partition in range(3):
        top = max(source_of(d)[1] for d in docs.values() if source_of(d)[0] == partition)
        assert readings_store.written_mark(db, TOPIC, partition) == top


def test_iot_readings_migrate_then_show_a_device(db_name: str, db: Database[dict[str, Any]]) -> None:
    docs = _revision_3(db, 2, 40)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOT_")}
    env["IOT_MONGO_URI"] = f"{MONGO}/{db_name}"
    migrate = subprocess.run(
        [IOT, "readings", "migrate"], env=env, capture_output=True, text=True, timeout=120
    )
    assert migrate.returncode == 0, migrate.stderr
    assert f"readings_migrated readings={len(docs)}" in migrate.stderr, migrate.stderr
    # The marks come first (two devices, on partitions 0 and 1): the new backend may start from there on.
    log = migrate.stderr
    assert -1 < log.find("readings_marks_set partitions=2") < log.find("readings_migrating"), log
    assert readings_store.collection(db).count_documents({"n": {"$exists": False}}) == 1  # not-a-reading
    show = subprocess.run(
        [IOT, "readings", "show", "--device", "m-1", "--last", "3000d"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert show.returncode == 0, show.stderr
    rows = show.stdout.splitlines()[1:]
    want = sorted((r["ts"], r["seq"]) for r in docs.values() if r["device"] == "m-1")
    assert [int(line.split()[3]) for line in rows] == [seq for _, seq in want]
