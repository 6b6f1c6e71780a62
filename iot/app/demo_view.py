"""What `iot demo` shows, from what it read: per place the last final window (mean, min–max) beside
the open one and a sparkline of the last final means, per sensor its last final window, and the
pipeline's counts, each reading counted once. Pure: documents and numbers in, rich renderables out,
readable at 100 columns (`tests/demo/test_demo_view.py` renders it at 100 and 160)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from iot import contract

UNITS = {"temperature": "°C", "humidity": "%", "pressure": "hPa", "luminosity": "lx"}
DIGITS = {"temperature": 2, "humidity": 1, "pressure": 1, "luminosity": 0}
SHORT = {"temperature": "temp", "humidity": "hum", "pressure": "press", "luminosity": "light"}
TREND_METRIC = "temperature"
TREND_LENGTH = 12
_BARS = "▁▂▃▄▅▆▇█"


@dataclass
class Latest:
    """One place's or sensor's windows of one kind and size: the last final one, the open one after
    it, and the means of the last final ones (oldest first) for the trend."""

    key: str
    final: dict[str, Any] | None = None
    open: dict[str, Any] | None = None
    trend: list[float] = field(default_factory=list)


def latest(docs: Iterable[Mapping[str, Any]], key: str, keys: Sequence[str]) -> list[Latest]:
    """Group window documents, newest first, by `key` (place or device) into Latest, one per key in
    `keys` (in that order, a key without windows too)."""
    out = {k: Latest(k) for k in keys}
    for doc in docs:
        item = out.get(str(doc.get(key)))
        if item is None:
            continue
        if doc.get("final"):
            if item.final is None:
                item.final = dict(doc)
            mean = (doc.get(TREND_METRIC) or {}).get("mean")
            if isinstance(mean, (int, float)) and len(item.trend) < TREND_LENGTH:
                item.trend.insert(0, float(mean))
        elif item.open is None and item.final is None:
            item.open = dict(doc)  # newer than every final one seen so far: the window still open
    return [out[k] for k in keys]


# The smallest span the trend's bars stretch over: a change the sensor cannot tell from noise
# (BME280 ±2 LSB after rounding, about 0.01 °C) must not fill the column from ▁ to █.
TREND_MIN_SPAN = 0.1


def sparkline(values: Sequence[float], min_span: float = TREND_MIN_SPAN) -> str:
    """`▁▃▅█`: each value's place between the series' min and max, over at least `min_span`
    (centred), so a flat series reads flat."""
    if not values:
        return ""
    low, high = min(values), max(values)
    if high - low < min_span:
        middle = (high + low) / 2
        low, high = middle - min_span / 2, middle + min_span / 2
    return "".join(_BARS[round((v - low) / (high - low) * (len(_BARS) - 1))] for v in values)


def trend(values: Sequence[float]) -> str:
    """The sparkline and the change from the first to the last value (`▃▄▅▆ +0.04`)."""
    if len(values) < 2:
        return sparkline(values)
    return f"{sparkline(values)} {values[-1] - values[0]:+.{DIGITS[TREND_METRIC]}f}"


def _num(metric: str, value: Any) -> str:
    return "—" if not isinstance(value, (int, float)) else f"{value:.{DIGITS[metric]}f}"


def _stats(doc: Mapping[str, Any] | None, metric: str) -> Mapping[str, Any]:
    stats = (doc or {}).get(metric) or {}
    return stats if stats.get("count") else {}


def _clock(value: Any) -> str:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone().strftime("%H:%M:%S")
    return str(value)


def place_title(window_s: int) -> Text:
    return Text(f"Per place: the last final {window_s} s window (mean, min–max) and the open one", "bold")


def sensor_title(prefix: str) -> Text:
    return Text(
        f"Per sensor (devices {prefix}-<place>-NN): the last final window, readings in the open one", "bold"
    )


def _table() -> Table:
    return Table(box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, show_edge=False, expand=False)


def place_table(rows: Sequence[Latest]) -> Table:
    table = _table()
    table.add_column("place", no_wrap=True)
    table.add_column("window", no_wrap=True)
    table.add_column("", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    for metric in contract.METRICS:
        table.add_column(f"{SHORT[metric]} {UNITS[metric]}", no_wrap=True)
    table.add_column(f"trend {UNITS[TREND_METRIC]}", no_wrap=True)
    for row in rows:
        if row.final is None and row.open is None:
            table.add_row(row.key, "[dim]no window yet[/]", "", "", "", "", "", "", "")
            continue
        if row.final is not None:
            cells = []
            for metric in contract.METRICS:
                s = _stats(row.final, metric)
                span = f"{_num(metric, s.get('min'))}–{_num(metric, s.get('max'))}" if s else ""
                cells.append(Text.assemble(_num(metric, s.get("mean")), "\n", (span, "dim")))
            table.add_row(
                row.key,
                _clock(row.final["start"]),
                "[green]final[/]",
                str(row.final.get("count", 0)),
                *cells,
                trend(row.trend),
            )
        if row.open is not None:
            table.add_row(
                "" if row.final is not None else row.key,
                _clock(row.open["start"]),
                "[yellow]open[/]",
                str(row.open.get("count", 0)),
                *(_num(m, _stats(row.open, m).get("mean")) for m in contract.METRICS),
                "",
            )
    return table


def sensor_table(rows: Sequence[Latest], prefix: str) -> Table:
    table = _table()
    table.add_column("device", no_wrap=True)
    table.add_column("window", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    for metric in contract.METRICS:
        table.add_column(UNITS[metric], justify="right", no_wrap=True)
    table.add_column("open n", justify="right", no_wrap=True)
    for row in rows:
        name = row.key.removeprefix(f"{prefix}-")
        final = row.final
        table.add_row(
            name,
            _clock(final["start"]) if final else "[dim]—[/]",
            str(final.get("count", 0)) if final else "",
            *(_num(m, _stats(final, m).get("mean")) for m in contract.METRICS),
            str(row.open.get("count", 0)) if row.open else "",
        )
    return table


@dataclass(frozen=True)
class Counts:
    produced: float  # readings the gateway put into iot.readings
    rejected: float  # to the DLQ
    processed: float  # readings the backend windowed (once each: the sensor scope's count)


def header(title: str, counts: Counts, first_window: float | None, lines: Sequence[str]) -> Panel:
    first = (
        f"first window after {first_window:.0f} s"
        if first_window is not None
        else "waiting for the first window…"
    )
    body = [
        f"readings into Kafka {counts.produced:,.0f} · windowed by the backend {counts.processed:,.0f} · "
        f"rejected {counts.rejected:,.0f} · {first}",
        *lines,
    ]
    return Panel("\n".join(body), title=title, title_align="left")


def view(
    title: str,
    counts: Counts,
    first_window: float | None,
    lines: Sequence[str],
    places: Sequence[Latest],
    sensors: Sequence[Latest],
    window_s: int,
    prefix: str,
) -> RenderableType:
    return Group(
        header(title, counts, first_window, lines),
        place_title(window_s),
        place_table(places),
        sensor_title(prefix),
        sensor_table(sensors, prefix),
    )
