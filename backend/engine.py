"""One aggregation scope (per sensor or per place) driven batch by batch, independent of Faust.

The runtime hands a batch of validated readings (with the Kafka partition and offset each came from)
to `ScopeEngine.process`, and calls `expire` on a timer; both return an `Outputs` describing what to
write (window documents, new distinct readings, late readings for the DLQ) and which key states changed.
The runtime writes the outputs first and the changed states after, so a crash between the two replays
into states that do not yet hold the batch, and the idempotent writes absorb the repetition.

Amendments (readings for windows already closed, within the allowed lateness) are not applied from
memory: `process` lists them in `Outputs.amends`, the runtime loads those window documents from the
store, and `amend` adds the readings to them (`revision` + 1, `late_count` + n). The document's
`offset` (highest input offset counted) makes that read-modify-write idempotent: a key's readings come
from one partition in offset order, so after a crash a replayed reading at or below it is already in.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from iot import contract

from .accumulators import WindowAcc
from .records import SENSOR, late_record, window_doc
from .windows import KeyState, WindowKey, WindowSpec, idle_watermark

# Input older than this (received_at against the wall clock) means the worker is working off a backlog.
BEHIND_MS = 60_000
StateLoader = Callable[[str], Mapping[str, Any] | None]
# One input item: a validated reading, its Kafka partition and its offset there.
Item = tuple[Mapping[str, Any], int, int]


@dataclass(slots=True)
class Amendment:
    """Late readings (with their input offsets) to add to one closed window's stored document."""

    key: str
    place: str
    wkey: WindowKey
    readings: list[tuple[Mapping[str, Any], int]] = field(default_factory=list)


@dataclass(slots=True)
class Outputs:
    open_docs: list[dict[str, Any]] = field(default_factory=list)
    final_docs: list[dict[str, Any]] = field(default_factory=list)
    amends: dict[str, Amendment] = field(default_factory=dict)  # window _id -> what to add
    amended_docs: list[dict[str, Any]] = field(default_factory=list)  # filled by ScopeEngine.amend
    amended_readings: int = 0  # readings counted into closed windows (once per window)
    readings: list[dict[str, Any]] = field(default_factory=list)  # distinct, first time seen
    late: list[dict[str, Any]] = field(default_factory=list)  # DLQ records
    duplicates: int = 0
    processed: int = 0
    changed: dict[str, KeyState] = field(default_factory=dict)  # key -> state to persist


