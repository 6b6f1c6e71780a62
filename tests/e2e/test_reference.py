"""The reference itself, on hand-computed cases (so the acceptance test's oracle is trustworthy)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.reference import expected_windows, window_starts

pytestmark = pytest.mark.unit


def r(device: str, seq: int, ts: int, t: float | None, place: str = "p") -> dict[str, Any]:
    return {
        "device": device,
        "place": place,
        "boot": 0,
        "seq": seq,
        "ts": ts,
        "temperature": t,
        "humidity": None,
        "pressure": None,
        "luminosity": None,
    }


def test_tumbling_window_of_a_timestamp_is_the_aligned_one() -> None:
    assert window_starts(125_000, 60, 60) == [120_000]
    assert window_starts(120_000, 60, 60) == [120_000]
    assert window_starts(119_999, 60, 60) == [60_000]


def test_hopping_windows_overlap() -> None:
    assert window_starts(125_000, 30, 10) == [100_000, 110_000, 120_000]
    assert window_starts(130_000, 30, 10) == [110_000, 120_000, 130_000]


def test_means_ignore_nulls_and_duplicates() -> None:
    rows = [
        r("a", 0, 1_000, 20.0),
        r("a", 1, 2_000, None),
        r("a", 1, 2_000, None),
        r("a", 2, 3_000, 23.0),
        r("b", 0, 4_000, 10.0),
    ]
    per_sensor = expected_windows(rows, "device", 10, 10)
    assert per_sensor[("a", 0)]["count"] == 3
    assert per_sensor[("a", 0)]["temperature"] == {"count": 2, "mean": 21.5, "min": 20.0, "max": 23.0}
    assert per_sensor[("a", 0)]["humidity"] is None
    per_place = expected_windows(rows, "place", 10, 10)
    assert per_place[("p", 0)]["count"] == 4
    assert per_place[("p", 0)]["devices"] == {"a", "b"}
    assert per_place[("p", 0)]["temperature"]["mean"] == pytest.approx(53.0 / 3)
