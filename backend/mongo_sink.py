"""Idempotent bulk writes of window and reading documents into MongoDB (FerretDB speaks the wire).

Window documents are replaced whole (`$set` of every field, never `$inc`) under a filter that skips a
final document, so replays and restarts converge on the same content and a final window never changes.
Readings are inserted by their deterministic `_id`; a replayed one is a duplicate-key error, ignored.
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
_log = log.get("backend.mongo")


def _dates(doc: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    out = dict(doc)
    for name in fields:
        out[name] = DatetimeMS(out[name])
    return out


class MongoSink:
    def __init__(self, uri: str, metrics: BackendMetrics | None = None, timeout_ms: int = 10_000) -> None:
        self.client: MongoClient[dict[str, Any]] = MongoClient(
            uri, serverSelectionTimeoutMS=timeout_ms, tz_aware=True
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
        """Upsert window documents (dates as epoch ms); the last document per `_id` wins."""
        latest: dict[str, Mapping[str, Any]] = {}
        for doc in docs:
            latest[doc["_id"]] = doc
        if not latest:
            return 0
        ops = []
        for wid, doc in latest.items():
            body = _dates(doc, ("start", "end", "updated_at"))
            del body["_id"]
            ops.append(UpdateOne({"_id": wid, "final": {"$ne": True}}, {"$set": body}, upsert=True))
        coll = contract.COLL_SENSOR_WINDOWS if scope == SENSOR else contract.COLL_PLACE_WINDOWS
        self._bulk(coll, lambda: self.db[coll].bulk_write(ops, ordered=False))
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
