"""The `readings` collection's layout (contract revision 4): the one module that writes and reads it.

Readings are stored as buckets, MongoDB's pattern for sensor data: one document holds a run of a
device's readings, consecutive seqs of one boot at one place, stored together because they arrived
in one batch. Every caller goes through this module; none knows the document's shape
(docs/CONTRACT.md, "MongoDB documents", has it for users).

Why this shape: FerretDB 1.24 (the stack's MongoDB-wire server) has no time-series collections and
pushes only an `{_id: value}` filter down to an index; every other filter reads the whole collection.
The backend must answer "is (device, boot, seq) stored, and from which record" exactly and by index
(its de-duplication), and must write without reading first (an update is a query plus a one-row
write in its own transaction there; bench/readings_layout.py: a device-minute upsert per batch cost
more than a document per reading). So a bucket is insert-only and its `_id` is computable from any
reading it holds:
  - a bucket holds an aligned block of seqs: `n` (1, 4 or 16: SIZES) readings, seqs
    `seq .. seq + n - 1` with `seq % n == 0`; `_id` is `device:boot:seq` for n = 1 (the reading id,
    as in revision 3) and `device:boot:seq+n` otherwise;
  - a batch's readings of a device are cut into such blocks (a run of consecutive seqs into the
    fewest aligned blocks), so a reading is found by probing at most len(SIZES) = 3 `_id`s
    (`holders`), each an indexed look-up.
A bucket `_id` fixes the identities it holds, so an insert that meets an existing `_id` met those
very readings, stored before (a replay): ignored, as revision 3 ignored a reading's duplicate key.
But a replay after a crash cuts its batch elsewhere, and its blocks would hold readings stored
already in blocks of other sizes: so before a batch's readings go in, the highest input offset of
each source partition they come from is recorded (`MARKS`, write-ahead), and readings of records at
or below the recorded offset (written, perhaps, by a process that died before its state was
persisted) are looked up first and only the ones not stored are written. Each reading is stored
once. (Left open, as for window documents, backend/mongo_sink.py: a write of a worker that lost its
partitions and is still executed afterwards - a zombie, or a dead worker's request that a frozen
server runs late - can store identical copies beside the new owner's. The readers here take each
identity once; `count` and `every_copy` show copies, and the tests and the soak's accounting check
there are none.)

Revision 3's documents (one flat document per reading, `_id` device:boot:seq) are read as buckets of
one: the backend and every reader work before, during and after `migrate`, which rewrites them as
revision 4 buckets (`iot readings migrate`; idempotent, and resumable after a kill at any point
through a journal, `MIGRATION`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from typing import Any, Final

from bson.datetime_ms import DatetimeMS
from pymongo import ASCENDING, DeleteOne, ReplaceOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from iot import contract
from iot.errors import IotError

# Buckets hold 1, 4 or 16 readings (powers of BASE up to BUCKET_MAX). Measured on the stack's FerretDB
# (bench/readings_layout.py, 50k readings, ~120 per device per batch): what the server spends per
# inserted reading hardly moves with the largest size (17-24 us for 8 to 64), but a look-up that finds
# its bucket reads it whole, and FerretDB's find costs ~0.1 ms per reading of the document (a 64-bucket
# 6.4 ms, a 16-bucket 2.3, one reading 0.8), and every size is one more probe when nothing is stored.
# 16 and base 4: 18 us per reading written, a look-up 3.4 ms stored / 1.2 ms absent (64 and base 2:
# 21 us, 5.8 / 3.2 ms; a document per reading, revision 3: 56 us, 0.8 / 0.4 ms).
BUCKET_MAX: Final = 16
BASE: Final = 4
# Sizes a reading's holder may have, in the order they are probed: one (live traffic: a reading per
# device per batch, and revision 3's documents), then the largest first (a backlog's).
SIZES: Final = (1, *sorted((BASE**k for k in range(1, 8) if BASE**k <= BUCKET_MAX), reverse=True))
_DOWN: Final = tuple(sorted(SIZES, reverse=True))
DATES: Final = ("ts", "received_at")
# A bucket's columns every reading has (a metric may be null); other fields of a reading (`device_ts`)
# are columns only in buckets that hold one, null where a reading lacks it.
COLUMNS: Final = ("v", "ts", "received_at", "time_valid", *contract.METRICS, "fw", "src")
# A bucket's fields that its readings share.
_TOP: Final = ("device", "place", "boot")
DUPLICATE_KEY: Final = 11000
# Per source partition (`_id` "topic:partition"), the highest input offset whose readings may have
# been written (`offset`): a replay at or below it looks its readings up before writing them.
MARKS: Final = "readings_marks"
# A stored reading's `src`, the iot.readings record it was first stored from, is one integer:
# partition << SRC_SHIFT | offset. Two fields (partition, offset) cost FerretDB ~15 % more per inserted
# reading than none (20k inserts, 7 interleaved rounds, medians 2.97 s / 2.51 s); one ~ none (2.29 s).
SRC_SHIFT: Final = 40


def source_code(partition: int, offset: int) -> int:
    """A reading's `src` for the iot.readings record at (partition, offset)."""
    return (partition << SRC_SHIFT) | offset


