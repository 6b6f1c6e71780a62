"""Idempotent bulk writes of window and reading documents into MongoDB (FerretDB speaks the wire).

Window documents are replaced whole (never `$inc`) by deterministic `_id`, so replays and restarts
converge on the same content, and a document already final is never overwritten by an open or final
write (only an amendment replaces it). Readings are inserted by their deterministic `_id`; a replayed
one is a duplicate-key error, ignored.

How, on FerretDB 1.24 (SQLite): only a filter of exactly `{_id: value}` is pushed down to SQLite;
anything else (`$in`, `{_id, final}`, every delete) reads and decodes the whole collection, so its cost
grows with the collection, not with the batch. Measured at 20k window documents: `{_id, final: {$ne:
true}}` replace 214 ms, `delete_one({_id})` 46 ms, `find({_id: {$in: 100 ids}})` 760 ms, against
`{_id}`-only find or replace ~1 ms with the stack's build (below; one statement: a query plus a
one-row write in its own transaction) and `insert_many` 0.1-0.35 ms per document (100 per
transaction). So every window write here is an insert or an `{_id}`-only statement:
  - a window this sink has not written open yet is inserted (in a backlog most windows are final
    before their first open write: one insert each, batched);
  - a duplicate key on that insert means the document exists (written before a restart or a
    rebalance): it is read by `_id` and replaced only if it is not final;
  - a window this sink itself wrote open (and nobody else writes: a key's partition has one owner,
    and `forget` drops this memory at every rebalance) is replaced by `_id` without reading it first.
    (A worker that stalls past its session timeout and resumes without seeing the rebalance could
    still rewrite such a window open after the new owner wrote it final; it would also write stale
    changelog states then, so that case is not covered by the rest of the design either.)
Update commands carry at most UPDATE_CHUNK statements, and one sink sends one at a time
(`_update_lock`): FerretDB keeps one SQLite connection per statement of an update command until the
command ends (`defer` in a loop, internal/handler/msg_update.go) out of a pool of 100 per database, and
each statement's write needs one more. Two commands of 50 at once (the sensor and the place scope each
writing from its own thread) took all 100 and waited for a 101st for ever: the database never answered
again until FerretDB restarted (reproduced: two threads, 50-statement replaces, the first time; it
wedged a 2,000-board soak). 20 statements, one command per sink: a few workers on one database stay
far below the pool.

`{_id}` statements search the `_id` index only on the stack's FerretDB build (iot/app/stack/install.py,
FERRETDB_PATCHES: 50k documents, a replace 0.6 ms); a stock FerretDB 1.24 scans there too (947 ms).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import bson
from bson.datetime_ms import DatetimeMS
from pymongo import ASCENDING, MongoClient, ReplaceOne
from pymongo.errors import BulkWriteError, PyMongoError

from iot import contract, log, readings_migration, readings_store

from .errors import SinkError
from .metrics import BackendMetrics
from .records import PLACE, SENSOR

if TYPE_CHECKING:
    from .engine import Item

DUPLICATE_KEY = 11000
UPDATE_CHUNK = 20
WINDOW_DATES = ("start", "end", "updated_at")
READING_DATES = ("ts", "received_at")
# Final documents kept per scope for amendments, as BSON: ~0.9 KB a sensor window with its key,
# against ~2.9 KB as a dict (tracemalloc, test_final_cache), so a full cache is ~18 MB a scope, not ~60.
FINAL_CACHE = 20_000
_log = log.get("backend.mongo")


def _dates(doc: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    out = dict(doc)
    for name in fields:
        out[name] = DatetimeMS(out[name])
    return out


def _epoch_ms(doc: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """Dates of a stored document as epoch ms, in place. A field that is no date is left as it is:
    stored documents are input, checked by their reader (backend/stored.py)."""
    for name in fields:
        value = doc.get(name)
        if isinstance(value, datetime):
            doc[name] = int(value.timestamp() * 1000)
    return doc


# A stored reading's `src` (the record it was first stored from) is iot/readings_store.py's.
source_code = readings_store.source_code
source_of = readings_store.source_of


def _rid(item: Item) -> str:
    r = item.reading
    return contract.reading_id(r["device"], r["boot"], r["seq"])


def is_ferretdb(build_info: Mapping[str, Any]) -> bool:
    """Whether a server's `buildInfo` is FerretDB's (it reports a MongoDB version, plus its own
    `ferretdbFeatures`)."""
    return "ferretdbFeatures" in build_info or "ferretdb" in build_info


def _collection(scope: str) -> str:
    return contract.COLL_SENSOR_WINDOWS if scope == SENSOR else contract.COLL_PLACE_WINDOWS


class MongoSink:
    # A MongoDB that does not answer is a SinkError (logged, retried by the caller) within 5 s.
    def __init__(
        self,
        uri: str,
        metrics: BackendMetrics | None = None,
        timeout_ms: int = 5_000,
        source_topic: str = contract.TOPIC_READINGS,
    ) -> None:
        self.client: MongoClient[dict[str, Any]] = MongoClient(
            uri, serverSelectionTimeoutMS=timeout_ms, socketTimeoutMS=60_000, tz_aware=True
        )
        self.db = self.client.get_default_database(default=contract.DEFAULT_DATABASE)
        self.metrics = metrics
        self.source_topic = source_topic
        # Per source partition, the highest offset whose readings may be stored (readings_store.MARKS),
        # read once after a start or a rebalance and kept current by this sink's own writes.
        self._marks: dict[int, int] = {}
        # One update command in flight per sink (module doc: FerretDB's connection pool).
        self._update_lock = threading.Lock()
        # Window ids this sink wrote open and not final since, per scope (module doc).
        self._open: dict[str, set[str]] = {SENSOR: set(), PLACE: set()}
        # The final documents this sink wrote last, as written (epoch ms) and BSON-encoded, per scope:
        # the base of the next amendment of that window without a read. Bounded; a miss reads MongoDB.
        self._finals: dict[str, OrderedDict[str, bytes]] = {
            SENSOR: OrderedDict(),
            PLACE: OrderedDict(),
        }

    def ensure_indexes(self) -> None:
        """The indexes users' time-range queries use, on MongoDB. Not on FerretDB: it answers only an
        `{_id}` filter from an index and scans for every other, yet keeps every index on each write
        (the two of `readings` were 17 % of FerretDB's CPU per inserted reading: 32.0 -> 26.5 us, ten
        interleaved batches of 10,000, issue #24)."""
        try:
            ferretdb = is_ferretdb(self.client.admin.command("buildInfo"))
            if not ferretdb:
                windows = ((contract.COLL_SENSOR_WINDOWS, "device"), (contract.COLL_PLACE_WINDOWS, "place"))
                for coll, owner in windows:
                    self.db[coll].create_index([(owner, ASCENDING), ("start", ASCENDING)])
                readings_store.ensure_indexes(self.db[contract.COLL_READINGS])
            unmigrated = readings_migration.unmigrated(self.db)
        except PyMongoError as exc:
            raise SinkError(f"creating MongoDB indexes failed: {exc}") from exc
        if ferretdb:
            _log.info(
                "secondary_indexes_skipped",
                server="FerretDB",
                why="FerretDB serves only {_id} look-ups from an index; the (device, start) and (place,"
                " start) indexes would cost every write and serve no query",
                action="none; a database an earlier version indexed keeps its indexes (drop them with"
                " dropIndexes to save the writes' cost)",
            )
        if unmigrated:
            _log.warning(
                "readings_not_migrated",
                collection=contract.COLL_READINGS,
                contract_revision=contract.CONTRACT_REVISION,
                action="stop the backend and run `iot readings migrate` (revision 3 documents, one per"
                " reading, are read as they are meanwhile; a replay after a crash could store some twice)",
            )

    def forget(self) -> None:
        """Forget which windows this sink wrote (after a rebalance a key may have had another owner
        meanwhile): their next write or amendment reads the stored document first."""
        self._marks.clear()
        for ids in self._open.values():
            ids.clear()
        for cache in self._finals.values():
            cache.clear()

    def write_windows(self, scope: str, docs: Iterable[Mapping[str, Any]]) -> int:
        """Write open and final window documents (dates as epoch ms) whole; the last document per `_id`
        wins and a document already final in MongoDB is never touched."""
        latest: dict[str, Mapping[str, Any]] = {}
        for doc in docs:
            latest[doc["_id"]] = doc
        if not latest:
            return 0
        coll = _collection(scope)
        mine = self._open[scope]
        fresh = [_dates(d, WINDOW_DATES) for i, d in latest.items() if i not in mine]
        replace = [i for i in latest if i in mine]
        kept: set[str] = set()  # final in MongoDB already: left as it is
        for wid in self._insert(coll, fresh):
            # Written before a restart or by another owner: look before replacing.
            if self._stored_final(coll, wid):
                kept.add(wid)
            else:
                replace.append(wid)
        self._replace(coll, [(i, _dates(latest[i], WINDOW_DATES)) for i in replace])
        for wid, doc in latest.items():
            if wid in kept:
                continue
            if doc["final"]:
                mine.discard(wid)
                self._remember_final(scope, doc)
            else:
                mine.add(wid)
        return len(latest)

    def _remember_final(self, scope: str, doc: Mapping[str, Any]) -> None:
        cache = self._finals[scope]
        cache[doc["_id"]] = bson.encode(doc)
        cache.move_to_end(doc["_id"])
        while len(cache) > FINAL_CACHE:
            cache.popitem(last=False)

    def load_windows(self, scope: str, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Stored window documents by `_id` (dates as epoch ms), for amendments; absent ids are absent.

        The final documents this sink wrote itself are answered from memory (a backlog amends the
        same windows batch after batch); the others with one `{_id}` find each (a `$in` find reads
        the whole collection on FerretDB, module doc)."""
        coll = _collection(scope)
        cache = self._finals[scope]
        found: dict[str, dict[str, Any]] = {}
        try:
            for wid in ids:
                cached = cache.get(wid)
                if cached is not None:
                    found[wid] = bson.decode(cached)
                    continue
                doc = self.db[coll].find_one({"_id": wid})
                if doc is not None:
                    found[wid] = _epoch_ms(doc, WINDOW_DATES)
        except PyMongoError as exc:
            raise SinkError(f"reading {coll} for amendments failed: {exc}") from exc
        return found

    def write_amended(self, scope: str, docs: Iterable[Mapping[str, Any]]) -> int:
        """Replace amended (final) window documents whole, creating the ones that never existed.

        Replace-with-upsert, not delete + insert: a crash between a delete and its insert would lose
        the document, and an amendment is computed from that very document."""
        coll = _collection(scope)
        latest = {doc["_id"]: doc for doc in docs}
        self._replace(coll, [(i, _dates(d, WINDOW_DATES)) for i, d in latest.items()])
        for wid, doc in latest.items():
            self._open[scope].discard(wid)
            self._remember_final(scope, doc)
        return len(latest)

    def write_readings(self, items: Iterable[Item]) -> int:
        """Insert new readings, each with the iot.readings record it came from (`src`, how the
        de-duplication tells a replay of that record from a duplicate), as buckets: one document per
        aligned run of a device's seqs in this batch (iot/readings_store.py). Readings of records at
        or below a partition's written mark (a replay: a process may have stored them and died before
        its states were persisted) are looked up first, so none is stored twice. Measured on the
        stack's FerretDB: backend/README.md, "Beside its peers"."""
        items = list(items)
        if not items:
            return 0
        top: dict[int, int] = {}
        for item in items:
            partition, offset = item.source
            if offset > top.get(partition, -1):
                top[partition] = offset
        start = time.perf_counter()
        try:
            for partition in top:
                if partition not in self._marks:
                    self._marks[partition] = readings_store.written_mark(
                        self.db, self.source_topic, partition
                    )
            replayed = [i for i in items if i.source[1] <= self._marks[i.source[0]]]
            if replayed:
                stored = readings_store.find(self.db[contract.COLL_READINGS], map(_rid, replayed))
                items = [i for i in items if _rid(i) not in stored]
            ahead = {p: o for p, o in top.items() if o > self._marks[p]}
            readings_store.mark_written(self.db, self.source_topic, ahead)
        except PyMongoError as exc:
            raise SinkError(f"reading or writing {readings_store.MARKS} failed: {exc}") from exc
        finally:
            self._observe(readings_store.MARKS, start)
        self._marks.update(ahead)
        docs = readings_store.pack((i.reading, source_code(*i.source)) for i in items)
        # A bucket that exists holds these very identities, stored before: nothing to do.
        self._insert(contract.COLL_READINGS, docs)
        return len(items)

    def find_readings(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Stored readings by reading id (dates as epoch ms); absent ids are absent. At most
        len(readings_store.SIZES) `{_id}` finds each, the only look-up FerretDB serves from an index
        (module doc): the de-duplication asks only about what its bounded memory forgot, and about
        duplicates' first copies."""
        start = time.perf_counter()
        try:
            found = readings_store.find(self.db[contract.COLL_READINGS], ids)
        except PyMongoError as exc:
            raise SinkError(f"reading {contract.COLL_READINGS} failed: {exc}") from exc
        finally:
            self._observe(contract.COLL_READINGS, start, read=True)
        return {rid: _epoch_ms(doc, READING_DATES) for rid, doc in found.items()}

    def window_readings(self, scope: str, key: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
        """Every stored reading of a window (its key's, event time in [start, end)), dates as epoch ms:
        what a corrupt window document is rebuilt from. Rare; on FerretDB this filter reads the whole
        collection (module doc)."""
        field = "device" if scope == SENSOR else "place"
        try:
            found = readings_store.in_range(self.db[contract.COLL_READINGS], field, key, start_ms, end_ms)
        except PyMongoError as exc:
            raise SinkError(f"reading {contract.COLL_READINGS} to rebuild a window failed: {exc}") from exc
        return [_epoch_ms(doc, READING_DATES) for doc in found]

    def _insert(self, coll: str, docs: list[dict[str, Any]]) -> list[Any]:
        """One unordered `insert_many` (pymongo splits it by size, FerretDB commits 100 per
        transaction); returns the `_id`s that already existed."""
        if not docs:
            return []
        existing: list[Any] = []
        start = time.perf_counter()
        try:
            self.db[coll].insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            failed = [e for e in errors if e.get("code") != DUPLICATE_KEY]
            if failed or exc.details.get("writeConcernErrors"):
                raise SinkError(f"bulk write to {coll} failed: {failed[:3]}") from exc
            existing = [docs[e["index"]]["_id"] for e in errors]
        except PyMongoError as exc:
            raise SinkError(f"bulk write to {coll} failed: {exc}") from exc
        finally:
            self._observe(coll, start)
        return existing

    def _replace(self, coll: str, docs: list[tuple[str, dict[str, Any]]]) -> None:
        """Replace documents whole by `_id` (upsert), UPDATE_CHUNK statements per command."""
        ops = [ReplaceOne({"_id": i}, d, upsert=True) for i, d in docs]
        for n in range(0, len(ops), UPDATE_CHUNK):
            with self._update_lock:
                start = time.perf_counter()
                try:
                    self.db[coll].bulk_write(ops[n : n + UPDATE_CHUNK], ordered=False)
                except PyMongoError as exc:
                    raise SinkError(f"replacing documents in {coll} failed: {str(exc)[:300]}") from exc
                finally:
                    self._observe(coll, start)

    def _stored_final(self, coll: str, wid: str) -> bool:
        start = time.perf_counter()
        try:
            doc = self.db[coll].find_one({"_id": wid}, {"final": 1})
        except PyMongoError as exc:
            raise SinkError(f"reading {coll} failed: {exc}") from exc
        finally:
            self._observe(coll, start, read=True)
        return doc is not None and doc.get("final") is True

    def _observe(self, coll: str, start: float, read: bool = False) -> None:
        if self.metrics is not None:
            histogram = self.metrics.mongo_read if read else self.metrics.mongo_write
            histogram.labels(coll).observe(time.perf_counter() - start)

    def close(self) -> None:
        self.client.close()
