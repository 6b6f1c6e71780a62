"""One aggregation scope (per sensor or per place) driven batch by batch, independent of Faust.

The runtime hands a batch of validated readings (with the Kafka partition each came from) to
`ScopeEngine.process`, and calls `expire` on a timer; both return an `Outputs` describing what to write
(window documents, new distinct readings, late readings for the DLQ) and which key states changed.
The runtime writes the outputs first and the changed states after, so a crash between the two replays
into states that do not yet hold the batch, and the idempotent writes absorb the repetition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .records import SENSOR, late_record, window_doc
from .windows import KeyState, WindowKey, WindowSpec, idle_watermark

StateLoader = Callable[[str], Mapping[str, Any] | None]


@dataclass(slots=True)
class Outputs:
    open_docs: list[dict[str, Any]] = field(default_factory=list)
    final_docs: list[dict[str, Any]] = field(default_factory=list)
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
    ) -> None:
        self.scope = scope
        self.specs = tuple(specs)
        self.grace_ms = grace_ms
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

    def state(self, key: str, partition: int) -> KeyState:
        st = self._cache.get(key)
        if st is None:
            data = self._load(key)
            st = KeyState.from_json(data) if data is not None else KeyState(partition)
            self._cache[key] = st
        st.partition = partition
        return st

    def forget(self) -> None:
        """Drop the cache (after a rebalance the persisted states are the truth again)."""
        self._cache.clear()
        self._dirty.clear()

    def process(self, batch: Iterable[tuple[Mapping[str, Any], int]], now_ms: int) -> Outputs:
        out = Outputs()
        touched: dict[str, set[WindowKey]] = {}
        for reading, partition in batch:
            out.processed += 1
            key = reading[self._key_field]
            st = self.state(key, partition)
            self._last_wall[key] = now_ms
            result = st.add(reading, self.specs, self.grace_ms)
            if result.duplicate:
                out.duplicates += 1
                continue
            out.changed[key] = st
            if self.scope == SENSOR:
                out.readings.append(dict(reading))
            if result.late:
                out.late.append(late_record(self.scope, reading, result.late))
            if result.updated:
                touched.setdefault(key, set()).update(result.updated)
        for key, wkeys in touched.items():
            st = self._cache[key]
            self._dirty.setdefault(key, set()).update(wkeys)
            self._close(key, st, out, now_ms, None)
            self._write_open(key, st, out, now_ms, force=False)
        return out

    def _write_open(self, key: str, st: KeyState, out: Outputs, now_ms: int, force: bool) -> None:
        dirty = self._dirty.get(key)
        if not dirty:
            return
        if not force and now_ms - self._open_written.get(key, -(10**15)) < self.open_write_ms:
            return
        for wkey in sorted(dirty, key=lambda k: (k.start, k.kind)):
            acc = st.windows.get(wkey)
            if acc is not None:  # a window closed meanwhile was written as final
                out.open_docs.append(window_doc(self.scope, key, st.last_place, wkey, acc, False, now_ms))
        del self._dirty[key]
        self._open_written[key] = now_ms

    def expire(self, now_ms: int, partitions: set[int], keys: Iterable[str]) -> Outputs:
        """Close the windows of keys gone quiet for the idle timeout (wall clock), on owned partitions."""
        out = Outputs()
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
            if st.partition not in partitions or not st.windows or st.watermark is None:
                continue
            last = self._last_wall.setdefault(key, now_ms)
            wm = idle_watermark(st.watermark, now_ms - last, self.idle_timeout_ms)
            if wm is None or min(k.end for k in st.windows) + self.grace_ms > wm:
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
