"""The window core: assignment, exact accumulation, watermark + grace, lateness, idle close, dedup."""

from __future__ import annotations

import json
import random
from fractions import Fraction
from typing import Any

import pytest

from backend.accumulators import MetricAcc
from backend.windows import (
    DUPLICATE,
    HOPPING,
    MAX_BOOTS_PER_DEVICE,
    MAX_RANGES_PER_BOOT,
    NEW,
    TUMBLING,
    UNKNOWN,
    KeyState,
    SeqSet,
    WindowKey,
    WindowSpec,
    idle_watermark,
    specs_from_seconds,
)

pytestmark = pytest.mark.unit

SPECS = specs_from_seconds(2, 4, 2)  # tumbling 2 s, hopping 4 s every 2 s
GRACE = 1000


def reading(
    seq: int, ts: int, temperature: float | None = 20.0, device: str = "d1", boot: int = 1
) -> dict[str, Any]:
    return {
        "device": device,
        "place": "p1",
        "boot": boot,
        "seq": seq,
        "ts": ts,
        "temperature": temperature,
        "humidity": None,
        "pressure": 1000.0,
        "luminosity": 1.0,
    }


def test_tumbling_window_contains_ts_start_inclusive_end_exclusive() -> None:
    spec = WindowSpec(TUMBLING, 2000, 2000)
    assert list(spec.starts(4000)) == [4000]
    assert list(spec.starts(5999)) == [4000]
    assert list(spec.starts(6000)) == [6000]


def test_hopping_window_assigns_ts_to_every_overlapping_window_aligned_to_epoch() -> None:
    spec = WindowSpec(HOPPING, 300_000, 60_000)
    starts = list(spec.starts(1_000_000_123))
    assert len(starts) == 5
    assert all(s % 60_000 == 0 and s <= 1_000_000_123 < s + 300_000 for s in starts)


def test_window_spec_rejects_step_that_does_not_divide_size() -> None:
    with pytest.raises(ValueError, match="multiple"):
        WindowSpec(HOPPING, 300_000, 70_000)


def test_mean_is_exact_and_independent_of_addition_order() -> None:
    values = [random.Random(7).uniform(-40, 85) for _ in range(500)] + [0.1, 0.2, 0.3, 1e-300]
    expected = float(sum(Fraction(v) for v in values) / len(values))
    means = set()
    for seed in range(5):
        shuffled = values[:]
        random.Random(seed).shuffle(shuffled)
        acc = MetricAcc()
        for v in shuffled:
            acc.add(v)
        means.add(acc.mean)
        assert acc.min == min(values) and acc.max == max(values) and acc.count == len(values)
    assert means == {expected}


def test_metric_accumulator_survives_json_round_trip() -> None:
    acc = MetricAcc()
    for v in (0.1, 1e-300, 84.9):
        acc.add(v)
    again = MetricAcc.from_json(acc.to_json())
    again.add(3.3)
    acc.add(3.3)
    assert again.summary() == acc.summary()


def test_seq_set_detects_duplicates_in_and_out_of_order() -> None:
    seqs = SeqSet()
    assert [seqs.add(s) for s in (0, 1, 2, 5, 4, 3)] == [NEW] * 6
    assert seqs.ranges == [[0, 5]]
    assert seqs.add(3) == DUPLICATE
    assert seqs.add(9) == NEW and seqs.add(9) == DUPLICATE
    assert seqs.ranges == [[0, 5], [9, 9]]


def test_seq_ranges_past_the_bound_are_forgotten_not_assumed_seen() -> None:
    # Before: past 256 ranges the two oldest merged, and a reading in the gap between them counted as
    # a duplicate (95 of 702 distinct readings lost when 351 gaps were filled later).
    seqs = SeqSet()
    evens = range(0, 2 * (MAX_RANGES_PER_BOOT + 95), 2)
    assert all(seqs.add(s) == NEW for s in evens)
    assert len(seqs.ranges) == MAX_RANGES_PER_BOOT
    forgotten = [s + 1 for s in evens if s + 1 <= seqs.floor]
    assert len(forgotten) == 94  # the gaps below the 95 ranges dropped
    assert {seqs.add(s) for s in forgotten} == {UNKNOWN}  # the caller asks the readings collection
    assert {seqs.add(s) for s in evens if s > seqs.floor} == {DUPLICATE}
    assert seqs.add(seqs.floor + 1) == NEW  # a gap above the floor is still known to be a gap


def test_boots_past_the_bound_are_forgotten_not_judged_by_lateness() -> None:
    # Before: a board that rebooted 12 times and re-sent its oldest boot was counted twice.
    st = KeyState()
    for boot in range(12):
        assert st.mark_seen(boot, 0) == NEW
    assert len(st.boots) == MAX_BOOTS_PER_DEVICE
    assert [st.mark_seen(boot, 0) for boot in range(12)] == [UNKNOWN] * 4 + [DUPLICATE] * 8
    assert st.mark_seen(2, 5) == UNKNOWN  # any seq of a forgotten boot
    again = KeyState.from_json(st.to_json())
    assert again.mark_seen(3, 0) == UNKNOWN and again.mark_seen(11, 0) == DUPLICATE
    assert again.mark_seen(12, 0) == NEW


