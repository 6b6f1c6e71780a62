"""Idempotent bulk writes of window and reading documents into MongoDB (FerretDB speaks the wire).

Window documents are replaced whole (never `$inc`) by deterministic `_id`, so replays and restarts
converge on the same content. A batch's documents are replaced as one `delete_many` of those ids that
are not final, then one unordered `insert_many`: a document that is already final is neither deleted
nor overwritten (its re-insert is a duplicate-key error, ignored), so a final window never changes.
Readings are inserted by their deterministic `_id`; a replayed one is a duplicate-key error, ignored.

Why not upserts: FerretDB 1.24 (SQLite) scans the collection for each update statement (~76 ms per
upsert at 20k documents, against ~1.4 ms per document for delete+insert), and deadlocks for every
client on one update command of more than ~100 statements. The price: a reader can miss a window
document for the few milliseconds between the delete and the insert.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from bson.datetime_ms import DatetimeMS
from pymongo import ASCENDING, MongoClient, ReplaceOne
from pymongo.errors import BulkWriteError, PyMongoError

from iot import contract, log

from .errors import SinkError
from .metrics import BackendMetrics
from .records import SENSOR

DUPLICATE_KEY = 11000
CHUNK = 500
UPDATE_CHUNK = 50
_log = log.get("backend.mongo")


def _dates(doc: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    out = dict(doc)
    for name in fields:
        out[name] = DatetimeMS(out[name])
    return out


class MongoSink:
    def __init__(self, uri: str, metrics: BackendMetrics | None = None, timeout_ms: int = 10_000) -> None:
        self.client: MongoClient[dict[str, Any]] = MongoClient(
            uri, serverSelectionTimeoutMS=timeout_ms, socketTimeoutMS=6 * timeout_ms, tz_aware=True
        )
        self.db = self.client.get_default_database(default=contract.DEFAULT_DATABASE)
        self.metrics = metrics

    def ensure_indexes(self) -> None:
        try:
            self.db[contract.COLL_SENSOR_WINDOWS].create_index([("device", ASCENDING), ("start", ASCENDING)])
            self.db[contract.COLL_PLACE_WINDOWS].create_index([("place", ASCENDING), ("start", ASCENDING)])
            self.db[contract.COLL_READINGS].create_index([("device", ASCENDING), ("ts", ASCENDING)])
        except PyMongoError as exc:
            raise SinkError(f"creating MongoDB indexes failed: {exc}") from exc

    def write_windows(self, scope: str, docs: Iterable[Mapping[str, Any]]) -> int:
        """Replace window documents (dates as epoch ms) whole; the last document per `_id` wins and a
        document already final in MongoDB is never touched."""
        latest: dict[str, Mapping[str, Any]] = {}
        for doc in docs:
            latest[doc["_id"]] = doc
        if not latest:
            return 0
        coll = contract.COLL_SENSOR_WINDOWS if scope == SENSOR else contract.COLL_PLACE_WINDOWS
        ids = list(latest)
        bodies = [_dates(d, ("start", "end", "updated_at")) for d in latest.values()]
        for i in range(0, len(ids), CHUNK):
            chunk_ids, chunk = ids[i : i + CHUNK], bodies[i : i + CHUNK]
            # Only non-final documents go; re-inserting one that stayed (final) is a duplicate key.
            query = {"_id": {"$in": chunk_ids}, "final": {"$ne": True}}
            self._bulk(coll, lambda q=query: self.db[coll].delete_many(q))
            self._bulk(coll, lambda c=chunk: self.db[coll].insert_many(c, ordered=False))
        return len(ids)

    def load_windows(self, scope: str, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Stored window documents by `_id` (dates as epoch ms), for amendments; absent ids are absent."""
        coll = contract.COLL_SENSOR_WINDOWS if scope == SENSOR else contract.COLL_PLACE_WINDOWS
        wanted = list(ids)
        found: dict[str, dict[str, Any]] = {}
        try:
            for i in range(0, len(wanted), CHUNK):
                for doc in self.db[coll].find({"_id": {"$in": wanted[i : i + CHUNK]}}):
                    for name in ("start", "end", "updated_at"):
                        doc[name] = int(doc[name].timestamp() * 1000)
                    found[doc["_id"]] = doc
        except PyMongoError as exc:
            raise SinkError(f"reading {coll} for amendments failed: {exc}") from exc
        return found

    def write_amended(self, scope: str, docs: Iterable[Mapping[str, Any]]) -> int:
        """Replace amended (final) window documents whole, creating the ones that never existed.

        Replace-with-upsert, not delete + insert as for open windows: a crash between a delete and its
        insert would lose the document, and an amendment is computed from that very document."""
        coll = contract.COLL_SENSOR_WINDOWS if scope == SENSOR else contract.COLL_PLACE_WINDOWS
        latest = {doc["_id"]: doc for doc in docs}
        ops = [
            ReplaceOne({"_id": i}, _dates(d, ("start", "end", "updated_at")), upsert=True)
            for i, d in latest.items()
        ]
        # FerretDB deadlocks on update commands of more than about 100 statements (FACTS.md).
        for i in range(0, len(ops), UPDATE_CHUNK):
            chunk = ops[i : i + UPDATE_CHUNK]
            self._bulk(coll, lambda c=chunk: self.db[coll].bulk_write(c, ordered=False))
        return len(ops)

    def write_readings(self, readings: Iterable[Mapping[str, Any]]) -> int:
        docs = []
        for r in readings:
            doc = _dates(r, ("ts", "received_at"))
            doc["_id"] = contract.reading_id(r["device"], r["boot"], r["seq"])
            docs.append(doc)
        if docs:
            coll = contract.COLL_READINGS
            self._bulk(coll, lambda: self.db[coll].insert_many(docs, ordered=False))
        return len(docs)

    def _bulk(self, coll: str, write: Any) -> None:
        start = time.perf_counter()
        try:
            write()
        except BulkWriteError as exc:
            # A duplicate key is a replayed reading or a window already final: the write is done.
            errors = [e for e in exc.details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY]
            if errors or exc.details.get("writeConcernErrors"):
                raise SinkError(f"bulk write to {coll} failed: {errors[:3]}") from exc
        except PyMongoError as exc:
            raise SinkError(f"bulk write to {coll} failed: {exc}") from exc
        finally:
            if self.metrics is not None:
                self.metrics.mongo_write.labels(coll).observe(time.perf_counter() - start)

    def close(self) -> None:
        self.client.close()
