"""Amendments, bounded state and the watermark cap, on the pure core (windows.py + engine.py) driven by
a small simulation of the runtime: MongoDB's write semantics of backend/mongo_sink.py over a dict, the
changelog as a dict, wall time advancing with event time as on a live fleet, and crashes injected
between writing the outputs and persisting the states. Every result is checked against the oracle of
tests/backend/conftest.py (plain arithmetic over all distinct readings, sharing no code with backend/).
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from backend.accumulators import WindowAcc
from backend.engine import Item, ScopeEngine
from backend.records import FORWARD_SLOTS, PLACE, SENSOR
from backend.windows import HOPPING, TUMBLING, KeyState, WindowKey, specs_from_seconds

from .conftest import as_comparable, expected_windows

pytestmark = pytest.mark.unit

SPECS = specs_from_seconds(2, 4, 2)  # the oracle's sizes (conftest: TUMBLING_MS, HOPPING_MS, STEP_MS)
GRACE, IDLE = 1000, 2000
DAY = 86_400_000
HOUR = 3_600_000
T0 = 1_750_000_000_000 - 1_750_000_000_000 % 4000


def reading(device: str, seq: int, ts: int, place: str = "p1", boot: int = 0) -> dict[str, Any]:
    rng = random.Random(hash((device, boot, seq)))
    return {
        "v": 1,
        "device": device,
        "place": place,
        "boot": boot,
        "seq": seq,
        "ts": ts,
        "time_valid": True,
        "temperature": round(rng.uniform(-10, 40), 2),
        "humidity": None if seq % 11 == 0 else round(rng.uniform(0, 100), 1),
        "pressure": 1000.0 + seq % 5 * 0.1,
        "luminosity": rng.uniform(0, 1000),
        "fw": "t",
        "received_at": ts,
    }


class Store:
    """MongoDB as backend/mongo_sink.py writes it: open/final documents by delete-non-final + insert
    (a final document is never overwritten), amended documents replaced whole (upsert)."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    def write_windows(self, docs: Iterable[dict[str, Any]]) -> None:
        for d in docs:
            cur = self.docs.get(d["_id"])
            if cur is None or not cur["final"]:
                self.docs[d["_id"]] = d

    def write_amended(self, docs: Iterable[dict[str, Any]]) -> None:
        for d in docs:
            self.docs[d["_id"]] = d

    def load(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return {i: self.docs[i] for i in ids if i in self.docs}


@dataclass
class Sim:
    """One scope's runtime over one partition: the input log, the committed offset, the changelog."""

    scope: str
    allowed_ms: int = DAY
    cap_ms: int | None = 300_000
    store: Store = field(default_factory=Store)
    changelog: dict[str, Any] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)  # the partition
    position: int = 0  # next offset to process
    committed: int = 0
    max_open: int = 0  # most windows one key held in memory at once
    crashes: int = 0

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.engine = ScopeEngine(
            self.scope,
            SPECS,
            GRACE,
            IDLE,
            self.changelog.get,
            allowed_lateness_ms=self.allowed_ms,
            max_clock_ahead_ms=self.cap_ms,
        )
        self.position = self.committed

    def _apply(self, out: Any, now: int, crash: bool) -> None:
        self.engine.amend(out, self.store.load(out.amends), now)
        self.store.write_windows(out.open_docs + out.final_docs)
        self.store.write_amended(out.amended_docs)
        if crash:  # kill -9 after the outputs, before the states: the restart replays the batch
            self.crashes += 1
            self.restart()
            return
        self.changelog.update({k: st.to_json() for k, st in out.changed.items()})
        for st in out.changed.values():
            self.max_open = max(self.max_open, len(st.windows))

    def run(
        self, now: int, batch_max: int = 50, crash: float = 0.0, rng: random.Random | None = None
    ) -> None:
        """Process everything in the log up to its end at wall time `now`, then the idle timer."""
        while self.position < len(self.log):
            end = min(len(self.log), self.position + batch_max)
            items: list[Item] = [Item(self.log[i], 0, i) for i in range(self.position, end)]
            out = self.engine.process(items, now)
            crashed = rng is not None and rng.random() < crash
            if not crashed:
                self.position = end
                if rng is None or rng.random() < 0.5:  # offsets are committed now and then
                    self.committed = end
            self._apply(out, now, crashed)
        out = self.engine.expire(now, {0}, list(self.changelog))
        self._apply(out, now, False)

    def finish(self, now: int) -> None:
        self.run(now)
        self.run(now + 10 * 60_000)  # every key idle: every window final

    def final_docs(self) -> dict[str, dict[str, Any]]:
        assert all(d["final"] for d in self.store.docs.values()), "a window is still open"
        return {i: as_comparable(d) for i, d in self.store.docs.items()}


