"""Event-time window semantics, independent of any runtime: the part of the backend that must be exact.

A *key* (a device, or a place) owns a `KeyState`: its watermark (the highest `ts` it has seen), its open
windows, and what it needs to count each reading once: the input it has already taken (`fences`) and,
for a device, the (boot, seq) identities it has counted (`mark_seen`). Windows are aligned to the epoch,
start inclusive, end exclusive. A window is final once the key's watermark reaches `end + grace`; a key
that went quiet has its watermark carried forward by wall-clock time after an idle timeout, so its last
window is final too. A closed window leaves memory: a reading for it that lies within the allowed
lateness of the watermark is an *amendment*, which the caller applies to the stored window document
(it keeps the exact sums, backend/stored.py), so memory per key does not grow with the allowed
lateness. A reading further behind is *late*: it is not added, the caller reports it.

The watermark never passes the caller's wall clock + the clock-ahead bound: one reading from a board
whose clock is years ahead must not make every following reading of its key late.

Sums are kept exactly (backend/accumulators.py), so a mean does not depend on the order readings
arrived in: a replay, a restart or two workers give bit-identical means.

The state serialises to plain JSON-able dicts (`to_json` / `from_json`) for Faust's changelog.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from math import gcd
from typing import Any, Final, NamedTuple

from .accumulators import WindowAcc

TUMBLING: Final = "tumbling"
HOPPING: Final = "hopping"
# De-duplication memory per device: at most this many boots, and this many disjoint seq ranges per boot
# (gaps come from readings still on their way or lost upstream). What is forgotten past these bounds (the
# oldest boots, the lowest ranges) is not guessed at: a reading there is `UNKNOWN`, and the caller asks
# the `readings` collection (engine.py).
MAX_RANGES_PER_BOOT: Final = 256
MAX_BOOTS_PER_DEVICE: Final = 8
# mark_seen's verdicts.
NEW: Final = 0
DUPLICATE: Final = 1
UNKNOWN: Final = 2


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """One window family: tumbling when step equals size, hopping when step is smaller."""

    kind: str
    size_ms: int
    step_ms: int

    def __post_init__(self) -> None:
        if self.size_ms <= 0 or self.step_ms <= 0 or self.step_ms > self.size_ms:
            raise ValueError(f"window needs 0 < step <= size, got size={self.size_ms} step={self.step_ms}")
        if self.size_ms % self.step_ms:
            raise ValueError(f"window size {self.size_ms} ms must be a multiple of step {self.step_ms} ms")

    @property
    def size_s(self) -> int:
        return self.size_ms // 1000

    def starts(self, ts: int) -> range:
        """Starts of every window of this family that contains `ts`, oldest first."""
        last = ts - ts % self.step_ms  # floor, also for negative ts
        first = last - self.size_ms + self.step_ms
        return range(first, last + 1, self.step_ms)


def specs_from_seconds(tumbling_s: int, hopping_s: int, hop_step_s: int) -> tuple[WindowSpec, ...]:
    return (
        WindowSpec(TUMBLING, tumbling_s * 1000, tumbling_s * 1000),
        WindowSpec(HOPPING, hopping_s * 1000, hop_step_s * 1000),
    )


class SeqSet:
    """The seq numbers of one (device, boot) counted, as sorted disjoint closed ranges. Ranges dropped to
    bound the memory were the lowest: every seq up to `floor` that no range holds is unknown."""

    __slots__ = ("floor", "ranges")

    def __init__(self, ranges: list[list[int]] | None = None, floor: int = -1) -> None:
        self.ranges: list[list[int]] = ranges or []
        self.floor = floor

    def add(self, seq: int) -> int:
        """Record seq if it is new: NEW, DUPLICATE (held), or UNKNOWN (forgotten; not recorded)."""
        r = self.ranges
        if not r or seq > r[-1][1]:  # the common case: the next seq of a live board
            if seq <= self.floor:
                return UNKNOWN
            if r and seq == r[-1][1] + 1:
                r[-1][1] = seq
            else:
                r.append([seq, seq])
                self._bound()
            return NEW
        lo, hi = 0, len(r)
        while lo < hi:  # first range whose end >= seq
            mid = (lo + hi) // 2
            if r[mid][1] < seq:
                lo = mid + 1
            else:
                hi = mid
        i = lo
        if r[i][0] <= seq:
            return DUPLICATE
        if seq <= self.floor:
            return UNKNOWN
        joins_prev = i > 0 and r[i - 1][1] == seq - 1
        joins_next = r[i][0] == seq + 1
        if joins_prev and joins_next:
            r[i - 1][1] = r[i][1]
            del r[i]
        elif joins_prev:
            r[i - 1][1] = seq
        elif joins_next:
            r[i][0] = seq
        else:
            r.insert(i, [seq, seq])
            self._bound()
        return NEW

    def __contains__(self, seq: int) -> bool:
        return any(a <= seq <= b for a, b in self.ranges)

    def _bound(self) -> None:
        if len(self.ranges) > MAX_RANGES_PER_BOOT:
            # Forget the lowest range and the gap below it: seqs there become UNKNOWN, never "seen".
            self.floor = self.ranges.pop(0)[1]


class WindowKey(NamedTuple):
    """A window of one spec: (kind, size, step, start). A named tuple, not a frozen dataclass: the
    engine makes, hashes and compares several per reading (set and dict keys), and a tuple does the
    last two in C (creation 0.23 against 0.51 µs, membership in a set 0.05 against 0.28; issue #24)."""

    kind: str
    size_ms: int
    step_ms: int
    start: int

    @property
    def end(self) -> int:
        return self.start + self.size_ms

    def code(self) -> str:
        return f"{self.kind}:{self.size_ms}:{self.step_ms}:{self.start}"

    @classmethod
    def parse(cls, code: str) -> WindowKey:
        kind, size, step, start = code.split(":")
        return cls(kind, int(size), int(step), int(start))


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A window that became final, with its accumulated values."""

    key: WindowKey
    acc: WindowAcc


# Later than any window's end (epoch ms fit 64 bits): no window open.
NEVER: Final = 1 << 64


@dataclass(slots=True)
class AddOutcome:
    """What adding one reading did: the open windows it updated, the closed ones it is to amend (within
    allowed lateness; the caller applies them to the stored documents), and the closed ones it missed
    (late: further behind the watermark than the allowed lateness)."""

    updated: list[WindowKey] = field(default_factory=list)
    amend: list[WindowKey] = field(default_factory=list)
    late: list[WindowKey] = field(default_factory=list)


# The outcome of a key that has no hint yet. Outcomes handed out for a hinted pane are shared by
# every reading of that pane: callers read them, never change them.
_NOTHING: Final = AddOutcome()


class KeyState:
    """Window state of one key (a device or a place) and the readings it has counted.

    Readings are accumulated in *panes*: one accumulator per pane-sized slice of event time (the
    greatest common divisor of every window size and step: 60 s for the default 60 s tumbling and
    300 s / 60 s hopping windows), so a reading updates one accumulator instead of one per window
    containing it (six by default). A window's values are its panes merged (exactly: the sums are
    integers), when it is written. Which windows are open is kept as a set; a window is open from the
    first reading that reaches it until the watermark closes it, so every reading in its panes was
    counted while it was open (a reading whose windows are all closed is not added to its pane; a
    window that is not open and not yet closable is opened by the reading that reaches it, and the
    watermark never goes back, so no pane holds a reading that one of its open windows missed). A pane
    leaves memory when no open window covers it.

    Counting each reading once takes two things. `fences`: per partition of iot.readings, the highest
    offset of a record counted; the engine skips a record at or below it (a replay after a crash or a
    rebalance, whatever the record holds). And, for a device, the (boot, seq) identities counted
    (`mark_seen`), bounded: the oldest boots and lowest ranges are forgotten, never assumed."""

    __slots__ = (
        "_first_end",
        "_hint_outcome",
        "_hint_pane",
        "_json_open",
        "_json_panes",
        "_json_stale",
        "boots",
        "fences",
        "forgot_boot",
        "last_place",
        "open",
        "panes",
        "partition",
        "top",
        "watermark",
    )
    # (specs, pane size) of the last specs seen: the engine passes the same tuple every time.
    _pane_for: tuple[object, int] = (None, 0)

    def __init__(self, partition: int = 0) -> None:
        self.watermark: int | None = None
        # The highest ts counted, before any cap: where the watermark goes once a cap lifts
        # (`release`). Equal to the watermark unless a cap held it back.
        self.top: int | None = None
        self.open: set[WindowKey] = set()
        self.panes: dict[int, WindowAcc] = {}  # pane start -> its readings
        self.boots: dict[int, SeqSet] = {}  # boot -> seqs counted (a device's state only)
        self.forgot_boot = -1  # every boot up to this one that `boots` lacks was forgotten
        self.fences: dict[int, int] = {}  # iot.readings partition -> highest offset counted
        self.partition = partition  # the Kafka partition this key's state belongs to
        self.last_place = ""
        # The pane whose windows were all open at the last reading, and what adding a reading there
        # does (updates those windows): the next reading in that pane needs no window look-up and no
        # outcome of its own (only close_ready closes windows).
        self._hint_pane: int | None = None
        self._hint_outcome = _NOTHING
        # The earliest end of an open window (NEVER: none open; None: not known, computed when
        # needed): close_ready, called after every reading that moves the watermark, returns at once
        # while the watermark is below it plus the grace.
        self._first_end: int | None = None
        # to_json's parts as last built, for the panes and open windows unchanged since: the changelog
        # value is built after every batch that touched the key, and live (a reading per key per
        # batch) only the newest pane changes. Never changed once handed out (a change builds anew),
        # so the values given to Faust's producer stay what they were when made.
        self._json_panes: dict[str, dict[str, Any]] | None = None  # "pn" as last handed out
        self._json_stale: set[int] = set()  # panes changed or gone since
        self._json_open: list[str] | None = None

    @property
    def windows(self) -> dict[WindowKey, WindowAcc]:
        """The open windows with their values (assembled from the panes: a copy)."""
        return {k: self._assemble(k) for k in self.open}

    def window_acc(self, key: WindowKey) -> WindowAcc | None:
        """The values of one open window (a copy), None when it is not open."""
        return self._assemble(key) if key in self.open else None

    def _assemble(self, key: WindowKey) -> WindowAcc:
        acc = WindowAcc()
        start, end = key.start, key.end
        for pane_start, pane in self.panes.items():
            if start <= pane_start < end:
                acc.merge(pane)
        return acc

    def mark_seen(self, boot: int, seq: int) -> int:
        """Record (boot, seq) of this device if it is new: NEW, DUPLICATE, or UNKNOWN when it lies in
        what the bounded memory forgot (not recorded; the caller asks the `readings` collection)."""
        seqs = self.boots.get(boot)
        if seqs is None:
            if boot <= self.forgot_boot:
                return UNKNOWN
            seqs = self.boots[boot] = SeqSet()
            if len(self.boots) > MAX_BOOTS_PER_DEVICE:
                oldest = min(self.boots)
                del self.boots[oldest]
                self.forgot_boot = oldest
                if oldest == boot:
                    return NEW  # new, and forgotten at once: later copies are UNKNOWN
        return seqs.add(seq)

    @classmethod
    def pane_ms(cls, specs: Sequence[WindowSpec]) -> int:
        last, pane = cls._pane_for
        if last is not specs:
            pane = 0
            for spec in specs:
                pane = gcd(pane, spec.size_ms, spec.step_ms)
            cls._pane_for = (specs, pane)
        return pane

    def add(
        self,
        reading: Mapping[str, Any],
        specs: Sequence[WindowSpec],
        grace_ms: int,
        allowed_lateness_ms: int = 0,
        watermark_cap: int | None = None,
        offset: int = -1,
    ) -> AddOutcome:
        """Count one validated, new reading (the caller de-duplicates: `fences`, `mark_seen`) into its
        open windows; report the closed windows it amends and the ones it is too late for.
        `watermark_cap` (wall clock + clock-ahead bound) is the furthest the watermark may move; `offset`
        is the reading's input offset (the amendment fence)."""
        ts: int = reading["ts"]
        self.last_place = reading["place"]
        wm = self.watermark
        pane_ms = self.pane_ms(specs)
        pane_start = ts - ts % pane_ms  # floor, also for negative ts
        if pane_start == self._hint_pane:
            out = self._hint_outcome
        else:
            out = AddOutcome()
            # Per reading, not per window: a reading is either within the allowed lateness for all its
            # closed windows or for none, so a replay never leaves a reading in half of its hopping
            # windows.
            amendable = wm is None or wm - ts <= allowed_lateness_ms
            updated = out.updated
            all_open = True
            for spec in specs:
                for start in spec.starts(pane_start):
                    key = WindowKey(spec.kind, spec.size_ms, spec.step_ms, start)
                    if key in self.open:
                        # Still open, also when this batch's watermark has passed it: it closes after
                        # the batch.
                        updated.append(key)
                    elif wm is not None and start + spec.size_ms + grace_ms <= wm:
                        # Closed (or never opened while event time passed it): not in memory any more.
                        (out.amend if amendable else out.late).append(key)
                        all_open = False
                    else:
                        self.open.add(key)
                        self._json_open = None
                        updated.append(key)
                        first = self._first_end
                        if first is not None and key.end < first:
                            self._first_end = key.end
            if all_open:
                self._hint_pane, self._hint_outcome = pane_start, out
        if out.updated:
            pane = self.panes.get(pane_start)
            if pane is None:
                pane = self.panes[pane_start] = WindowAcc()
            pane.add(reading, offset)
            self._json_stale.add(pane_start)
        if self.top is None or ts > self.top:
            self.top = ts
        if watermark_cap is not None and ts > watermark_cap:
            ts = watermark_cap
        if wm is None or ts > wm:
            self.watermark = ts
        return out

    @property
    def held(self) -> bool:
        """A cap holds the watermark behind the highest ts counted."""
        return self.top is not None and (self.watermark is None or self.top > self.watermark)

    def release(self, watermark_cap: int | None) -> bool:
        """Move the watermark towards the highest ts counted, up to `watermark_cap` (None: all the
        way); True when it moved (the caller then closes what it passed)."""
        if self.top is None:
            return False
        target = self.top if watermark_cap is None else min(self.top, watermark_cap)
        if self.watermark is None or target > self.watermark:
            self.watermark = target
            return True
        return False

    def close_ready(self, grace_ms: int, watermark: int | None = None) -> list[ClosedWindow]:
        """Finalise the windows the watermark (optionally moved forward first, e.g. by the idle
        timeout) has passed, oldest first."""
        if watermark is not None and (self.watermark is None or watermark > self.watermark):
            self.watermark = watermark
        wm = self.watermark
        if wm is None:
            return []
        first = self._first_end
        if first is None:
            first = self._first_end = min((k.end for k in self.open), default=NEVER)
        if first + grace_ms > wm:
            return []
        ready = sorted((k for k in self.open if k.end + grace_ms <= wm), key=lambda k: (k.end, k.kind))
        if not ready:
            return []
        self.open.difference_update(ready)
        self._first_end = None
        self._json_open = None
        closed = [ClosedWindow(k, self._assemble(k)) for k in ready]
        self._hint_pane, self._hint_outcome = None, _NOTHING
        for pane_start in [p for p in self.panes if not any(k.start <= p < k.end for k in self.open)]:
            del self.panes[pane_start]
            self._json_stale.add(pane_start)
        return closed

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "wm": self.watermark,
            "top": self.top,
            "p": self.partition,
            "pl": self.last_place,
            "ow": self._open_json(),
            "pn": self._panes_json(),
            # Copies, not the live lists: the runtime hands this value to Faust's producer, which
            # serialises it later; a range extended by the next batch meanwhile would put readings
            # in the changelog whose outputs were never written (lost after a kill -9).
            "s": {str(b): [[a, z] for a, z in s.ranges] for b, s in self.boots.items()},
            "f": {str(p): o for p, o in self.fences.items()},
        }
        floors = {str(b): s.floor for b, s in self.boots.items() if s.floor >= 0}
        if floors:
            data["sf"] = floors
        if self.forgot_boot >= 0:
            data["fb"] = self.forgot_boot
        return data

    def _open_json(self) -> list[str]:
        codes = self._json_open
        if codes is None:
            codes = self._json_open = sorted(k.code() for k in self.open)
        return codes

    def _panes_json(self) -> dict[str, dict[str, Any]]:
        panes, stale = self._json_panes, self._json_stale
        if panes is None:
            panes = {str(start): acc.to_json() for start, acc in self.panes.items()}
        elif stale:
            panes = dict(panes)  # the one handed out stays as it was
            for start in stale:
                acc = self.panes.get(start)
                if acc is None:
                    panes.pop(str(start), None)
                else:
                    panes[str(start)] = acc.to_json()
        stale.clear()
        self._json_panes = panes
        return panes

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeyState:
        st = cls(int(data["p"]))
        st.watermark = data["wm"]
        # States persisted before the hold have no "top": their watermark was never capped behind it.
        st.top = data.get("top", st.watermark)
        st.last_place = data["pl"]
        st.open = {WindowKey.parse(c) for c in data["ow"]}
        st.panes = {int(p): WindowAcc.from_json(a) for p, a in data["pn"].items()}
        floors = data.get("sf", {})
        st.boots = {
            int(b): SeqSet([list(r) for r in ranges], floors.get(b, -1)) for b, ranges in data["s"].items()
        }
        st.forgot_boot = int(data.get("fb", -1))
        st.fences = {int(p): int(o) for p, o in data["f"].items()}
        return st


def idle_watermark(last_ts: int, idle_for_ms: int, idle_timeout_ms: int) -> int | None:
    """The watermark of a key quiet for `idle_for_ms` of wall time: event time resumes at wall-clock
    speed once the idle timeout has passed, so a quiet key's windows close as if it had kept going."""
    if idle_for_ms < idle_timeout_ms:
        return None
    return last_ts + idle_for_ms
