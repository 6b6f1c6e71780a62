"""An independent, deliberately plain reference of the window arithmetic, to check the backend against.

It shares no code with backend/: windows are computed from the readings the test itself saw on MQTT.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from iot.contract import METRICS


def window_starts(ts_ms: int, size_s: int, step_s: int) -> list[int]:
    """Starts (ms) of every window [start, start + size) that contains ts, aligned to the epoch."""
    size, step = size_s * 1000, step_s * 1000
    last = ts_ms - ts_ms % step
    return [s for s in range(last - size + step, last + 1, step) if s <= ts_ms < s + size]


def expected_windows(
    readings: Iterable[dict[str, Any]], key: str, size_s: int, step_s: int
) -> dict[tuple[str, int], dict[str, Any]]:
    """(key, start_ms) -> {count, devices, metric: {count, mean, min, max}}, over distinct readings."""
    seen: set[tuple[str, int, int]] = set()
    values: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    counts: dict[tuple[str, int], int] = defaultdict(int)
    devices: dict[tuple[str, int], set[str]] = defaultdict(set)
    for r in readings:
        ident = (r["device"], r["boot"], r["seq"])
        if ident in seen:
            continue
        seen.add(ident)
        for start in window_starts(r["ts"], size_s, step_s):
            w = (r[key], start)
            counts[w] += 1
            devices[w].add(r["device"])
            for m in METRICS:
                if r[m] is not None:
                    values[w][m].append(float(r[m]))
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for w, n in counts.items():
        doc: dict[str, Any] = {"count": n, "devices": devices[w]}
        for m in METRICS:
            xs = values[w][m]
            doc[m] = (
                {"count": len(xs), "mean": sum(xs) / len(xs), "min": min(xs), "max": max(xs)} if xs else None
            )
        out[w] = doc
    return out