def test_a_new_boot_older_than_every_boot_kept_is_new_and_then_unknown() -> None:
    st = KeyState()
    for boot in range(10, 10 + MAX_BOOTS_PER_DEVICE):
        st.mark_seen(boot, 0)
    assert st.mark_seen(3, 0) == NEW  # never seen (a board whose counter was reset): counted...
    assert st.mark_seen(3, 0) == UNKNOWN  # ...and at once forgotten: its next copy asks


def test_a_reading_seen_again_is_a_duplicate() -> None:
    st = KeyState()
    assert st.mark_seen(0, 0) == NEW
    assert st.mark_seen(0, 0) == DUPLICATE


def test_same_seq_in_another_boot_is_a_new_reading() -> None:
    st = KeyState()
    assert st.mark_seen(1, 0) == NEW
    assert st.mark_seen(2, 0) == NEW


def test_out_of_order_reading_within_grace_is_added() -> None:
    st = KeyState()
    st.add(reading(0, 1000), SPECS, GRACE)
    st.add(reading(1, 2500), SPECS, GRACE)  # watermark 2500 < end 2000 + grace 1000
    out = st.add(reading(2, 1900), SPECS, GRACE)
    assert not out.late
    assert st.windows[WindowKey(TUMBLING, 2000, 2000, 0)].count == 2


def test_reading_beyond_grace_is_late_and_leaves_final_window_unchanged() -> None:
    st = KeyState()
    st.add(reading(0, 1000, temperature=10.0), SPECS, GRACE)
    st.add(reading(1, 7000), SPECS, GRACE)  # watermark 7000 >= every end+grace of windows around 1000
    closed = {c.key: c.acc for c in st.close_ready(GRACE)}
    before = closed[WindowKey(TUMBLING, 2000, 2000, 0)].metrics["temperature"].summary()
    out = st.add(reading(2, 1500, temperature=80.0), SPECS, GRACE)
    assert {(k.kind, k.start) for k in out.late} == {(TUMBLING, 0), (HOPPING, -2000), (HOPPING, 0)}
    assert out.updated == []
    assert WindowKey(TUMBLING, 2000, 2000, 0) not in st.windows
    assert before == {"count": 1, "mean": 10.0, "min": 10.0, "max": 10.0}


def test_reading_late_for_one_hopping_window_still_counts_in_the_open_one() -> None:
    st = KeyState()
    st.add(reading(0, 2500), SPECS, GRACE)
    st.add(reading(1, 5200), SPECS, GRACE)  # wm 5200: [0,4000) final (4000+1000<=5200); [2000,6000) open
    st.close_ready(GRACE)
    out = st.add(reading(2, 3000), SPECS, GRACE)
    assert [(k.kind, k.start) for k in out.late] == [(TUMBLING, 2000), (HOPPING, 0)]
    assert [(k.kind, k.start) for k in out.updated] == [(HOPPING, 2000)]


def test_window_becomes_final_only_when_watermark_reaches_end_plus_grace() -> None:
    st = KeyState()
    st.add(reading(0, 500), SPECS, GRACE)
    st.add(reading(1, 2999), SPECS, GRACE)
    assert st.close_ready(GRACE) == []  # 2999 < 2000 + 1000
    st.add(reading(2, 3000), SPECS, GRACE)
    assert {c.key for c in st.close_ready(GRACE)} == {
        WindowKey(TUMBLING, 2000, 2000, 0),
        WindowKey(HOPPING, 4000, 2000, -2000),
    }


def test_null_metric_is_ignored_for_that_metric_only() -> None:
    st = KeyState()
    st.add(reading(0, 100, temperature=None), SPECS, GRACE)
    st.add(reading(1, 200, temperature=30.0), SPECS, GRACE)
    acc = st.windows[WindowKey(TUMBLING, 2000, 2000, 0)]
    assert acc.count == 2
    assert acc.metrics["temperature"].summary() == {"count": 1, "mean": 30.0, "min": 30.0, "max": 30.0}
    assert acc.metrics["humidity"].summary() == {"count": 0, "mean": None, "min": None, "max": None}
    assert acc.metrics["pressure"].count == 2


def test_idle_watermark_moves_with_wall_clock_only_after_the_timeout() -> None:
    assert idle_watermark(10_000, 1_999, 2_000) is None
    assert idle_watermark(10_000, 5_000, 2_000) == 15_000


