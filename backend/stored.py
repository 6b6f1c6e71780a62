"""Stored documents are input too: what the backend reads back from MongoDB is checked before it counts.

An amendment starts from the window's stored document (it keeps no closed window in memory). A
document that does not describe that window exactly (a field missing, of the wrong type, a mean that
its exact sum does not give, another key or another window) is never amended: `parse_window` raises
`CorruptWindow`, and the runtime rebuilds the window from the stored readings, the source of truth
(`rebuild`), and dead-letters the document as `corrupt_window`.

Duplicates are compared by what the board claimed (`claim`): a second copy of a reading with other
values is a `conflicting_duplicate`; the first one stays counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from iot import contract

from .accumulators import MetricAcc, WindowAcc
from .errors import BackendError
from .records import SENSOR
from .windows import WindowKey


class CorruptWindow(BackendError, ValueError):
    """A stored window document that cannot be amended; `detail` says what is wrong with it."""

    def __init__(self, wid: str, detail: str) -> None:
        super().__init__(f"window {wid}: {detail}")
        self.detail = detail


@dataclass(slots=True)
class StoredWindow:
    """What an amendment needs from a stored window document, checked."""

    acc: WindowAcc
    revision: int
    late_count: int
    place: str


def _int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, float) and math.isfinite(value)


def _metric(name: str, summary: Any, exact: Any, count: int) -> MetricAcc:
    if not isinstance(summary, Mapping):
        raise ValueError(f"{name} is {type(summary).__name__}, not a summary")
    if not isinstance(exact, Mapping):
        raise ValueError(f"sums.{name} is {type(exact).__name__}, not an exact sum")
    n = summary.get("count")
    if not _int(n) or not 0 <= n <= count:
        raise ValueError(f"{name}.count is {n!r}, not an integer 0..{count}")
    num, exp = exact.get("num"), exact.get("exp")
    if not isinstance(num, str) or not _int(exp) or exp < 0:
        raise ValueError(f"sums.{name} is {exact!r}, not {{num: decimal string, exp: integer >= 0}}")
    acc = MetricAcc()
    try:
        acc.num = int(num)
    except ValueError:
        raise ValueError(f"sums.{name}.num is {num!r}, not a decimal integer") from None
    acc.count, acc.exp = n, exp
    acc.min, acc.max = summary.get("min"), summary.get("max")
    if n == 0:
        if acc.num or acc.min is not None or acc.max is not None or summary.get("mean") is not None:
            raise ValueError(f"{name} counts nothing but has values")
    elif not (_number(acc.min) and _number(acc.max) and acc.min <= acc.max):
        raise ValueError(f"{name} min/max are {acc.min!r}/{acc.max!r}")
    elif summary.get("mean") != acc.mean:
        raise ValueError(
            f"{name}.mean {summary.get('mean')!r} is not what its exact sum gives ({acc.mean!r})"
        )
    return acc


def parse_window(doc: Mapping[str, Any], scope: str, key: str, wkey: WindowKey) -> StoredWindow:
    """The stored document of window `wkey` of `key`, checked (dates as epoch ms); CorruptWindow if
    it is not exactly that window's document."""
    wid = contract.window_id(key, wkey.kind, wkey.size_ms // 1000, wkey.start)
    try:
        return _parse(doc, scope, key, wkey, wid)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise CorruptWindow(wid, str(exc)[:300]) from None


def _parse(doc: Mapping[str, Any], scope: str, key: str, wkey: WindowKey, wid: str) -> StoredWindow:
    if not isinstance(doc, Mapping):
        raise ValueError("not a document")
    expected = {
        "_id": wid,
        "kind": wkey.kind,
        "size_s": wkey.size_ms // 1000,
        "step_s": wkey.step_ms // 1000,
        "start": wkey.start,
        "end": wkey.end,
    }
    for name, value in expected.items():
        got = doc.get(name)
        # Integers may come back as bson.Int64 (an int); a bool is no integer here.
        if got != value or isinstance(got, bool) or not isinstance(got, type(value)):
            raise ValueError(f"{name} is {got!r}, not {value!r}")
    if not isinstance(doc.get("final"), bool):
        raise ValueError(f"final is {doc.get('final')!r}, not true or false")
    count = doc.get("count")
    if not _int(count) or count < 1:
        raise ValueError(f"count is {count!r}, not an integer >= 1")
    acc = WindowAcc()
    acc.count = count
    if scope == SENSOR:
        if doc.get("device") != key:
            raise ValueError(f"device is {doc.get('device')!r}, not {key!r}")
        place = doc.get("place")
        acc.devices = {key}
    else:
        place = key
        devices = doc.get("devices")
        if doc.get("place") != key:
            raise ValueError(f"place is {doc.get('place')!r}, not {key!r}")
        if not isinstance(devices, list) or not devices or not all(contract.is_id(d) for d in devices):
            raise ValueError(f"devices is {devices!r}, not a list of device ids")
        acc.devices = set(devices)
    if not contract.is_id(place):
        raise ValueError(f"place is {place!r}, not an id")
    sums = doc.get("sums")
    if not isinstance(sums, Mapping):
        raise ValueError(f"sums is {sums!r}, not the exact sums")
    acc.metrics = {m: _metric(m, doc.get(m), sums.get(m), count) for m in contract.METRICS}
    acc.offset = _counter(doc, "offset", -1)
    return StoredWindow(acc, _counter(doc, "revision", 0), _counter(doc, "late_count", 0), place)


def _counter(doc: Mapping[str, Any], name: str, low: int) -> int:
    value = doc.get(name)
    if not _int(value) or value < low:
        raise ValueError(f"{name} is {value!r}, not an integer >= {low}")
    return value


def revision_of(doc: Any) -> int:
    """The revision of a (possibly corrupt) document, to go on from: 0 when it has none that is one."""
    return _count_field(doc, "revision")


def late_count_of(doc: Any) -> int:
    """The late_count of a (possibly corrupt) document, to go on from: 0 when it has none."""
    return _count_field(doc, "late_count")


def _count_field(doc: Any, name: str) -> int:
    value = doc.get(name) if isinstance(doc, Mapping) else None
    return value if _int(value) and value >= 0 else 0


@dataclass(slots=True)
class Rebuilt:
    """A window rebuilt from the stored readings: its accumulator, the ids it counted, and the stored
    readings it could not use (themselves corrupt)."""

    acc: WindowAcc
    ids: set[str]
    unusable: list[str]


def rebuild(readings: Iterable[Mapping[str, Any]]) -> Rebuilt:
    """The accumulator of the stored readings (dates as epoch ms) a window covers: the source of truth
    when its document is corrupt."""
    acc = WindowAcc()
    ids: set[str] = set()
    unusable: list[str] = []
    for doc in readings:
        rid = str(doc.get("_id"))
        usable = (
            contract.is_id(doc.get("device"))
            and contract.is_id(doc.get("place"))
            and all(_number(doc.get(m)) or doc.get(m) is None for m in contract.METRICS)
        )
        if not usable or rid in ids:
            unusable.append(rid)
            continue
        ids.add(rid)
        acc.add(doc)
    return Rebuilt(acc, ids, unusable)


# --- duplicates ----------------------------------------------------------------------------------
_CLAIMED: tuple[str, ...] = ("place", *contract.METRICS, "fw")


def claim(reading: Mapping[str, Any]) -> dict[str, Any]:
    """What the board said in a reading, as far as the pipeline keeps it: place, metrics, firmware, and
    its clock's time when it claimed a valid one. The gateway replaces `ts` by its receive time when the
    board's clock was not synced (`time_valid` false) or ran ahead (the board's `ts` kept in
    `device_ts`), so two deliveries of one reading can differ there without the board having said two
    things."""
    out = {name: reading.get(name) for name in _CLAIMED}
    device_ts = reading.get("device_ts")
    valid = bool(reading.get("time_valid")) or device_ts is not None
    out["time_valid"] = valid
    out["ts"] = (device_ts if device_ts is not None else reading.get("ts")) if valid else None
    return out


def conflict(first: Mapping[str, Any], again: Mapping[str, Any]) -> list[str]:
    """The claimed fields in which a copy of a reading differs from the first one counted."""
    a, b = claim(first), claim(again)
    return [name for name in a if a[name] != b[name]]
