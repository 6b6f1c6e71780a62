"""The `readings` collection's layout (contract revision 4): the one module that shapes, writes and reads
its documents (iot/readings_migration.py, which rewrites revision 3's, writes buckets packed here).

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
one: the backend and every reader work before, during and after the migration that rewrites them as
revision 4 buckets (iot/readings_migration.py, `iot readings migrate`; idempotent, and resumable after
a kill at any point through a journal).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from bson.datetime_ms import DatetimeMS
from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database

from iot import contract

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
TOP: Final = ("device", "place", "boot")
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
_PLAIN: Final = frozenset((*TOP, "seq", *COLUMNS)) - {"src"}
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
    # From the readings' epoch ms, not from the column's dates (`epoch_ms` per date through min and max
    # was a quarter of packing).
    if len(readings) == 1:
        first_ts = last_ts = readings[0]["ts"]
    else:
        stamps = [r["ts"] for r in readings]
        first_ts, last_ts = min(stamps), max(stamps)
    doc: Doc = {
        "_id": bucket_id(device, boot, first, len(entries)),
        "device": device,
        "place": place,
        "boot": boot,
        "seq": first,
        "n": len(entries),
        "start": DatetimeMS(first_ts),
        "end": DatetimeMS(last_ts),
    }
    doc.update(columns)
    extra = [r.keys() - _PLAIN for r in readings if not r.keys() <= _PLAIN]
    for name in sorted(set().union(*extra)):
        doc[name] = [r.get(name) for r in readings]
    return doc


def epoch_ms(value: Any) -> int:
    """A stored date (datetime, or DatetimeMS as the client may return it) or epoch ms as epoch ms; 0 for
    anything else."""
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
    top = {k: doc.get(k) for k in TOP}
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
        if r.get(key_field) == key and start_ms <= epoch_ms(r.get("ts")) < end_ms
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
    """Indexes for users' time-range queries on MongoDB (the backend makes them on MongoDB only: FerretDB
    1.24 never uses them and would keep them on every write, backend/mongo_sink.py)."""
    coll.create_index([("device", ASCENDING), ("start", ASCENDING)])
    coll.create_index([("place", ASCENDING), ("start", ASCENDING)])
