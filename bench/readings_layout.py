"""What storing readings costs the MongoDB-wire server, per layout (issue #24: the bucket pattern).

The same readings (100 devices, a reading a second each, the gateway's fields), written in the
backend's batches (~2,000 readings of one source partition at a time), into a fresh database per
layout:
  per-reading          one document per reading, `_id` device:boot:seq, a (device, ts) index: today's
  per-reading, _id only the same without the secondary index
  bucket, upsert       a document per device per minute, each batch `$set`s its readings into it
  bucket, insert       a document per device per minute per batch, the readings as sub-documents
  bucket, columns      the same with the fields as arrays (one array per field), as MongoDB's own
                       time-series buckets store them
  revision 4           what the backend writes now (iot/readings_store.py): a document per aligned
                       run of a device's seqs per batch, readings as sub-documents, written through
                       the sink (MongoSink.write_readings: its written marks included)
Prints readings/s, the server's CPU per reading (/proc, the process listening on the Mongo port) and
the client's, and the load average; then, for today's layout and revision 4, what the backend's
de-duplication look-up of one (device, boot, seq) costs, stored or not (wall and server CPU per look-up).

    .venv/bin/python bench/readings_layout.py [--readings 50000]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bson.datetime_ms import DatetimeMS
from pymongo import ASCENDING, MongoClient, UpdateOne
from pymongo.database import Database

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import backend_throughput as bt

from backend.engine import Item
from backend.mongo_sink import MongoSink
from iot import contract, readings_store

DEVICES = 100
PARTITIONS = 6
BATCH = 2000
BUCKET_MS = 60_000
Doc = dict[str, Any]


def readings(n: int) -> list[Doc]:
    out = []
    for seq in range(n // DEVICES):
        for d in range(DEVICES):
            ts = bt.BASE_TS + seq * 1000 + d
            out.append(
                {
                    "v": 1,
                    "device": f"bench-d{d}",
                    "place": f"bench-p{d % 10}",
                    "boot": 0,
                    "seq": seq,
                    "ts": ts,
                    "time_valid": True,
                    "temperature": 20 + (seq % 50) / 10,
                    "humidity": 40.0 + d % 30,
                    "pressure": 1000.5,
                    "luminosity": 100.0 + seq % 7,
                    "fw": "bench",
                    "received_at": ts + 5,
                }
            )
    return out


def batches(rs: list[Doc]) -> list[list[Doc]]:
    """As the sensor stage gets them: per source partition (devices by key), BATCH at a time."""
    out = []
    for p in range(PARTITIONS):
        part = [r for r in rs if int(r["device"].rsplit("d", 1)[1]) % PARTITIONS == p]
        out += [part[i : i + BATCH] for i in range(0, len(part), BATCH)]
    return out


def stored(r: Doc) -> Doc:
    doc = dict(r, ts=DatetimeMS(r["ts"]), received_at=DatetimeMS(r["received_at"]))
    doc["_id"] = contract.reading_id(r["device"], r["boot"], r["seq"])
    return doc


def per_reading(db: Database[Doc], batch: list[Doc]) -> None:
    db.r.insert_many([stored(r) for r in batch], ordered=False)


def by_bucket(batch: list[Doc]) -> dict[tuple[str, int], list[Doc]]:
    groups: dict[tuple[str, int], list[Doc]] = {}
    for r in batch:
        groups.setdefault((r["device"], r["ts"] - r["ts"] % BUCKET_MS), []).append(r)
    return groups


def entry(r: Doc) -> Doc:
    return {k: v for k, v in stored(r).items() if k not in ("_id", "device", "v")}


def bucket_upsert(db: Database[Doc], batch: list[Doc]) -> None:
    ops = [
        UpdateOne(
            {"_id": f"{dev}:{start}"},
            {
                "$set": {f"r.{r['boot']}:{r['seq']}": entry(r) for r in rs},
                "$setOnInsert": {"device": dev, "start": DatetimeMS(start)},
            },
            upsert=True,
        )
        for (dev, start), rs in by_bucket(batch).items()
    ]
    for i in range(0, len(ops), 20):  # the sink's UPDATE_CHUNK
        db.r.bulk_write(ops[i : i + 20], ordered=False)


def bucket_insert(db: Database[Doc], batch: list[Doc]) -> None:
    db.r.insert_many(
        [
            {
                "_id": f"{dev}:{start}:{rs[0]['seq']}",
                "device": dev,
                "start": DatetimeMS(start),
                "r": {f"{r['boot']}:{r['seq']}": entry(r) for r in rs},
            }
            for (dev, start), rs in by_bucket(batch).items()
        ],
        ordered=False,
    )


def bucket_columns(db: Database[Doc], batch: list[Doc]) -> None:
    fields = [f for f in (*contract.FIELDS, "received_at") if f not in ("v", "device", "place")]
    db.r.insert_many(
        [
            {
                "_id": f"{dev}:{start}:{rs[0]['seq']}",
                "device": dev,
                "place": rs[0]["place"],
                "start": DatetimeMS(start),
                **{f: [r[f] for r in rs] for f in fields},
            }
            for (dev, start), rs in by_bucket(batch).items()
        ],
        ordered=False,
    )


def revision_4(db: Database[Doc], batch: list[Doc]) -> None:
    sink = _sinks.get(db.name)
    if sink is None:
        sink = _sinks[db.name] = MongoSink(f"{bt.MONGO}/{db.name}")
    offsets = _offsets.setdefault(db.name, {})
    items = []
    for r in batch:
        partition = int(r["device"].rsplit("d", 1)[1]) % PARTITIONS
        offset = offsets[partition] = offsets.get(partition, -1) + 1
        items.append(Item(r, partition, offset))
    sink.write_readings(items)


_sinks: dict[str, MongoSink] = {}
_offsets: dict[str, dict[int, int]] = {}


def lookups(db: Database[Doc], name: str, rs: list[Doc], store: list[int], n: int = 400) -> None:
    """The de-duplication's look-up of one identity, as each layout answers it: stored ones and absent
    ones (another boot), one call each."""
    rng = random.Random(5)
    hits = [contract.reading_id(r["device"], r["boot"], r["seq"]) for r in rng.sample(rs, n)]
    misses = [contract.reading_id(r["device"], 9, r["seq"]) for r in rng.sample(rs, n)]
    coll = readings_store.collection(db) if name.startswith("revision") else db.r
    for label, ids in (("stored", hits), ("absent", misses)):
        server0 = sum(bt.cpu_seconds(p) for p in store)
        t0 = time.perf_counter()
        found = 0
        for rid in ids:
            if name.startswith("revision"):
                found += len(readings_store.find(coll, [rid]))
            else:
                found += coll.find_one({"_id": rid}) is not None
        wall = time.perf_counter() - t0
        server = sum(bt.cpu_seconds(p) for p in store) - server0
        assert found == (n if label == "stored" else 0), (name, label, found)
        print(
            f"  look-up, {label}: {1e3 * wall / n:.2f} ms wall, "
            f"server CPU {1e6 * server / n:.0f} us per look-up",
            flush=True,
        )


LAYOUTS: tuple[tuple[str, Callable[[Database[Doc], list[Doc]], None], list[tuple[str, int]] | None], ...] = (
    ("per-reading (today)", per_reading, [("device", ASCENDING), ("ts", ASCENDING)]),
    ("per-reading, _id only", per_reading, None),
    ("bucket, upsert per batch", bucket_upsert, [("device", ASCENDING), ("start", ASCENDING)]),
    ("bucket, insert per batch", bucket_insert, [("device", ASCENDING), ("start", ASCENDING)]),
    ("bucket, columns, insert", bucket_columns, [("device", ASCENDING), ("start", ASCENDING)]),
    ("revision 4 (readings_store)", revision_4, None),
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=50_000)
    ap.add_argument("--only", default="", help="run only the layouts whose name contains this")
    args = ap.parse_args()
    rs = readings(args.readings)
    work = batches(rs)
    client: MongoClient[Doc] = MongoClient(bt.MONGO)
    store = bt.listener_pids(int(bt.MONGO.rsplit(":", 1)[1]))
    for name, write, index in LAYOUTS:
        if args.only not in name:
            continue
        db_name = f"layout_{uuid.uuid4().hex[:8]}"
        db = client[db_name]
        try:
            if index:
                db.r.create_index(index)
            server0 = sum(bt.cpu_seconds(p) for p in store)
            client0, t0 = time.process_time(), time.perf_counter()
            for batch in work:
                write(db, batch)
            wall = time.perf_counter() - t0
            mine = time.process_time() - client0
            server = sum(bt.cpu_seconds(p) for p in store) - server0
            docs = (
                db[contract.COLL_READINGS] if name.startswith("revision") else db.r
            ).estimated_document_count()
            print(
                f"{name}: {len(rs) / wall:,.0f} readings/s; CPU per reading: server "
                f"{1e6 * server / len(rs):.0f} us, client {1e6 * mine / len(rs):.0f} us; "
                f"{docs:,} documents; load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            if name.startswith(("per-reading (today)", "revision")):
                lookups(db, name, rs, store)
        finally:
            sink = _sinks.pop(db_name, None)
            if sink is not None:
                sink.close()
            client.drop_database(db_name)
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