def source_of(doc: Mapping[str, Any]) -> tuple[int, int]:
    """The (partition, offset) a stored reading was first stored from; (-1, -1) when the document does
    not say (the caller then takes it for another record's)."""
    src = doc.get("src")
    # int64 (every partition above 0) comes back from the client as bson.int64.Int64, an int subclass.
    if isinstance(src, bool) or not isinstance(src, int) or src < 0:
        return -1, -1
    src = int(src)
    return src >> SRC_SHIFT, src & ((1 << SRC_SHIFT) - 1)


# The migration journal: one document in this collection while a chunk of the migration is applied.
MIGRATION: Final = "readings_migration"
_JOURNAL_ID: Final = "rev4"
MIGRATE_CHUNK: Final = 2_000
# Statements per delete command: FerretDB holds one SQLite connection per statement of a command until
# it ends, out of 100 per database (backend/mongo_sink.py, UPDATE_CHUNK).
_STATEMENTS: Final = 20
Doc = dict[str, Any]


def collection(db: Database[Doc]) -> Collection[Doc]:
    return db[contract.COLL_READINGS]


def bucket_id(device: str, boot: int, seq: int, n: int) -> str:
    return contract.reading_id(device, boot, seq) if n == 1 else f"{device}:{boot}:{seq}+{n}"


def parse_id(rid: str) -> tuple[str, int, int] | None:
    """(device, boot, seq) of a reading id, None if it is none."""
    device, _, rest = rid.partition(":")
    boot, _, seq = rest.partition(":")
    try:
        return device, int(boot), int(seq)
    except ValueError:
        return None


def holders(device: str, boot: int, seq: int) -> list[str]:
    """Every `_id` a bucket holding (device, boot, seq) can have, in probing order."""
    return [bucket_id(device, boot, seq - seq % n, n) for n in SIZES]


