"""`iot windows`: recent window documents from MongoDB, as a table."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import DESCENDING, MongoClient
from pymongo.errors import PyMongoError

from iot import contract
from iot.reach import check_mongo

from .errors import BackendError, ConfigError

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `1h`, `2d` → timedelta."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigError("--last", f"{text!r}: expected a number and a unit s|m|h|d, e.g. 1h")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@dataclass(frozen=True)
class Found:
    """What `iot windows` found: the newest `limit` windows, how many matched in all, and (when nothing
    matched a device or place) which devices or places have windows in the same span."""

    docs: list[dict[str, Any]]
    total: int
    coll: str
    others: list[str]


def fetch_windows(
    uri: str, device: str | None, place: str | None, last: timedelta, limit: int = 200
) -> Found:
    """Windows whose start is within `last` of now, newest first; sensor windows unless a place is given."""
    if limit < 1:
        raise ConfigError("--limit", f"{limit} must be at least 1")
    since = datetime.now(UTC) - last
    key = "place" if place is not None else "device"
    coll = contract.COLL_PLACE_WINDOWS if place is not None else contract.COLL_SENSOR_WINDOWS
    query: dict[str, Any] = {"start": {"$gte": since}}
    if place is not None or device is not None:
        query[key] = place if place is not None else device
    check_mongo(uri)
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000, tz_aware=True)
    try:
        db = client.get_default_database(default=contract.DEFAULT_DATABASE)
        docs = list(db[coll].find(query).sort("start", DESCENDING).limit(limit))
        total = len(docs) if len(docs) < limit else db[coll].count_documents(query)
        others: list[str] = []
        if not docs and key in query:
            others = sorted(str(v) for v in db[coll].distinct(key, {"start": {"$gte": since}}))
        return Found(docs, total, coll, others)
    except PyMongoError as exc:
        raise BackendError(f"reading {coll} from MongoDB failed: {exc}") from exc
    finally:
        client.close()


def explain(found: Found, device: str | None, place: str | None, last: str) -> str:
    """The line `iot windows` prints on stderr beside the table: nothing matched, or how much was cut."""
    if not found.docs:
        who = f" of place {place!r}" if place else f" of device {device!r}" if device else ""
        line = f"no {found.coll}{who} started in the last {last}"
        if place or device:
            kind = "places" if place else "devices"
            seen = ", ".join(found.others[:20]) + (" …" if len(found.others) > 20 else "")
            line += f"; {kind} with windows then: {seen}" if seen else f"; no {kind} have windows then"
        return line
    if found.total > len(found.docs):
        return (
            f"showing the newest {len(found.docs)} of {found.total} {found.coll}; narrow with "
            "--device/--place/--last or raise --limit"
        )
    return ""


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _state(doc: dict[str, Any]) -> str:
    """`open`, `final`, or `amended` for a final window that took readings after it was final
    (contract revision 3: `revision` > 0, or a window an outage replay created)."""
    if not doc["final"]:
        return "open"
    return "amended" if doc.get("revision", 0) or doc.get("late_count", 0) else "final"


def render(docs: list[dict[str, Any]]) -> str:
    """A plain-text table (one row per window) that also reads well in a pipe."""
    headers = ["key", "kind", "size", "start (UTC)", "n", *contract.METRICS, "state", "rev", "late"]
    rows = []
    for d in docs:
        key = d.get("device") or d.get("place", "?")
        start = d["start"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        means = [_num(d.get(m, {}).get("mean")) for m in contract.METRICS]
        rows.append(
            [
                key,
                d["kind"],
                f"{d['size_s']}s",
                start,
                str(d["count"]),
                *means,
                _state(d),
                str(d.get("revision", 0)),
                str(d.get("late_count", 0)),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
