"""The scope engine: batches in, documents and DLQ records out; results independent of batch boundaries."""

from __future__ import annotations

import random
from typing import Any

import pytest

from backend.engine import Item, ScopeEngine
from backend.records import PLACE, SENSOR
from backend.windows import specs_from_seconds
from iot import contract

pytestmark = pytest.mark.unit

SPECS = specs_from_seconds(2, 4, 2)


def reading(device: str, seq: int, ts: int, place: str = "p1", t: float | None = 21.5) -> dict[str, Any]:
    return {
        "v": 1,
        "device": device,
        "place": place,
        "boot": 0,
        "seq": seq,
        "ts": ts,
        "time_valid": True,
        "temperature": t,
        "humidity": 40.0,
        "pressure": 1000.0,
        "luminosity": None,
        "fw": "1",
        "received_at": ts,
    }


def engine(scope: str, store: dict[str, Any] | None = None) -> ScopeEngine:
    store = {} if store is None else store
    return ScopeEngine(scope, SPECS, 1000, 2000, store.get)


def finals_after_idle(eng: ScopeEngine, batches: list[list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for batch in batches:
        out = eng.process([Item(r, 0, -1) for r in batch], now_ms=0)
        docs.update({d["_id"]: d for d in out.final_docs})
    out = eng.expire(now_ms=100_000, partitions={0}, keys=[])
    docs.update({d["_id"]: d for d in out.final_docs})
    for d in docs.values():
        d.pop("updated_at")
    return docs


def test_final_documents_do_not_depend_on_batch_boundaries() -> None:
    rng = random.Random(3)
    rs = [reading("d1", i, 1000 + i * 97, t=rng.uniform(0, 30)) for i in range(100)]
    whole = finals_after_idle(engine(SENSOR), [rs])
    cuts = sorted(rng.sample(range(1, 100), 9))
    pieces = [rs[a:b] for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
    assert finals_after_idle(engine(SENSOR), pieces) == whole
    assert sum(d["count"] for d in whole.values() if d["kind"] == "tumbling") == 100


def test_replayed_batch_after_restart_from_persisted_state_is_not_double_counted() -> None:
    rs = [reading("d1", i, 1000 + i * 50) for i in range(40)]
    store: dict[str, Any] = {}
    first = engine(SENSOR, store)
    out = first.process([Item(r, 0, -1) for r in rs[:30]], now_ms=0)
    store.update({k: st.to_json() for k, st in out.changed.items()})  # persisted, offsets not committed
    restarted = engine(SENSOR, store)
    replay = restarted.process([Item(r, 0, -1) for r in rs[20:]], now_ms=0)
    assert replay.duplicates == 10
    assert [i.reading["seq"] for i in replay.readings] == list(range(30, 40))
    expected = finals_after_idle(engine(SENSOR), [rs])
    got = {
        d["_id"]: d
        for d in restarted.expire(100_000, {0}, []).final_docs + out.final_docs + replay.final_docs
    }
    for d in got.values():
        d.pop("updated_at")
    assert got == expected


def test_place_window_lists_its_distinct_devices_and_counts_all_of_them() -> None:
    eng = engine(PLACE)
    docs = finals_after_idle(eng, [[reading("a", 0, 1000), reading("b", 0, 1100), reading("a", 1, 1200)]])
    tumbling = docs["p1:tumbling:2:0"]
    assert tumbling["devices"] == ["a", "b"] and tumbling["count"] == 3 and "device" not in tumbling


def test_late_reading_becomes_a_dlq_record_with_reason_late() -> None:
    eng = engine(SENSOR)
    eng.process([Item(reading("d1", 0, 1000), 0, -1), Item(reading("d1", 1, 9000), 0, -1)], now_ms=0)
    out = eng.process([Item(reading("d1", 2, 1500), 0, -1)], now_ms=0)
    assert len(out.late) == 1
    rec = out.late[0]
    assert (
        rec["reason"] == "late"
        and rec["topic"] == "sensors/p1/d1/reading"
        and "tumbling:2s@0" in rec["detail"]
    )
    assert out.open_docs == [] and out.final_docs == []


def test_idle_close_waits_for_the_timeout_and_only_touches_owned_partitions() -> None:
    eng = engine(SENSOR)
    eng.process([Item(reading("d1", 0, 1000), 4, -1)], now_ms=0)
    assert eng.expire(now_ms=1999, partitions={4}, keys=[]).final_docs == []
    assert eng.expire(now_ms=50_000, partitions={1}, keys=[]).final_docs == []
    finals = eng.expire(now_ms=50_000, partitions={4}, keys=[]).final_docs
    assert {d["_id"] for d in finals} == {"d1:tumbling:2:0", "d1:hopping:4:-2000", "d1:hopping:4:0"}
    assert all(d["final"] for d in finals)


def test_no_idle_close_by_wall_clock_while_the_partition_has_unread_input() -> None:
    eng = engine(SENSOR)  # idle timeout 2 s
    eng.process([Item(reading("d1", 0, 1000), 4, -1), Item(reading("d2", 0, 1000), 4, -1)], now_ms=0)
    # 50 s of wall clock without a reading, but partition 4 is behind and its input has not moved on:
    # d1's next readings may be right behind. (Before: closed here, and they all became amendments.)
    assert eng.expire(now_ms=50_000, partitions={4}, keys=[], behind={4}).final_docs == []
    # The partition's input moves 5 s past d1's last reading without one of d1: d1 is idle.
    eng.process([Item(reading("d2", 1, 6000), 4, -1)], now_ms=51_000)
    finals = eng.expire(now_ms=51_000, partitions={4}, keys=[], behind={4}).final_docs
    assert {d["_id"] for d in finals} == {"d1:tumbling:2:0", "d1:hopping:4:-2000", "d1:hopping:4:0"}
    # Caught up again: the wall clock alone decides, as before.
    finals = eng.expire(now_ms=60_000, partitions={4}, keys=[]).final_docs
    assert {d["_id"] for d in finals} == {"d2:tumbling:2:6000", "d2:hopping:4:4000", "d2:hopping:4:6000"}


def test_a_key_not_read_since_a_restart_is_not_idle_closed_while_its_partition_is_behind() -> None:
    store: dict[str, Any] = {}
    first = engine(SENSOR, store)
    out = first.process([Item(reading("d1", 0, 1000), 4, 7)], now_ms=0)
    store.update({k: st.to_json() for k, st in out.changed.items()})
    restarted = engine(SENSOR, store)
    assert restarted.expire(now_ms=0, partitions={4}, keys=["d1"], behind={4}).final_docs == []
    assert restarted.expire(now_ms=90_000, partitions={4}, keys=["d1"], behind={4}).final_docs == []
    assert len(restarted.expire(now_ms=90_000, partitions={4}, keys=["d1"]).final_docs) == 3


def test_open_windows_are_rewritten_at_most_once_per_interval_and_flushed_by_the_timer() -> None:
    eng = ScopeEngine(SENSOR, SPECS, 1000, 60_000, {}.get, open_write_ms=5000)
    assert len(eng.process([Item(reading("d1", 0, 1000), 0, -1)], now_ms=0).open_docs) == 3
    assert eng.process([Item(reading("d1", 1, 1100), 0, -1)], now_ms=1000).open_docs == []  # throttled
    assert eng.expire(now_ms=4999, partitions={0}, keys=[]).open_docs == []
    flushed = eng.expire(now_ms=5000, partitions={0}, keys=[]).open_docs
    assert {d["_id"]: d["count"] for d in flushed} == {
        "d1:tumbling:2:0": 2,
        "d1:hopping:4:-2000": 2,
        "d1:hopping:4:0": 2,
    }


def _two_sources_out_of_order(eng: ScopeEngine, hold: bool) -> list[Any]:
    """One place fed by two source partitions read unevenly, as in a backlog: source A's readings of
    10-19 s first, then source B's of 2-11 s. With the hold, the watermarks records after each batch
    set the lowest source watermark: after A's batch B's (not read yet: 2 s), after B's A's... and B's
    own (11 s), then nothing once both caught up."""
    holds = iter([{0: 2_000}, {0: 11_000}, {}] if hold else [None, None, None])
    if hold:
        eng.holds = {0: -1}  # before any watermarks record reached the place partition
    return [
        eng.process(
            [Item(reading("a", i, 10_000 + i * 1000), 0, i) for i in range(10)], 0, holds_after=next(holds)
        ),
        eng.process(
            [Item(reading("b", i, 2_000 + i * 1000), 0, 100 + i) for i in range(10)],
            0,
            holds_after=next(holds),
        ),
        eng.process([], 0, holds_after=next(holds)),
    ]


def test_a_place_held_below_its_slowest_source_merges_a_backlog_without_amendments() -> None:
    outs = _two_sources_out_of_order(engine(PLACE), hold=True)
    assert all(not out.amends and not out.late for out in outs)
    finals = [d for out in outs for d in out.final_docs]
    tumbling = {d["start"]: d["count"] for d in finals if d["kind"] == "tumbling"}
    # Every 2 s window up to the watermark (19 s) - grace (1 s) is final with both sources in it.
    assert tumbling == {2000: 2, 4000: 2, 6000: 2, 8000: 2, 10000: 4, 12000: 2, 14000: 2, 16000: 2}
    assert [d["devices"] for d in finals if d["start"] == 10000] == [["a", "b"]] * 2
    assert len({d["_id"] for d in finals}) == len(finals)  # each final once


def test_without_the_hold_the_same_backlog_reaches_windows_the_first_source_closed() -> None:
    outs = _two_sources_out_of_order(engine(PLACE), hold=False)
    assert outs[1].late  # B's readings fall in windows A's watermark closed (no allowed lateness here)


def test_the_hold_lifting_closes_what_the_watermark_may_now_pass() -> None:
    eng = engine(PLACE)
    eng.holds = {0: 2_500}
    out = eng.process([Item(reading("a", i, 1000 + i * 1000), 0, i) for i in range(10)], 0)
    assert out.final_docs == []  # held at 2.5 s: no window ends by 2.5 s - 1 s grace
    finals = eng.process([], 0, holds_after={0: 7_000}).final_docs  # ends by 6 s
    assert {(d["kind"], d["start"]) for d in finals} == {
        ("tumbling", 0),
        ("tumbling", 2000),
        ("tumbling", 4000),
        ("hopping", -2000),
        ("hopping", 0),
        ("hopping", 2000),
    }
    finals = eng.process([], 0, holds_after={}).final_docs  # caught up: the watermark goes to the top (10 s)
    assert {(d["kind"], d["start"]) for d in finals} == {("tumbling", 6000), ("hopping", 4000)}


def test_a_held_watermark_and_its_top_survive_the_changelog() -> None:
    store: dict[str, Any] = {}
    eng = engine(PLACE, store)
    eng.holds = {0: -1}
    out = eng.process([Item(reading("a", i, 1000 + i * 1000), 0, i) for i in range(10)], 0)
    for key, st in out.changed.items():
        store[key] = st.to_json()
    restarted = engine(PLACE, store)
    restarted.state("p1", 0)  # loaded (by its next reading or the idle timer): held, so released next
    assert {d["start"] for d in restarted.process([], 0, holds_after={}).final_docs} >= {0, 2000, 4000, 6000}


def test_a_forgotten_seq_is_looked_up_even_when_another_device_counted_the_same_boot_and_seq() -> None:
    """The identities counted earlier in a batch were built with the current reading's device for all
    of them: another device's (boot 0, seq 5) made this device's forgotten seq 5 look counted, and it
    was dropped as a duplicate without a look-up, silently (test_bad_input's 351-gap case lost one
    reading in about 4 of 50 runs, when the corrupt case's seq 5 shared its batch)."""
    store: dict[str, Any] = {}
    eng = engine(SENSOR, store)
    evens = [reading("gap", s, 1000 + 10 * s) for s in range(0, 600, 2)]  # > 256 ranges: a floor
    out = eng.process([Item(r, 0, i) for i, r in enumerate(evens)], now_ms=0)
    store.update({k: st.to_json() for k, st in out.changed.items()})  # persisted, as the runtime does
    batch = [Item(reading("other", 5, 1200), 0, 400), Item(reading("gap", 5, 1050), 0, 401)]
    first = eng.process(batch, now_ms=0)
    rid = contract.reading_id("gap", 0, 5)
    assert first.lookups == {rid}, "the forgotten seq must be asked of the readings collection"
    eng.rollback(first.keys)  # the runtime asks, then processes the batch again from the store
    again = eng.process(batch, now_ms=0, known={rid: None})  # not stored: a new reading
    counted = sorted((i.reading["device"], i.reading["seq"]) for i in again.readings)
    assert counted == [("gap", 5), ("other", 5)] and again.duplicates == 0


def test_open_windows_due_together_are_written_a_cap_at_a_time_the_longest_unwritten_first() -> None:
    """A 2,000-board fleet's keys all came due at one tick: ~12,000 open rewrites in one call held the
    scope's lock for 11-22 s while readings waited (the soak's lag grew from its first seconds)."""
    eng = ScopeEngine(SENSOR, SPECS, 1000, 60_000, {}.get, open_write_ms=5000)
    eng.open_docs_max = 30  # 10 keys of 3 open windows
    devices = [f"d{i:02d}" for i in range(25)]
    first = eng.process([Item(reading(d, 0, 1000), 0, i) for i, d in enumerate(devices)], now_ms=0)
    assert len(first.open_docs) == 30 and first.open_deferred == 15
    written = [{d["device"] for d in first.open_docs}]
    for now in (1000, 2000):
        out = eng.expire(now_ms=now, partitions={0}, keys=[])
        assert len(out.open_docs) <= 30
        written.append({d["device"] for d in out.open_docs})
    assert [len(w) for w in written] == [10, 10, 5]
    assert set().union(*written) == set(devices)  # each once, none starved
    assert eng.expire(now_ms=3000, partitions={0}, keys=[]).open_docs == []  # nothing dirty is left
    # Rewritten again once due, those written longest ago first.
    for i, d in enumerate(devices):
        eng.process([Item(reading(d, 1, 1500), 0, 100 + i)], now_ms=4000)  # within the interval
    again = eng.expire(now_ms=5000, partitions={0}, keys=[])
    assert {d["device"] for d in again.open_docs} == written[0]