def live(sims: Iterable[Sim], events: list[tuple[int, dict[str, Any]]], **kw: Any) -> None:
    """Feed (arrival wall time, reading) events in arrival order, running the sims each second."""
    sims = list(sims)
    events = sorted(events, key=lambda e: e[0])
    i = 0
    while i < len(events):
        second = events[i][0] // 1000
        while i < len(events) and events[i][0] // 1000 == second:
            for sim in sims:
                sim.log.append(events[i][1])
            i += 1
        for sim in sims:
            sim.run((second + 1) * 1000, **kw)


def outage_fleet(outage_ms: int, period_ms: int, reboot: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """Two online boards and one (x) offline for `outage_ms` in place p1, one reading per period each;
    x keeps its readings in its outbox and replays them in order on reconnect, then goes on live.
    With `reboot`, x restarts halfway through the outage: a new boot, seq from 0, outbox kept."""
    events: list[tuple[int, dict[str, Any]]] = []
    total = outage_ms + 120_000
    n = total // period_ms
    down, up = 30_000, 30_000 + outage_ms
    for dev in ("a", "b"):
        events += [(T0 + k * period_ms + 5, reading(dev, k, T0 + k * period_ms)) for k in range(n)]
    boot, seq = 0, 0
    for k in range(n):
        ts = T0 + k * period_ms
        if reboot and boot == 0 and ts >= down + outage_ms // 2 + T0:
            boot, seq = 1, 0
        r = reading("x", seq, ts, boot=boot)
        seq += 1
        arrival = T0 + up + 5 if down <= ts - T0 < up else ts + 5
        events.append((arrival, r))
    # The replay arrives at reconnect, in outbox order, before x's next live reading.
    return events


def readings_of(events: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [r for _, r in events]


# --- the key state ---------------------------------------------------------------------------------


def test_reading_for_a_closed_window_within_allowed_lateness_is_an_amendment() -> None:
    st = KeyState()
    st.add(reading("d", 0, 1000), SPECS, GRACE, DAY)
    st.add(reading("d", 1, 9000), SPECS, GRACE, DAY)
    st.close_ready(GRACE)
    out = st.add(reading("d", 2, 1500), SPECS, GRACE, DAY)
    assert out.late == [] and out.updated == []
    assert {(k.kind, k.start) for k in out.amend} == {(TUMBLING, 0), (HOPPING, -2000), (HOPPING, 0)}
    assert not any(k.end + GRACE > 9000 for k in out.amend)


def test_reading_further_behind_than_allowed_lateness_is_late_for_all_its_closed_windows() -> None:
    st = KeyState()
    st.add(reading("d", 0, 1000), SPECS, GRACE, 5000)
    st.add(reading("d", 1, 9000), SPECS, GRACE, 5000)
    st.close_ready(GRACE)
    assert st.add(reading("d", 2, 4000), SPECS, GRACE, 5000).amend  # 5000 behind: allowed
    out = st.add(reading("d", 3, 3999), SPECS, GRACE, 5000)  # 5001 behind
    assert out.amend == [] and out.updated == []
    assert {(k.kind, k.start) for k in out.late} == {(TUMBLING, 2000), (HOPPING, 0), (HOPPING, 2000)}


def test_window_still_in_memory_takes_a_reading_on_time_though_the_watermark_passed_it() -> None:
    # Inside one batch the watermark can pass a window before the batch closes it: it is not final yet.
    st = KeyState()
    st.add(reading("d", 0, 1000), SPECS, GRACE, DAY)
    st.add(reading("d", 1, 9000), SPECS, GRACE, DAY)
    out = st.add(reading("d", 2, 1500), SPECS, GRACE, DAY)
    assert out.amend == [] and out.late == [] and len(out.updated) == 3
    assert st.windows[WindowKey(TUMBLING, 2000, 2000, 0)].count == 2


def test_watermark_never_passes_the_cap_so_one_clock_years_ahead_makes_nothing_late() -> None:
    st = KeyState()
    cap = 10_000 + 300_000
    st.add(reading("d", 0, 10_000), SPECS, GRACE, 0, cap)
    st.add(reading("d", 1, 10_000 + 10 * 365 * DAY), SPECS, GRACE, 0, cap)
    assert st.watermark == cap
    out = st.add(reading("d", 2, 11_000), SPECS, GRACE, 0, cap)
    assert out.late == [] and out.amend == [] and len(out.updated) == 3


def test_window_acc_rebuilt_from_its_document_amends_exactly() -> None:
    from backend.records import window_doc
    from backend.stored import parse_window

    rs = [reading("d", i, 100 + i) for i in range(40)]
    whole, first = WindowAcc(), WindowAcc()
    for i, r in enumerate(rs):
        whole.add(r, i)
        if i < 25:
            first.add(r, i)
    wkey = WindowKey(TUMBLING, 2000, 2000, 0)
    again = parse_window(window_doc(SENSOR, "d", "p1", wkey, first, True, 0), SENSOR, "d", wkey).acc
    assert again.offset == 24
    for i, r in enumerate(rs[25:], 25):
        again.add(r, i)
    assert {m: a.summary() for m, a in again.metrics.items()} == {
        m: a.summary() for m, a in whole.metrics.items()
    }
    assert again.to_json() == whole.to_json()


# --- the engine with the simulated runtime -----------------------------------------------------------


@pytest.mark.parametrize(
    ("outage_ms", "period_ms", "reboot"),
    [(60_000, 1000, False), (6 * HOUR, 10_000, False), (20 * 60_000, 1000, True)],
    ids=["60s", "6h", "reboot-while-offline"],
)
def test_outage_replay_leaves_every_window_equal_to_the_oracle(
    outage_ms: int, period_ms: int, reboot: bool
) -> None:
    events = outage_fleet(outage_ms, period_ms, reboot)
    sims = [Sim(SENSOR), Sim(PLACE)]
    live(sims, events)
    for sim in sims:
        sim.finish(events[-1][0] + 1000)
    everything = readings_of(events)
    for sim in sims:
        assert sim.final_docs() == expected_windows(everything, sim.scope)
        docs = list(sim.store.docs.values())
        amended = [d for d in docs if d["count"] > d["late_count"] > 0]  # opened on time, then amended
        assert all(d["revision"] > 0 for d in amended)
        assert all(d["revision"] == 0 for d in docs if d["late_count"] == 0)
        # Closed windows are not kept: memory per key is the open windows only, whatever the outage.
        assert sim.max_open <= 6
    # The online boards moved the place's event time on: the replay amends the place windows. (The
    # offline board's own sensor windows closed by the idle timeout take the first seconds of the
    # replay as amendments; after that its event time resumes from its replay, on time.)
    place = list(sims[1].store.docs.values())
    late = sum(d["late_count"] for d in place if d["kind"] == TUMBLING)
    # Every outage reading but those of the last seconds, whose windows the grace still held open.
    assert outage_ms // period_ms - 4 <= late <= outage_ms // period_ms


def test_replay_past_allowed_lateness_goes_to_the_dlq_and_changes_no_window() -> None:
    events = outage_fleet(60_000, 1000)
    sim = Sim(PLACE, allowed_ms=20_000)
    late: list[dict[str, Any]] = []
    orig = sim.engine.process

    def spy(items: Any, now: int) -> Any:
        out = orig(items, now)
        late.extend(out.late)
        return out

    sim.engine.process = spy  # type: ignore[method-assign]
    live([sim], events)
    sim.finish(events[-1][0] + 1000)
    dropped = {
        (p["device"], p["seq"]) for p in (json.loads(base64.b64decode(r["payload_b64"])) for r in late)
    }
    assert {r["reason"] for r in late} == {"late"} and len(dropped) == len(late)
    # The oldest part of the outage (more than 20 s behind the place's watermark) and nothing else.
    assert dropped and {d for d, _ in dropped} == {"x"}
    assert len(dropped) < 60 - 20 + 2
    counted = [r for r in readings_of(events) if (r["device"], r["seq"]) not in dropped]
    assert sim.final_docs() == expected_windows(counted, PLACE)


def test_kill_9_between_outputs_and_states_during_amendments_gives_the_same_documents() -> None:
    events = outage_fleet(60_000, 1000, reboot=True)
    clean = [Sim(SENSOR), Sim(PLACE)]
    live(clean, events)
    crashy = [Sim(SENSOR), Sim(PLACE)]
    live(crashy, events, crash=0.3, rng=random.Random(11))
    for a, b in zip(clean, crashy, strict=True):
        a.finish(events[-1][0] + 1000)
        b.finish(events[-1][0] + 1000)
        assert b.crashes > 5
        assert b.final_docs() == a.final_docs() == expected_windows(readings_of(events), a.scope)


def test_amendment_replayed_after_a_crash_is_not_counted_twice() -> None:
    # Deterministic: the batch that amends is written, the state is not; the restart replays it.
    store: dict[str, Any] = {}
    docs = Store()
    eng = ScopeEngine(SENSOR, SPECS, GRACE, IDLE, store.get, allowed_lateness_ms=DAY)
    first: list[Item] = [Item(reading("d", 0, 1000), 0, 0), Item(reading("d", 1, 9000), 0, 1)]
    out = eng.process(first, 0)
    docs.write_windows(out.open_docs + out.final_docs)
    store.update({k: s.to_json() for k, s in out.changed.items()})
    late: list[Item] = [
        Item(reading("d", 2, 1500), 0, 2),
        Item(reading("d", 2, 1500), 0, 3),
    ]  # and a duplicate
    for attempt in range(2):
        eng = ScopeEngine(SENSOR, SPECS, GRACE, IDLE, store.get, allowed_lateness_ms=DAY)
        out = eng.process(late, 0)
        eng.amend(out, docs.load(out.amends), 0)
        docs.write_amended(out.amended_docs)
        assert out.duplicates == 1
        assert len(out.amended_docs) == (3 if attempt == 0 else 0)
    w = docs.docs["d:tumbling:2:0"]
    assert (w["count"], w["revision"], w["late_count"], w["offset"]) == (2, 1, 1, 2)


def test_batch_boundaries_change_only_the_revision_not_the_documents() -> None:
    events = outage_fleet(60_000, 1000)
    runs = []
    for batch_max in (1, 7, 500):
        sim = Sim(PLACE)
        live([sim], events, batch_max=batch_max)
        sim.finish(events[-1][0] + 1000)
        runs.append(sim)
    assert runs[0].final_docs() == runs[1].final_docs() == runs[2].final_docs()
    late = [{i: d["late_count"] for i, d in s.store.docs.items()} for s in runs]
    assert late[0] == late[1] == late[2]


def test_state_per_key_does_not_grow_with_allowed_lateness() -> None:
    sizes = []
    for allowed in (60_000, DAY):
        sim = Sim(SENSOR, allowed_ms=allowed)
        live([sim], outage_fleet(10 * 60_000, 1000))
        sizes.append(max(len(str(v)) for v in sim.changelog.values()))
    assert sizes[0] == sizes[1]


def test_engine_caps_the_watermark_at_wall_clock_plus_clock_ahead() -> None:
    sim = Sim(SENSOR, cap_ms=300_000)
    good = [reading("d", i, T0 + i * 1000) for i in range(20)]
    ahead = {**reading("d", 5, T0 + 10 * 365 * DAY), "seq": 1000}
    sim.log += [*good[:5], ahead, *good[5:]]
    sim.run(T0 + 20_000)
    st = KeyState.from_json(sim.changelog["d"])
    assert st.watermark is not None and st.watermark <= T0 + 20_000 + 300_000
    sim.finish(T0 + 20_000)
    got = {i: d for i, d in sim.store.docs.items() if d["start"] < T0 + DAY}
    assert {i: as_comparable(d) for i, d in got.items()} == expected_windows(good, SENSOR)


def test_readings_of_one_bundle_amend_a_window_closed_by_an_earlier_reading_of_it() -> None:
    # One forwarded record: a reading that closes a window, then a late one for it (same record
    # offset, the next slot): the late one must not be fenced off as counted before a crash.
    eng = ScopeEngine(PLACE, SPECS, GRACE, IDLE, {}.get, allowed_lateness_ms=DAY)
    base = 7 * FORWARD_SLOTS
    out = eng.process(
        [
            Item(reading("d", 0, 1000), 0, base, (0, 70)),
            Item(reading("d", 1, 9000), 0, base + 1, (0, 71)),
            Item(reading("d", 2, 1500), 0, base + 2, (0, 72)),
        ],
        0,
    )
    eng.amend(out, {}, 0)
    amended = {d["_id"]: d for d in out.amended_docs}
    assert amended["p1:tumbling:2:0"]["count"] == 2