def blocks(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted distinct seqs cut into aligned blocks (first seq, n): runs of consecutive seqs, each as
    few blocks as alignment allows."""
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(seqs):
        j = i
        while j + 1 < len(seqs) and seqs[j + 1] == seqs[j] + 1:
            j += 1
        p, last = seqs[i], seqs[j]
        while p <= last:
            n = next(n for n in _DOWN if p % n == 0 and p + n - 1 <= last)
            out.append((p, n))
            p += n
        i = j + 1
    return out


# A reading's fields that are neither a bucket's shared fields, its `seq` nor one of its COLUMNS: a
# reading holding only these and COLUMNS' has no column of its own to add.
_PLAIN: Final = frozenset((*_TOP, "seq", *COLUMNS)) - {"src"}
# How each column is filled: a date from epoch ms, the `src` given with the reading, or the field.
_DATE, _SRC, _FIELD = "date", "src", "field"
_COLUMN_KINDS: Final = tuple(
    (name, _DATE if name in DATES else _SRC if name == "src" else _FIELD) for name in COLUMNS
)


def pack(readings: Iterable[tuple[Mapping[str, Any], int]]) -> list[Doc]:
    """Bucket documents for readings (payload fields, `ts` and `received_at` as epoch ms) with the
    `src` each was first stored from (`source_code`). Identities repeated take the
    first."""
    runs: dict[tuple[str, int, str], dict[int, tuple[Mapping[str, Any], int]]] = {}
    for reading, src in readings:
        run = runs.setdefault((reading["device"], reading["boot"], reading["place"]), {})
        if reading["seq"] not in run:
            run[reading["seq"]] = (reading, src)
    docs: list[Doc] = []
    for (device, boot, place), by_seq in runs.items():
        for first, n in blocks(sorted(by_seq)):
            docs.append(_bucket(device, boot, place, first, [by_seq[s] for s in range(first, first + n)]))
    return docs


def _bucket(
    device: str, boot: int, place: str, first: int, entries: list[tuple[Mapping[str, Any], int]]
) -> Doc:
    """A bucket's fields as columns, one array per field, in seq order (as MongoDB's time-series
    buckets store them: FerretDB spends about half as much per reading as on an array of
    sub-documents, bench/readings_layout.py). A field not every reading has (`device_ts`) is a column
    with null where a reading lacks it. Built column by column from the readings (a dict per reading
    first cost ~4 us a reading of the worker's CPU, py-spy, issue #24)."""
    readings = [r for r, _ in entries]
    columns: dict[str, list[Any]] = {}
    if len(entries) == 1:  # live traffic: a reading per device per batch
        ((r, src),) = entries
        for name, kind in _COLUMN_KINDS:
            columns[name] = [DatetimeMS(r[name]) if kind is _DATE else src if kind is _SRC else r.get(name)]
    else:
        for name, kind in _COLUMN_KINDS:
            if kind is _DATE:
                columns[name] = [DatetimeMS(r[name]) for r in readings]
            elif kind is _SRC:
                columns[name] = [src for _, src in entries]
            else:
                columns[name] = [r.get(name) for r in readings]
    stamps = columns["ts"]
    doc: Doc = {
        "_id": bucket_id(device, boot, first, len(entries)),
        "device": device,
        "place": place,
        "boot": boot,
        "seq": first,
        "n": len(entries),
        "start": min(stamps, key=_ms),
        "end": max(stamps, key=_ms),
    }
    doc.update(columns)
    extra = [r.keys() - _PLAIN for r in readings if not r.keys() <= _PLAIN]
    for name in sorted(set().union(*extra)):
        doc[name] = [r.get(name) for r in readings]
    return doc


def _ms(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, DatetimeMS):
        return int(value)
    return value if isinstance(value, int) else 0


def unpack(doc: Mapping[str, Any]) -> list[Doc]:
    """The readings a stored document holds, each flat as revision 3 stored it (`_id` its reading id,
    dates as stored). Stored documents are input: what is not a bucket's or a reading's shape comes out
    as far as it goes (the caller checks the fields it uses: backend/stored.py)."""
    if not is_bucket(doc):  # revision 3: the document is the reading
        return [dict(doc)]
    n, first = doc.get("n"), doc.get("seq")
    if type(n) is not int or type(first) is not int or not 0 < n <= BUCKET_MAX:
        return []
    columns = {k: v for k, v in doc.items() if isinstance(v, list)}
    top = {k: doc.get(k) for k in _TOP}
    device, boot = top["device"], top["boot"]
    out: list[Doc] = []
    for i in range(n):
        reading = {**top, "seq": first + i}
        for name, values in columns.items():
            value = values[i] if i < len(values) else None
            if value is not None or name in COLUMNS:
                reading[name] = value
        reading["_id"] = (
            contract.reading_id(device, boot, first + i)
            if isinstance(device, str) and type(boot) is int
            else f"{doc.get('_id')}[{i}]"
        )
        out.append(reading)
    return out


def is_bucket(doc: Mapping[str, Any]) -> bool:
    return "n" in doc


def written_mark(db: Database[Doc], topic: str, partition: int) -> int:
    """The highest offset of `topic`'s `partition` whose readings may be stored (-1: none)."""
    doc = db[MARKS].find_one({"_id": f"{topic}:{partition}"})
    offset = doc.get("offset") if doc is not None else None
    # An int64 comes back as bson.int64.Int64, an int subclass.
    return int(offset) if isinstance(offset, int) and not isinstance(offset, bool) else -1


def mark_written(db: Database[Doc], topic: str, offsets: Mapping[int, int]) -> None:
    """Record, before writing them, how far each partition's readings go (`$max`: never lowered)."""
    for partition, offset in sorted(offsets.items()):
        db[MARKS].update_one({"_id": f"{topic}:{partition}"}, {"$max": {"offset": offset}}, upsert=True)


def unmigrated(db: Database[Doc]) -> bool:
    """Revision 3 documents are there and no revision 4 writer or migration has run on this database
    (no marks): the hint to run `iot readings migrate`. Cheap whenever it says no (a scan only of a
    collection no revision 4 backend has written to)."""
    if db[MARKS].find_one({}, {"_id": 1}) is not None:
        return False
    return (
        collection(db).find_one({"n": {"$exists": False}, "seq": {"$exists": True}}, {"_id": 1}) is not None
    )


# --- reading ---------------------------------------------------------------------------------------
def find(coll: Collection[Doc], rids: Iterable[str]) -> dict[str, Doc]:
    """Stored readings by reading id (`contract.reading_id`); absent ids are absent. Each id costs at
    most len(SIZES) `{_id}` finds (the only filter FerretDB answers from an index); ids of one bucket
    share its find."""
    fetched: dict[str, Mapping[str, Any] | None] = {}
    found: dict[str, Doc] = {}
    for rid in rids:
        ident = parse_id(rid)
        if ident is None:
            continue
        for hid in holders(*ident):
            if hid not in fetched:
                fetched[hid] = coll.find_one({"_id": hid})
            doc = fetched[hid]
            if doc is None:
                continue
            held = next((r for r in unpack(doc) if r["_id"] == rid), None)
            if held is not None:
                found[rid] = held
                break
    return found


def in_range(coll: Collection[Doc], key_field: str, key: str, start_ms: int, end_ms: int) -> list[Doc]:
    """Every stored reading of a device (`key_field` "device") or a place ("place") with event time in
    [start_ms, end_ms), each identity once. On FerretDB this reads the whole collection (the filter is
    no `_id`); on MongoDB the (device, start) and (place, start) indexes serve it."""
    start, end = DatetimeMS(start_ms), DatetimeMS(end_ms)
    query = {
        "$or": [
            {key_field: key, "start": {"$lt": end}, "end": {"$gte": start}},
            {key_field: key, "n": {"$exists": False}, "ts": {"$gte": start, "$lt": end}},
        ]
    }
    return [
        r
        for r in distinct(coll.find(query))
        if r.get(key_field) == key and start_ms <= _ms(r.get("ts")) < end_ms
    ]


def distinct(docs: Iterable[Mapping[str, Any]]) -> Iterator[Doc]:
    """The readings of stored documents, each identity once."""
    seen: set[str] = set()
    for doc in docs:
        for r in unpack(doc):
            if r["_id"] not in seen:
                seen.add(r["_id"])
                yield r


def every_copy(coll: Collection[Doc], devices: Iterable[str] | None = None) -> Iterator[Doc]:
    """Every stored reading (of `devices`, if given) with its copies: for accounting that checks copies
    are identical."""
    query: Doc = {} if devices is None else {"device": {"$in": sorted(set(devices))}}
    for doc in coll.find(query, batch_size=5_000):
        yield from unpack(doc)


def readings(coll: Collection[Doc], devices: Iterable[str] | None = None) -> Iterator[Doc]:
    """Every stored reading (of `devices`, if given), each identity once."""
    query: Doc = {} if devices is None else {"device": {"$in": sorted(set(devices))}}
    return distinct(coll.find(query, batch_size=5_000))


def count(coll: Collection[Doc], devices: Iterable[str] | None = None) -> int:
    """Readings held (of `devices`, if given), counted by the server (a copy would count twice: there
    are none, module doc)."""
    match: Doc = {} if devices is None else {"device": {"$in": sorted(set(devices))}}
    held = coll.aggregate(
        [{"$match": {**match, "n": {"$exists": True}}}, {"$group": {"_id": None, "n": {"$sum": "$n"}}}]
    )
    in_buckets = sum(int(g["n"]) for g in held)
    return in_buckets + coll.count_documents({**match, "n": {"$exists": False}})


def ensure_indexes(coll: Collection[Doc]) -> None:
    """Indexes for users' time-range queries on MongoDB (FerretDB 1.24 keeps but never uses them)."""
    coll.create_index([("device", ASCENDING), ("start", ASCENDING)])
    coll.create_index([("place", ASCENDING), ("start", ASCENDING)])


# --- migration ---------------------------------------------------------------------------------
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
    (until then, a killed chunk's readings may be held twice: readers here take each once), and a
    finished migration finds nothing to do. Its first step raises the written marks (`MARKS`) of
    `topic`'s partitions to the records the readings came from (`progress` is called then with
    `marked` set): from then on a revision 4 backend may run beside it (it reads both shapes, and a
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
    fields = {name: 1 for name in (*_TOP, "seq", *DATES, "src")}
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


_V3_FIELDS: Final = frozenset({"_id", "src", *_TOP, "seq", *COLUMNS, "device_ts"})


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
            reading[name] = _ms(reading[name])
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