class ScopeEngine:
    """Window state of every key of one scope this worker owns, with a cache over the persisted form."""

    def __init__(
        self,
        scope: str,
        specs: Sequence[WindowSpec],
        grace_ms: int,
        idle_timeout_ms: int,
        load: StateLoader,
        open_write_ms: int = 0,
        allowed_lateness_ms: int = 0,
        max_clock_ahead_ms: int | None = None,
    ) -> None:
        self.scope = scope
        self.specs = tuple(specs)
        self.grace_ms = grace_ms
        self.allowed_lateness_ms = allowed_lateness_ms
        # None: no cap (unit tests with event time far from the wall clock).
        self.max_clock_ahead_ms = max_clock_ahead_ms
        self.idle_timeout_ms = idle_timeout_ms
        self._load = load
        self._cache: dict[str, KeyState] = {}
        # Wall time of the last reading per key, in memory only: after a restart every key gets a full
        # idle timeout again, so the readings replayed after recovery land before any idle close.
        self._last_wall: dict[str, int] = {}
        self._key_field = "device" if scope == SENSOR else "place"
        # Open windows are progress views: each key's are rewritten at most every open_write_ms, which
        # bounds MongoDB writes under a backlog; final documents are always written at once.
        self.open_write_ms = open_write_ms
        self._dirty: dict[str, set[WindowKey]] = {}
        self._open_written: dict[str, int] = {}
        # received_at of each key's latest reading. While a key's input is more than BEHIND_MS old
        # (a backlog: after an outage, a restart, a slow worker) its open windows are not rewritten at
        # all: a view that far behind is of no use, and each rewrite is one MongoDB statement (~1-5 ms
        # on FerretDB) where a final document is a batched insert. Measured in the backlog of
        # bench/backend_throughput.py (20k readings): sensor window writes 113 s -> 0.6 s.
        self._received: dict[str, int] = {}
        # The latest received_at processed per input partition: how far that partition's input has
        # come. A key is idle only if it got nothing for the idle timeout of this time too while its
        # partition has unread input (expire's `behind`), not of the wall clock alone.
        self._partition_rx: dict[int, int] = {}
        # Per input partition, how far event time may go for its keys (set by the runtime: the place
        # scope holds its windows until every source partition's input has passed them, so a backlog
        # read unevenly across source partitions is merged in order instead of amended), and the keys
        # whose watermark such a hold keeps behind their highest ts (moved on by `_release`).
        self.holds: dict[int, int] = {}
        self._held: set[str] = set()

    def state(self, key: str, partition: int) -> KeyState:
        st = self._cache.get(key)
        if st is None:
            data = self._load(key)
            st = KeyState.from_json(data) if data is not None else KeyState(partition)
            self._cache[key] = st
            if st.held:
                self._held.add(key)
        st.partition = partition
        return st

    @staticmethod
    def _fence(doc: Mapping[str, Any]) -> int:
        """A stored window document's replay fence: the highest input offset it counted."""
        return int(doc.get("offset", -1))

    def forget(self) -> None:
        """Drop the cache (after a rebalance the persisted states are the truth again)."""
        self._cache.clear()
        self._dirty.clear()
        self._held.clear()

    def _cap(self, now_ms: int, partition: int | None = None) -> int | None:
        """The furthest a key's watermark may go: the wall clock + the clock-ahead bound, and the
        hold of the key's input partition."""
        cap = None if self.max_clock_ahead_ms is None else now_ms + self.max_clock_ahead_ms
        hold = self.holds.get(partition) if partition is not None else None
        if hold is not None and (cap is None or hold < cap):
            cap = hold
        return cap

    def _release(self, out: Outputs, now_ms: int) -> None:
        """Move held keys' watermarks on as far as their caps allow now, closing what they pass."""
        for key in list(self._held):
            st = self._cache.get(key)
            if st is None:
                self._held.discard(key)
                continue
            if st.release(self._cap(now_ms, st.partition)):
                self._close(key, st, out, now_ms, None)
            if not st.held:
                self._held.discard(key)

    def process(
        self, batch: Iterable[Item], now_ms: int, holds_after: dict[int, int] | None = None
    ) -> Outputs:
        """Count a batch in; `holds_after` replaces `holds` once the batch is in (the holds the batch's
        own watermarks records set: they cover the readings before them, so the batch's readings are
        counted under the holds that were in force before it, which are lower)."""
        out = Outputs()
        touched: dict[str, set[WindowKey]] = {}
        last_updated: dict[str, list[WindowKey]] = {}
        holds = self.holds
        caps = {p: self._cap(now_ms, p) for p in holds}
        cap_any = self._cap(now_ms)
        for reading, partition, offset in batch:
            cap = caps.get(partition, cap_any) if holds else cap_any
            out.processed += 1
            key = reading[self._key_field]
            st = self.state(key, partition)
            self._last_wall[key] = now_ms
            rx = self._received[key] = reading.get("received_at", now_ms)
            if rx > self._partition_rx.get(partition, rx - 1):
                self._partition_rx[partition] = rx
            wm_before = st.watermark
            result = st.add(reading, self.specs, self.grace_ms, self.allowed_lateness_ms, cap, offset)
            if result.duplicate:
                out.duplicates += 1
                continue
            if holds and st.held:
                self._held.add(key)
            out.changed[key] = st
            if self.scope == SENSOR:
                out.readings.append(dict(reading))
            if result.late:
                out.late.append(late_record(self.scope, reading, result.late))
            for wkey in result.amend:
                wid = contract.window_id(key, wkey.kind, wkey.size_ms // 1000, wkey.start)
                amendment = out.amends.get(wid)
                if amendment is None:
                    amendment = out.amends[wid] = Amendment(key, st.last_place, wkey)
                amendment.readings.append((reading, offset))
            if result.updated and last_updated.get(key) is not result.updated:
                # The same list again: the reading's pane had the same open windows as the last one.
                touched.setdefault(key, set()).update(result.updated)
                last_updated[key] = result.updated
            if st.watermark != wm_before:
                # Close at once, not at the end of the batch: whether a reading is on time or an
                # amendment then depends on the order of the input only, never on where batches
                # happened to be cut (a replay after a crash cuts them elsewhere).
                self._close(key, st, out, now_ms, None)
        if holds_after is not None:
            self.holds = holds_after
            self._release(out, now_ms)
        for key, wkeys in touched.items():
            st = self._cache[key]
            self._dirty.setdefault(key, set()).update(wkeys)
            self._write_open(key, st, out, now_ms, force=False)
        return out

    def amend(self, out: Outputs, stored: Mapping[str, Mapping[str, Any]], now_ms: int) -> None:
        """Apply `out.amends` to the stored documents (by `_id`; a window absent from `stored` never
        opened and is created, directly final), filling `out.amended_docs`."""
        # A window can close and take a late reading within one batch: its final document is then
        # still in this batch's outputs, not yet stored. Of the two, the one with the higher fence
        # is the more advanced (after a crash the stored one can be ahead of the replay).
        batch_finals = {d["_id"]: d for d in out.final_docs}
        for wid, amendment in out.amends.items():
            bases = [d for d in (batch_finals.get(wid), stored.get(wid)) if d is not None]
            doc = max(bases, key=self._fence) if bases else None
            if doc is None:
                acc, revision, late_count = WindowAcc(), -1, 0
            else:
                acc = WindowAcc.from_doc(doc)
                revision, late_count = int(doc.get("revision", 0)), int(doc.get("late_count", 0))
            fence = acc.offset
            added = 0
            for reading, offset in amendment.readings:
                if 0 <= offset <= fence:
                    continue  # counted before a crash: the document already holds it
                acc.add(reading, offset)
                added += 1
            if not added:
                continue
            out.amended_readings += added
            place = doc["place"] if doc is not None and self.scope == SENSOR else amendment.place
            out.amended_docs.append(
                window_doc(
                    self.scope,
                    amendment.key,
                    place,
                    amendment.wkey,
                    acc,
                    True,
                    now_ms,
                    revision=revision + 1,
                    late_count=late_count + added,
                )
            )

    def _write_open(self, key: str, st: KeyState, out: Outputs, now_ms: int, force: bool) -> None:
        dirty = self._dirty.get(key)
        if not dirty:
            return
        if not force and now_ms - self._open_written.get(key, -(10**15)) < self.open_write_ms:
            return
        if not force and now_ms - self._received.get(key, now_ms) > BEHIND_MS:
            return  # behind: the windows stay dirty and go out final, or open once caught up
        for wkey in sorted(dirty, key=lambda k: (k.start, k.kind)):
            acc = st.window_acc(wkey)
            if acc is not None:  # a window closed meanwhile was written as final
                out.open_docs.append(
                    window_doc(
                        self.scope,
                        key,
                        st.last_place,
                        wkey,
                        acc,
                        False,
                        now_ms,
                    )
                )
        del self._dirty[key]
        self._open_written[key] = now_ms

    def expire(
        self, now_ms: int, partitions: set[int], keys: Iterable[str], behind: Collection[int] = ()
    ) -> Outputs:
        """Close the windows of keys gone quiet for the idle timeout (wall clock), on owned partitions.

        On a partition in `behind` (input not read yet) a key must also have been quiet for the idle
        timeout of that partition's input (received_at): a wall-clock silence there means only that
        the worker has not reached the key's next readings. Closing then turned every one of them into
        an amendment (one more MongoDB statement per window): in a 2,000-board soak, after the
        backend's restart, the sensor scope counted 233k readings into windows already final
        (amendments, per window) against 67k readings processed, and stayed behind."""
        out = Outputs()
        self._release(out, now_ms)
        for key in list(self._dirty):
            st = self._cache.get(key)
            if st is None or st.partition not in partitions:
                self._dirty.pop(key, None)
                continue
            self._write_open(key, st, out, now_ms, force=False)
        for key in set(keys) | set(self._cache):
            st = self._cache.get(key)
            if st is None:
                data = self._load(key)
                if data is None:
                    continue
                st = self._cache[key] = KeyState.from_json(data)
            if st.partition not in partitions or not st.open or st.watermark is None:
                continue
            last = self._last_wall.setdefault(key, now_ms)
            idle_for = now_ms - last
            if st.partition in behind:
                seen, reached = self._received.get(key), self._partition_rx.get(st.partition)
                if seen is None or reached is None:
                    continue  # nothing of this key read since a restart: its input is still ahead
                idle_for = min(idle_for, reached - seen)
            wm = idle_watermark(st.watermark, idle_for, self.idle_timeout_ms)
            cap = self._cap(now_ms, st.partition)
            if wm is not None and cap is not None:
                wm = min(wm, cap)
            if wm is None or min(k.end for k in st.open) + self.grace_ms > wm:
                continue
            self._close(key, st, out, now_ms, wm)
        return out

    def _close(self, key: str, st: KeyState, out: Outputs, now_ms: int, wm: int | None) -> list[Any]:
        closed = st.close_ready(self.grace_ms, wm)
        dirty = self._dirty.get(key)
        if dirty:
            dirty.difference_update(c.key for c in closed)
        if closed:
            out.changed[key] = st
        for c in closed:
            out.final_docs.append(window_doc(self.scope, key, st.last_place, c.key, c.acc, True, now_ms))
        return closed
