"""Idempotent bulk writes of window and reading documents into MongoDB (FerretDB speaks the wire).

Window documents are written whole (`$set` of every field, never `$inc`) by `_id`, so replays and
restarts converge on the same content. A final window never changes again: in steady state the engine
never emits a window it has finalised; after a restart the state may lag MongoDB, so documents of keys
restored from the changelog are first checked and those already final are skipped (`check_ids`).
Readings are inserted by their deterministic `_id`; a replayed one is a duplicate-key error, ignored.

FerretDB 1.24 (SQLite) deadlocks on one update command carrying more than ~100 statements (every
statement holds a pooled connection while the next waits for one): updates go in chunks of
UPDATES_PER_COMMAND. It also answers an upsert that hits a duplicate key without `nModified`, which
pymongo cannot merge: the `_id`-only filter never produces that conflict.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from bson.datetime_ms import DatetimeMS
from pymongo import ASCENDING, MongoClient, UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError

from iot import contract, log

from .errors import SinkError
from .metrics import BackendMetrics
from .records import SENSOR

DUPLICATE_KEY = 11000
UPDATES_PER_COMMAND = 50
IN_QUERY_CHUNK = 200
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

    def write_windows(
        self, scope: str, docs: Iterable[Mapping[str, Any]], check_ids: Iterable[str] = ()
    ) -> int:
        """Upsert window documents (dates as epoch ms); the last document per `_id` wins; documents
        whose `_id` is in `check_ids` and already final in MongoDB are left alone."""
        latest: dict[str, Mapping[str, Any]] = {}
        for doc in docs:
            latest[doc["_id"]] = doc
        coll = contract.COLL_SENSOR_WINDOWS if scope == SENSOR else contract.COLL_PLACE_WINDOWS
        for wid in self._already_final(coll, [i for i in check_ids if i in latest]):
            del latest[wid]
        if not latest:
            return 0
        ops = []
        for wid, doc in latest.items():
            body = _dates(doc, ("start", "end", "updated_at"))
            del body["_id"]
            ops.append(UpdateOne({"_id": wid}, {"$set": body}, upsert=True))
        for i in range(0, len(ops), UPDATES_PER_COMMAND):
            chunk = ops[i : i + UPDATES_PER_COMMAND]
            self._bulk(coll, lambda c=chunk: self.db[coll].bulk_write(c, ordered=False))
        return len(ops)

    def _already_final(self, coll: str, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(ids), IN_QUERY_CHUNK):
            query = {"_id": {"$in": ids[i : i + IN_QUERY_CHUNK]}, "final": True}
            try:
                found.update(d["_id"] for d in self.db[coll].find(query, {"_id": 1}))
            except PyMongoError as exc:
                raise SinkError(f"reading final windows from {coll} failed: {exc}") from exc
        return found

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