def test_idle_key_closes_its_last_window() -> None:
    st = KeyState()
    st.add(reading(0, 1000), SPECS, GRACE)
    assert st.close_ready(GRACE) == []
    wm = idle_watermark(1000, 10_000, 2_000)
    closed = st.close_ready(GRACE, wm)
    assert {c.key for c in closed} == {
        WindowKey(TUMBLING, 2000, 2000, 0),
        WindowKey(HOPPING, 4000, 2000, -2000),
        WindowKey(HOPPING, 4000, 2000, 0),
    }
    assert st.windows == {}


def test_key_state_json_round_trip_keeps_windows_watermark_and_dedup() -> None:
    st = KeyState(partition=3)
    for i, ts in enumerate((100, 2100, 900, 2500)):
        assert st.mark_seen(0, i) == NEW
        st.add(reading(i, ts), SPECS, GRACE)
    st.fences[3] = 17
    again = KeyState.from_json(st.to_json())
    assert again.fences == {3: 17}
    assert again.partition == 3 and again.watermark == st.watermark
    assert again.to_json() == st.to_json()
    assert again.mark_seen(0, 2) == DUPLICATE


def _closed_as_json(closed: list[Any]) -> list[tuple[str, Any]]:
    return [(c.key.code(), c.acc.to_json()) for c in closed]


def test_panes_give_each_window_exactly_what_adding_to_every_window_gives() -> None:
    # Hopping 6 s every 2 s and tumbling 3 s: panes of 1 s; readings in and out of order, late ones.
    specs = (WindowSpec(TUMBLING, 3000, 3000), WindowSpec(HOPPING, 6000, 2000))
    rng = random.Random(7)
    st = KeyState()
    expected: dict[str, list[float]] = {}
    closed: dict[str, Any] = {}
    for seq in range(400):
        ts = seq * 250 + rng.randrange(-4000, 500)
        value = rng.uniform(-10, 40)
        out = st.add(reading(seq, ts, temperature=value), specs, GRACE)
        for key in out.updated:
            expected.setdefault(key.code(), []).append(value)
        for c in st.close_ready(GRACE):
            closed[c.key.code()] = c.acc
    for c in st.close_ready(GRACE, 10**9):
        closed[c.key.code()] = c.acc
    assert set(closed) == set(expected)
    for code, values in expected.items():
        acc = closed[code].metrics["temperature"]
        assert acc.count == len(values)
        assert Fraction(acc.num, 2**acc.exp) == sum(Fraction(v) for v in values)
        assert (acc.min, acc.max) == (min(values), max(values))
    assert st.panes == {} and st.open == set()


def test_close_ready_closes_exactly_the_windows_the_watermark_passed_after_every_reading() -> None:
    # close_ready returns early below the earliest open window's end (kept as windows open and
    # close, unknown after a restore): it must close exactly what a scan of the open windows would,
    # at every step, with readings out of order, late ones, idle jumps and restores between them.
    specs = (WindowSpec(TUMBLING, 3000, 3000), WindowSpec(HOPPING, 6000, 2000))
    rng = random.Random(11)
    st = KeyState()
    closed = 0
    for seq in range(600):
        ts = seq * 250 + rng.randrange(-6000, 800)
        st.add(reading(seq, ts), specs, GRACE, allowed_lateness_ms=4000)
        if rng.random() < 0.05:
            st = KeyState.from_json(st.to_json())
        jump = st.watermark + rng.randrange(0, 5000) if rng.random() < 0.1 else None
        wm = max(st.watermark, jump or st.watermark)
        due = sorted((k for k in st.open if k.end + GRACE <= wm), key=lambda k: (k.end, k.kind))
        got = [c.key for c in st.close_ready(GRACE, jump)]
        assert got == due, seq
        assert not any(k.end + GRACE <= wm for k in st.open)
        closed += len(got)
    assert closed > 50  # windows did close along the way


def test_to_json_reuses_unchanged_parts_and_never_changes_a_value_handed_out() -> None:
    # to_json keeps the JSON of panes and open windows unchanged since the last call. Two states fed
    # the same readings: one keeps that cache, the other's is emptied before each call; their values
    # must be equal after every step, and a value handed out earlier (to Faust's producer, which
    # serialises it later) must still be what it was when made.
    specs = (WindowSpec(TUMBLING, 3000, 3000), WindowSpec(HOPPING, 6000, 2000))
    rng = random.Random(5)
    kept, fresh = KeyState(), KeyState()
    handed: list[tuple[dict[str, Any], str]] = []
    for seq in range(500):
        r = reading(seq, seq * 300 + rng.randrange(-5000, 800), temperature=rng.uniform(0, 30))
        close = rng.random() < 0.3
        for st in (kept, fresh):
            st.add(r, specs, GRACE, allowed_lateness_ms=10**9)
            if close:
                st.close_ready(GRACE)
        value = kept.to_json()
        handed.append((value, json.dumps(value, sort_keys=True)))
        fresh._json_panes = None
        fresh._json_open = None
        assert value == fresh.to_json(), seq
    assert all(json.dumps(v, sort_keys=True) == text for v, text in handed)
