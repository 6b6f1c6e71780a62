"""The one window oracle of the tests: expected window documents computed independently of backend/.

Deliberately plain: every distinct (device, boot, seq) reading is put into each epoch-aligned window
[start, start + size) that contains its ts; means are exact (Fractions), so they equal the backend's
exact sums bit for bit. `scope` is "sensor" (keyed by device) or "place". The backend suite, the
end-to-end acceptance test and the time-truth tests all compare MongoDB against it.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from typing import Any

from iot import contract


def window_starts(ts_ms: int, size_ms: int, step_ms: int) -> list[int]:
    """Starts (ms) of every window [start, start + size) that contains ts, aligned to the epoch."""
    last = ts_ms - ts_ms % step_ms
    return [s for s in range(last - size_ms + step_ms, last + 1, step_ms) if s <= ts_ms < s + size_ms]


def _metric(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "mean": None, "min": None, "max": None}
    return {
        "count": len(values),
        "mean": float(sum(map(Fraction, values)) / len(values)),
        "min": min(values),
        "max": max(values),
    }


def expected_windows(
    readings: Iterable[dict[str, Any]],
    scope: str,
    tumbling_ms: int,
    hopping_ms: int,
    step_ms: int,
) -> dict[str, dict[str, Any]]:
    """Window documents (without bookkeeping, dates as ms) over the distinct readings, by _id."""
    groups: dict[tuple[str, str, int, int], list[dict[str, Any]]] = {}
    seen: set[tuple[str, int, int]] = set()
    for r in readings:
        ident = (r["device"], r["boot"], r["seq"])
        if ident in seen:
            continue
        seen.add(ident)
        key = r["device"] if scope == "sensor" else r["place"]
        t = r["ts"]
        for start in window_starts(t, tumbling_ms, tumbling_ms):
            groups.setdefault((key, "tumbling", tumbling_ms, start), []).append(r)
        for start in window_starts(t, hopping_ms, step_ms):
            groups.setdefault((key, "hopping", hopping_ms, start), []).append(r)
    docs = {}
    for (key, kind, size, start), rs in groups.items():
        doc: dict[str, Any] = {"_id": contract.window_id(key, kind, size // 1000, start)}
        if scope == "sensor":
            doc.update(device=key, place=rs[-1]["place"])
        else:
            doc.update(place=key, devices=sorted({r["device"] for r in rs}))
        doc.update(
            kind=kind,
            size_s=size // 1000,
            step_s=(size if kind == "tumbling" else step_ms) // 1000,
            start=start,
            end=start + size,
            count=len(rs),
        )
        for m in contract.METRICS:
            doc[m] = _metric([r[m] for r in rs if r[m] is not None])
        doc["final"] = True
        docs[doc["_id"]] = doc
    return docs


# Bookkeeping fields of a window document that the oracle does not model: when it was written, how it
# got there (revision, late_count: checked by the tests that make amendments), the exact sums and the
# replay fence (internal to amendments; the means they give are compared).
BOOKKEEPING = frozenset({"updated_at", "revision", "late_count", "sums", "offset", "offset_slots"})


def as_comparable(doc: dict[str, Any]) -> dict[str, Any]:
    """A Mongo window document with dates as epoch ms and without its bookkeeping fields."""
    out = {k: v for k, v in doc.items() if k not in BOOKKEEPING}
    for f in ("start", "end"):
        if not isinstance(out[f], int):
            out[f] = int(out[f].timestamp() * 1000)
    return out
