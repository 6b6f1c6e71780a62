"""One aggregation scope (per sensor or per place) driven batch by batch, independent of Faust.

The runtime hands a batch of validated readings (with the Kafka partition and offset each came from)
to `ScopeEngine.process`, and calls `expire` on a timer; both return an `Outputs` describing what to
write (window documents, new distinct readings, late readings for the DLQ) and which key states changed.
The runtime writes the outputs first and the changed states after, so a crash between the two replays
into states that do not yet hold the batch, and the idempotent writes absorb the repetition. When a
batch cannot be completed as it is (a record the engine fails on, an answer it needs first), the
runtime drops the states it changed (`rollback`) and processes the batch again: the persisted states
are the truth, so the cache never holds what was not written.

Each reading is counted once. Every item carries its *origin*, the iot.readings record it came from
(for the place scope, the one the sensor scope forwarded it from): a record at or below its key's
fence for that partition was counted already (a replay after a crash or a rebalance). Otherwise the
sensor scope asks its device's memory of (boot, seq) identities (`KeyState.mark_seen`); for what that
bounded memory forgot, the `readings` collection is the authority: `process` lists those identities in
`Outputs.lookups`, the runtime reads them (`known`: the origin each was stored from, or None) and runs
the batch again. A reading stored from its own origin is a replay of it; from another, a duplicate.
The place scope counts what the sensor scope forwards: each distinct reading once per origin, so its
fences are all it needs.

Amendments (readings for windows already closed, within the allowed lateness) are not applied from
memory: `process` lists them in `Outputs.amends`, and the runtime applies them to the stored window
documents (`amend`: backend/amendments.py says how).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from iot import contract

from . import amendments
from .batch_io import Amendment, Item, Origin, Outputs
from .errors import BackendError
from .records import SENSOR, late_record, window_doc
from .stored import Rebuilt
from .windows import DUPLICATE, UNKNOWN, KeyState, WindowKey, WindowSpec, idle_watermark

# The batch's items and outputs (backend/batch_io.py) are re-exported: callers know them as the engine's.
__all__ = [
    "BEHIND_MS",
    "OPEN_DOCS_MAX",
    "Amendment",
    "Item",
    "ItemFailed",
    "Origin",
    "Outputs",
    "ScopeEngine",
    "StateLoader",
]

# Input older than this (received_at against the wall clock) means the worker is working off a backlog.
BEHIND_MS = 60_000
# Open documents written per batch or tick at most (ScopeEngine.open_docs_max): each is one `{_id}`
# statement on FerretDB, ~1.7 ms in the 2,000-board soak, so ~0.2 s: a tick's share of the pacer's budget.
OPEN_DOCS_MAX = 120
StateLoader = Callable[[str], Mapping[str, Any] | None]


class ItemFailed(BackendError):
    """The engine failed on one item of a batch (a bug, or input nothing else rejected): the runtime
    rolls back `keys`, sets the item aside and processes the rest again."""

    def __init__(self, index: int, error: Exception, keys: set[str]) -> None:
        super().__init__(f"item {index}: {type(error).__name__}: {error}")
        self.index = index
        self.error = error
        self.keys = keys


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
        source_topic: str = contract.TOPIC_READINGS,
    ) -> None:
        self.scope = scope
        self.specs = tuple(specs)
        self.grace_ms = grace_ms
        self.allowed_lateness_ms = allowed_lateness_ms
        # None: no cap (unit tests with event time far from the wall clock).
        self.max_clock_ahead_ms = max_clock_ahead_ms
        self.idle_timeout_ms = idle_timeout_ms
        self.source_topic = source_topic  # where origins are (DLQ records name it)
        self._load = load
        self._cache: dict[str, KeyState] = {}
        # Wall time of the last reading per key, in memory only: after a restart every key gets a full
        # idle timeout again, so the readings replayed after recovery land before any idle close.
        self._last_wall: dict[str, int] = {}
        self._key_field = "device" if scope == SENSOR else "place"
        # Open windows are progress views: each key's are rewritten at most every open_write_ms, which
        # bounds MongoDB writes under a backlog; final documents are always written at once.
        self.open_write_ms = open_write_ms
        # At most this many open documents per batch or tick: a tick once rewrote every key of a
        # 2,000-board fleet at once (all came due together: ~12,000 statements, 11-22 s holding the
        # scope's lock while the readings waited). Keys left over stay dirty, the longest unwritten
        # first at the next call; the pacer spaces the interval while any are left over.
        self.open_docs_max = OPEN_DOCS_MAX
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

    def forget(self) -> None:
        """Drop the cache (after a rebalance the persisted states are the truth again)."""
        self._cache.clear()
        self._dirty.clear()
        self._held.clear()

    def rollback(self, keys: Iterable[str]) -> None:
        """Drop what a batch changed in these keys' states: they are read from the persisted form
        again (written only after a batch's outputs were)."""
        for key in keys:
            self._cache.pop(key, None)
            self._dirty.pop(key, None)
            self._held.discard(key)

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
        self,
        batch: Sequence[Item],
        now_ms: int,
        known: Mapping[str, Origin | None] | None = None,
        holds_after: dict[int, int] | None = None,
        holds_before: dict[int, int] | None = None,
    ) -> Outputs:
        """Count a batch. `known`: the `readings` collection's answers for the identities a previous
        pass of this batch listed in `lookups` (the origin each reading was stored from, None if it is
        not stored). `holds_after` replaces `holds` once the batch is in (the holds the batch's own
        watermarks records set: they cover the readings before them, so the batch's readings are
        counted under the holds that were in force before it, which are lower). `holds_before`, when
        given, are those: the runtime computes them from the watermarks records received before the
        batch, since `holds` is set only by a previous batch or the idle tick, and is empty - no hold -
        until one of them ran (a first place batch after a start or a rebalance). Raises ItemFailed if
        it fails on an item."""
        out = Outputs()
        touched: dict[str, set[WindowKey]] = {}
        last_updated: dict[str, list[WindowKey]] = {}
        if holds_before is not None:
            self.holds = holds_before
        holds = self.holds
        caps = {p: self._cap(now_ms, p) for p in holds}
        cap_any = self._cap(now_ms)
        sensor = self.scope == SENSOR
        answers = dict(known) if known else {}
        # Identities counted in this batch, made at the first one the memory forgot (rarely needed).
        counted: set[str] | None = None
        # Per item, what the loop touches on self and out, looked up once (this loop runs once per
        # reading in each scope).
        cache, key_field, keys = self._cache, self._key_field, out.keys
        last_wall, received, partition_rx = self._last_wall, self._received, self._partition_rx
        for index, item in enumerate(batch):
            try:
                reading, partition, offset, origin, _ = item
                cap = caps.get(partition, cap_any) if holds else cap_any
                key = reading[key_field]
                st = cache.get(key)
                if st is None:
                    st = self.state(key, partition)
                else:
                    st.partition = partition
                keys.add(key)
                last_wall[key] = now_ms
                rx = received[key] = reading.get("received_at", now_ms)
                if rx > partition_rx.get(partition, rx - 1):
                    partition_rx[partition] = rx
                if origin is None:
                    origin = (partition, offset)
                src_partition, src_offset = origin
                fence = st.fences.get(src_partition, -1)
                if 0 <= src_offset <= fence:
                    out.duplicates += 1  # a replay: this record was counted before
                    continue
                if sensor:
                    seen = st.mark_seen(reading["boot"], reading["seq"])
                    if seen == DUPLICATE:
                        out.duplicates += 1
                        out.dup_checks.append(item)
                        continue
                    if seen == UNKNOWN or counted is not None:
                        rid = contract.reading_id(key, reading["boot"], reading["seq"])
                        if counted is None:  # each counted reading under its own device
                            counted = {
                                contract.reading_id(i.reading["device"], i.reading["boot"], i.reading["seq"])
                                for i in out.readings
                            }
                        if seen == UNKNOWN:
                            if rid in counted:
                                out.duplicates += 1
                                out.dup_checks.append(item)
                                continue
                            if rid not in answers:
                                out.lookups.add(rid)
                                continue
                            stored_from = answers[rid]
                            if stored_from is not None and tuple(stored_from) != origin:
                                out.duplicates += 1
                                out.dup_checks.append(item)
                                continue
                        counted.add(rid)
                    out.readings.append(item)
                if src_offset > fence:
                    st.fences[src_partition] = src_offset
                out.changed[key] = st
                wm_before = st.watermark
                result = st.add(reading, self.specs, self.grace_ms, self.allowed_lateness_ms, cap, offset)
                if holds and st.held:
                    self._held.add(key)
                if result.late:
                    out.late.append(late_record(self.scope, reading, result.late, self._source(item)))
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
            except Exception as exc:
                raise ItemFailed(index, exc, out.keys) from exc
        out.processed = len(batch)
        if out.lookups:
            return out  # to be processed again once answered: nothing else of this pass may stay
        if holds_after is not None:
            self.holds = holds_after
            self._release(out, now_ms)
        for key, wkeys in touched.items():
            st = self._cache[key]
            self._dirty.setdefault(key, set()).update(wkeys)
            self._write_open(key, st, out, now_ms, force=False)
        return out

    def _source(self, item: Item) -> dict[str, Any]:
        """A DLQ record's `source` for an item: its iot.readings record."""
        partition, offset = item.source
        device = item.reading.get("device")
        key = device.encode() if isinstance(device, str) else None
        return contract.kafka_source(self.source_topic, partition, offset, key)

    def amend(
        self,
        out: Outputs,
        stored: Mapping[str, Mapping[str, Any]],
        now_ms: int,
        rebuilt: Mapping[str, Rebuilt] | None = None,
    ) -> None:
        """Apply `out.amends` to the stored documents of this scope's windows (amendments.apply)."""
        amendments.apply(self.scope, out, stored, now_ms, rebuilt)

    def _write_open(self, key: str, st: KeyState, out: Outputs, now_ms: int, force: bool) -> None:
        dirty = self._dirty.get(key)
        if not dirty:
            return
        if not force and now_ms - self._open_written.get(key, -(10**15)) < self.open_write_ms:
            return
        if not force and now_ms - self._received.get(key, now_ms) > BEHIND_MS:
            return  # behind: the windows stay dirty and go out final, or open once caught up
        if not force and len(out.open_docs) >= self.open_docs_max:
            out.open_deferred += 1
            return
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
        never = -(10**15)
        for key in sorted(self._dirty, key=lambda k: self._open_written.get(k, never)):
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
        if not closed:
            return closed
        dirty = self._dirty.get(key)
        if dirty:
            dirty.difference_update(c.key for c in closed)
        if closed:
            out.changed[key] = st
        for c in closed:
            out.final_docs.append(window_doc(self.scope, key, st.last_place, c.key, c.acc, True, now_ms))
        return closed
