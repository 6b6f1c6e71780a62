"""Revision 3's `readings` documents (one flat document per reading) rewritten as revision 4 buckets
(iot/readings_store.py has the layout): `iot readings migrate`.

Kept apart from the layout because it is a one-off operation with its own failure story: it must be
safe to kill at any point and to run again, and to run beside a revision 4 backend. It writes through
a journal (`MIGRATION`): each chunk's plan is recorded before its buckets go in, and the documents a
chunk took are deleted only once all its buckets are in, so a killed run is finished by the next one
and no reading is lost or left stored twice. The layout needs none of this: readers take both shapes
(a revision 3 document is a bucket of one), before, during and after a migration.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from typing import Any, Final

from pymongo import DeleteOne, ReplaceOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from iot import contract
from iot.errors import IotError
from iot.readings_store import (
    COLUMNS,
    DATES,
    MARKS,
    TOP,
    Doc,
    blocks,
    bucket_id,
    collection,
    epoch_ms,
    is_bucket,
    mark_written,
    pack,
    parse_id,
    source_of,
)

# The migration journal: one document in this collection while a chunk of the migration is applied.
MIGRATION: Final = "readings_migration"
_JOURNAL_ID: Final = "rev4"
MIGRATE_CHUNK: Final = 2_000
# Statements per delete command: FerretDB holds one SQLite connection per statement of a command until
# it ends, out of 100 per database (backend/mongo_sink.py, UPDATE_CHUNK).
_STATEMENTS: Final = 20
DUPLICATE_KEY: Final = 11000


def unmigrated(db: Database[Doc]) -> bool:
    """Revision 3 documents are there and no revision 4 writer or migration has run on this database
    (no marks): the hint to run `iot readings migrate`. Cheap whenever it says no (a scan only of a
    collection no revision 4 backend has written to)."""
    if db[MARKS].find_one({}, {"_id": 1}) is not None:
        return False
    return (
        collection(db).find_one({"n": {"$exists": False}, "seq": {"$exists": True}}, {"_id": 1}) is not None
    )


@dataclass(slots=True)
class Migrated:
    readings: int = 0  # revision 3 documents rewritten
    buckets: int = 0  # revision 4 documents they became
    resumed: bool = False  # a killed run's chunk was finished first
    marked: int | None = None  # partitions whose written marks were raised (None: not yet)
    seconds: float = 0.0
    chunks: list[int] = field(default_factory=list)


def migrate(
    db: Database[Doc],
    progress: Callable[[Migrated], None] | None = None,
    chunk: int = MIGRATE_CHUNK,
    topic: str = contract.TOPIC_READINGS,
) -> Migrated:
    """Rewrite revision 3 reading documents as revision 4 buckets, about `chunk` documents at a time.

    Per chunk: its plan (each bucket's `_id` and the revision 3 `_id`s it takes) goes into a journal
    document first; then the buckets are inserted (a bucket of one replaces its reading's document in
    place: same `_id`); only once every bucket is in are the documents they took deleted; then the
    journal goes. Killed anywhere, a run starts by finishing the journal's chunk (a bucket not in yet
    is made again from its documents, all still there), so no reading is lost or left stored twice
    (until then, a killed chunk's readings may be held twice: the readers of iot/readings_store.py take
    each once), and a finished migration finds nothing to do. Its first step raises the written marks
    (`MARKS`) of `topic`'s partitions to the records the readings came from (`progress` is called then
    with `marked` set): from then on a revision 4 backend may run beside it (it reads both shapes, and a
    replay of those records looks their readings up before writing them)."""
    coll, journal = collection(db), db[MIGRATION]
    done = Migrated()
    started = time.monotonic()
    pending = journal.find_one({"_id": _JOURNAL_ID})
    if pending is not None:
        done.resumed = True
        _apply(coll, journal, [(str(p["b"]), [str(m) for m in p["m"]]) for p in pending["plan"]], {})
    # One pass for the identities alone (~150 bytes each in memory), so that a device's readings become
    # the fewest buckets whatever order they were stored in; then each chunk reads its documents by `_id`.
    # The same pass raises the written marks (`MARKS`) of `topic`'s partitions to every record a
    # revision 3 reading came from, before anything else: from then on a backend that replays those
    # records looks their readings up before writing them, so it may run beside the rest.
    fields = {name: 1 for name in (*TOP, "seq", *DATES, "src")}
    idents: list[tuple[str, int, str, int]] = []
    marks: dict[int, int] = {}
    for d in coll.find({"n": {"$exists": False}}, fields, batch_size=10_000):
        if not _is_v3_reading(d):
            continue
        idents.append((d["device"], d["boot"], d["place"], d["seq"]))
        partition, offset = source_of(d)
        if partition >= 0:
            marks[partition] = max(offset, marks.get(partition, -1))
    idents.sort()
    mark_written(db, topic, marks)
    done.marked = len(marks)
    if progress is not None:
        progress(done)
    plan: list[tuple[str, list[str]]] = []
    for (device, boot, _place), group in groupby(idents, key=lambda i: i[:3]):
        for first, n in blocks(sorted({i[3] for i in group})):
            members = [contract.reading_id(device, boot, s) for s in range(first, first + n)]
            plan.append((bucket_id(device, boot, first, n), members))
            if sum(len(m) for _, m in plan) >= chunk:
                _migrate_chunk(db, plan, done, progress, started)
                plan = []
    if plan:
        _migrate_chunk(db, plan, done, progress, started)
    done.seconds = time.monotonic() - started
    return done


def _migrate_chunk(
    db: Database[Doc],
    plan: list[tuple[str, list[str]]],
    done: Migrated,
    progress: Callable[[Migrated], None] | None,
    started: float,
) -> None:
    coll, journal = collection(db), db[MIGRATION]
    by_id: dict[str, Doc] = {}
    for _bid, members in plan:
        for rid in members:
            doc = coll.find_one({"_id": rid})
            if doc is None or not _is_v3_reading(doc):
                raise MigrationError(f"reading {rid} changed while migrating: is another migration running?")
            by_id[rid] = doc
    # A list of documents: FerretDB 1.24 stores no arrays in arrays.
    entries = [{"b": b, "m": ms} for b, ms in plan]
    journal.replace_one({"_id": _JOURNAL_ID}, {"_id": _JOURNAL_ID, "plan": entries}, upsert=True)
    _apply(coll, journal, plan, by_id)
    done.readings += len(by_id)
    done.buckets += len(plan)
    done.chunks.append(len(by_id))
    done.seconds = time.monotonic() - started
    if progress is not None:
        progress(done)


_V3_FIELDS: Final = frozenset({"_id", "src", *TOP, "seq", *COLUMNS, "device_ts"})


def _is_v3_reading(doc: Mapping[str, Any]) -> bool:
    """A revision 3 reading document this migration can rewrite without losing a field; anything else
    is left as it is (read as it was)."""
    ident = parse_id(str(doc.get("_id")))
    return (
        ident is not None
        and doc.get("device") == ident[0]
        and doc.get("boot") == ident[1]
        and doc.get("seq") == ident[2]
        and isinstance(doc.get("place"), str)
        and all(isinstance(doc.get(d), datetime) for d in DATES)
        and doc.keys() <= _V3_FIELDS
    )


def _pack_stored(items: Iterable[tuple[Mapping[str, Any], Any]]) -> list[Doc]:
    """pack() for stored revision 3 documents (dates already dates, `src` as stored)."""
    plain = []
    for doc, src in items:
        reading = {k: v for k, v in doc.items() if k not in ("_id", "src")}
        for name in DATES:
            reading[name] = epoch_ms(reading[name])
        plain.append((reading, src))
    return pack(plain)


def _apply(
    coll: Collection[Doc], journal: Collection[Doc], plan: list[tuple[str, list[str]]], by_id: dict[str, Doc]
) -> None:
    """Make every planned bucket exist, then delete the revision 3 documents they took, then the
    journal. `by_id`: the documents at hand; a resumed chunk reads its own."""
    fresh: list[Doc] = []
    in_place: list[Doc] = []
    for bid, members in plan:
        if len(members) == 1 and members[0] == bid:
            held = by_id.get(bid) or coll.find_one({"_id": bid})
            if held is not None and not is_bucket(held):
                in_place.extend(_pack_stored([(held, held.get("src", -1))]))
            continue
        if not by_id and coll.find_one({"_id": bid}, {"_id": 1}) is not None:
            continue  # a resumed chunk's bucket that is in already
        docs = [by_id.get(m) or coll.find_one({"_id": m}) for m in members]
        present = [d for d in docs if d is not None and not is_bucket(d)]
        if len(present) != len(members):
            raise MigrationError(f"bucket {bid}: {len(members) - len(present)} of its readings are gone")
        fresh.extend(_pack_stored([(d, d.get("src", -1)) for d in present]))
    if fresh:
        try:
            coll.insert_many(fresh, ordered=False)
        except BulkWriteError as exc:
            failed = [e for e in exc.details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY]
            if failed or exc.details.get("writeConcernErrors"):
                raise
    for n in range(0, len(in_place), _STATEMENTS):
        coll.bulk_write(
            [ReplaceOne({"_id": d["_id"]}, d) for d in in_place[n : n + _STATEMENTS]], ordered=False
        )
    gone = [m for bid, members in plan if not (len(members) == 1 and members[0] == bid) for m in members]
    for n in range(0, len(gone), _STATEMENTS):
        coll.bulk_write([DeleteOne({"_id": m}) for m in gone[n : n + _STATEMENTS]], ordered=False)
    journal.delete_one({"_id": _JOURNAL_ID})


class MigrationError(IotError):
    """The migration met data it cannot rewrite without losing a reading; nothing was deleted."""
