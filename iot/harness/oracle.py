"""The one window oracle: the window documents the backend must write, computed independently of
backend/ (the backend suite, the end-to-end and time-truth tests, the soak's accounting).

Deliberately plain: every distinct (device, boot, seq) reading is put into each epoch-aligned window
[start, start + size) that contains its ts; means are exact (Fractions), so they equal the backend's
exact sums bit for bit. `scope` is "sensor" (keyed by device) or "place".

For a run too large to hold every reading as a document (the soak: a million readings), the same
rules over compact inputs: `windows_of_slots` (which windows must exist) and `summary` with
`exact=False` plus `differences` (a stored window against its readings, means to 1e-12).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from iot import contract

__all__ = [
    "BOOKKEEPING",
    "as_comparable",
    "differences",
    "expected_windows",
    "slot_ms",
    "summary",
    "window_starts",
    "windows_complete",
    "windows_of_slots",
]

WindowSpec = tuple[str, int, int]  # (kind, size_s, step_s)


def window_starts(ts_ms: int, size_ms: int, step_ms: int) -> list[int]:
    """Starts (ms) of every window [start, start + size) that contains ts, aligned to the epoch,
    oldest first."""
    last = ts_ms - ts_ms % step_ms
    return list(range(last, ts_ms - size_ms, -step_ms))[::-1]


def summary(values: Sequence[float], exact: bool = True) -> dict[str, Any]:
    """A metric's summary in a window: count, mean, min, max (None without values). `exact=False`
    takes the mean from math.fsum, ~20x cheaper than Fractions and within an ulp or two of them."""
    if not values:
        return {"count": 0, "mean": None, "min": None, "max": None}
    mean = float(sum(map(Fraction, values)) / len(values)) if exact else math.fsum(values) / len(values)
    return {"count": len(values), "mean": mean, "min": min(values), "max": max(values)}


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
            doc[m] = summary([r[m] for r in rs if r[m] is not None])
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


def slot_ms(specs: Sequence[WindowSpec]) -> int:
    """The largest span that divides every window's size and step: readings in one such slot belong
    to the same windows."""
    return math.gcd(*(s * 1000 for _kind, size, step in specs for s in (size, step)))


def windows_of_slots(
    slots: Mapping[str, Iterable[int]], slot: int, specs: Sequence[WindowSpec]
) -> set[tuple[str, str, int, int]]:
    """(key, kind, size_s, start_ms) of every window some reading of a key falls in, from the slots
    (`ts // slot`) the key has readings in; `slot` must divide every size and step."""
    out: set[tuple[str, str, int, int]] = set()
    for key, key_slots in slots.items():
        for s in key_slots:
            ts = s * slot
            for kind, size_s, step_s in specs:
                for start in window_starts(ts, size_s * 1000, step_s * 1000):
                    out.add((key, kind, size_s, start))
    return out


def windows_complete(counts: Callable[[str, dict[str, Any]], int], expected: Mapping[str, int]) -> bool:
    """True once every collection has no window that is not final and at least its expected number of
    final windows (`windows_of_slots`). `counts(collection, filter)` counts documents.

    "No window open" alone is not the end of a run: the backend stores a key's readings before it
    writes the windows they fall in, so each key's last windows may not exist yet."""
    return all(
        counts(coll, {"final": {"$ne": True}}) == 0 and counts(coll, {"final": True}) >= want
        for coll, want in expected.items()
    )


def differences(doc: Mapping[str, Any], expected: Mapping[str, Any], rel_tol: float = 1e-12) -> list[str]:
    """How a stored window differs from the expected one (count, each metric's summary, and the
    place's devices when expected); means compared to `rel_tol`. Empty when it matches."""
    diffs = []
    if doc.get("count") != expected["count"]:
        diffs.append(f"count {doc.get('count')} != {expected['count']}")
    for name in contract.METRICS:
        got, want = doc.get(name) or {}, expected[name]
        for part in ("count", "min", "max"):
            if got.get(part) != want[part]:
                diffs.append(f"{name}.{part} {got.get(part)} != {want[part]}")
        g, w = got.get("mean"), want["mean"]
        if (g is None) != (w is None) or (g is not None and not math.isclose(g, w, rel_tol=rel_tol)):
            diffs.append(f"{name}.mean {g} != {w}")
    if "devices" in expected and sorted(doc.get("devices") or []) != expected["devices"]:
        diffs.append(f"devices {len(doc.get('devices') or [])} != {len(expected['devices'])}")
    return diffs
