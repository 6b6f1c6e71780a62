"""The window oracle itself, on hand-computed cases, so every suite that trusts it can."""

from __future__ import annotations

from typing import Any

import pytest

from iot import contract
from iot.harness.oracle import expected_windows, window_starts

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
    assert window_starts(125_000, 60_000, 60_000) == [120_000]
    assert window_starts(120_000, 60_000, 60_000) == [120_000]
    assert window_starts(119_999, 60_000, 60_000) == [60_000]


def test_hopping_windows_overlap() -> None:
    assert window_starts(125_000, 30_000, 10_000) == [100_000, 110_000, 120_000]
    assert window_starts(130_000, 30_000, 10_000) == [110_000, 120_000, 130_000]


def test_means_ignore_nulls_and_duplicates_and_place_windows_list_devices() -> None:
    rows = [
        r("a", 0, 1_000, 20.0),
        r("a", 1, 2_000, None),
        r("a", 1, 2_000, None),
        r("a", 2, 3_000, 23.0),
        r("b", 0, 4_000, 10.0),
    ]
    sensor = expected_windows(rows, "sensor", 10_000, 20_000, 10_000)
    a = sensor[contract.window_id("a", "tumbling", 10, 0)]
    assert a["count"] == 3 and a["final"] is True
    assert a["temperature"] == {"count": 2, "mean": 21.5, "min": 20.0, "max": 23.0}
    assert a["humidity"] == {"count": 0, "mean": None, "min": None, "max": None}
    assert {contract.window_id("a", "hopping", 20, s) for s in (-10_000, 0)} <= set(sensor)
    place = expected_windows(rows, "place", 10_000, 20_000, 10_000)[
        contract.window_id("p", "tumbling", 10, 0)
    ]
    assert place["count"] == 4 and place["devices"] == ["a", "b"]
    assert place["temperature"]["mean"] == pytest.approx(53.0 / 3, rel=1e-15)
