"""The demo's screen from window documents made here, rendered as a terminal of 100 and of 160 columns
would show it: every column and every device name whole, the last final window with its min–max
beside the open one, a trend per place, each reading counted once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console

from iot import contract
from iot.app import demo_view
from iot.app.demo_view import Counts, Latest, latest, sparkline

pytestmark = pytest.mark.unit
T0 = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
PLACES = ["kitchen", "garage", "bedroom"]
DEVICES = [f"demo-{p}-0{n}" for p in PLACES for n in (1, 2)]


def _doc(key: str, who: str, i: int, final: bool, temp: float, count: int = 5) -> dict[str, Any]:
    stats = {
        "temperature": (temp, temp - 0.04, temp + 0.05),
        "humidity": (45.04, 44.9, 45.2),
        "pressure": (1013.21, 1013.1, 1013.3),
        "luminosity": (312.4, 310.0, 315.0),
    }
    return {
        key: who,
        "kind": "tumbling",
        "size_s": 10,
        "start": T0 + timedelta(seconds=10 * i),
        "count": count,
        "final": final,
        **{m: {"count": count, "mean": mean, "min": lo, "max": hi} for m, (mean, lo, hi) in stats.items()},
    }


def _rows(key: str, keys: list[str]) -> list[Latest]:
    docs = []
    for who in keys:
        docs.append(_doc(key, who, 20, False, 21.6, count=2))  # newest first: the open window
        docs += [_doc(key, who, i, True, 21.0 + 0.03 * i) for i in range(19, 0, -1)]
    return latest(docs, key, keys)


def _screen(width: int) -> str:
    console = Console(width=width, record=True, color_system=None, force_terminal=False)
    console.print(
        demo_view.view(
            "IoT demo — 6 boards in 3 places",
            Counts(produced=1200, rejected=0, processed=1200),
            38.0,
            ["Prometheus http://127.0.0.1:9090"],
            _rows("place", PLACES),
            _rows("device", DEVICES),
            10,
            "demo",
        )
    )
    return console.export_text()


@pytest.mark.parametrize("width", [100, 160])
def test_the_screen_is_whole_at_the_width(width: int) -> None:
    screen = _screen(width)
    assert max(len(line) for line in screen.splitlines()) <= width
    for name in (d.removeprefix("demo-") for d in DEVICES):
        assert name in screen, f"{name} is cut at {width} columns"
    assert "…" not in screen
    head = next(line for line in screen.splitlines() if line.lstrip().startswith("place"))
    assert head.split()[:4] == ["place", "window", "n", "temp"] or " n " in head
    assert "open n" in screen


def test_a_place_shows_its_last_final_window_with_min_max_beside_the_open_one() -> None:
    screen = _screen(100)
    lines = screen.splitlines()
    final = next(i for i, line in enumerate(lines) if line.lstrip().startswith("kitchen"))
    # 12:00:00 + 19 windows of 10 s, local time as the screen shows it.
    start = (T0 + timedelta(seconds=190)).astimezone().strftime("%H:%M:%S")
    assert start in lines[final] and "final" in lines[final] and "21.57" in lines[final]
    assert "21.53–21.62" in lines[final + 1]  # the min–max under the mean
    assert "open" in lines[final + 2] and "21.60" in lines[final + 2]


def test_the_trend_is_the_last_final_means_oldest_first() -> None:
    (kitchen,) = [r for r in _rows("place", PLACES) if r.key == "kitchen"]
    assert kitchen.trend == pytest.approx([21.0 + 0.03 * i for i in range(8, 20)])
    assert sparkline(kitchen.trend) == "▁▂▂▃▄▄▅▅▆▇▇█"
    assert demo_view.trend(kitchen.trend).endswith(" +0.33")
    assert sparkline([5.0, 5.0]) == "▅▅" and sparkline([]) == ""
    # A change the sensor cannot tell from noise stays within a bar of flat, not from ▁ to █.
    assert sparkline([20.915, 20.915, 20.92, 20.92]) == "▄▄▅▅"


def test_each_reading_is_counted_once() -> None:
    header = _screen(100).splitlines()[1]
    assert "readings into Kafka 1,200 · windowed by the backend 1,200" in header


def test_a_key_without_windows_says_so() -> None:
    (row,) = latest([], "place", ["attic"])
    assert row.final is None and row.open is None
    console = Console(width=100, record=True, color_system=None)
    console.print(demo_view.place_table([row]))
    assert "no window yet" in console.export_text()


def test_metrics_listed_are_the_contracts() -> None:
    assert tuple(demo_view.UNITS) == contract.METRICS
