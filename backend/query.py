"""`iot windows`: recent window documents from MongoDB, as a table."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import DESCENDING, MongoClient
from pymongo.errors import PyMongoError

from iot import contract

from .errors import BackendError, ConfigError

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `1h`, `2d` → timedelta."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigError("--last", f"{text!r}: expected a number and a unit s|m|h|d, e.g. 1h")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def fetch_windows(
    uri: str, device: str | None, place: str | None, last: timedelta, limit: int = 200
) -> list[dict[str, Any]]:
    """Windows whose start is within `last` of now, newest first; sensor windows unless a place is given."""
    since = datetime.now(UTC) - last
    if place is not None:
        coll, query = contract.COLL_PLACE_WINDOWS, {"place": place, "start": {"$gte": since}}
    else:
        coll, query = contract.COLL_SENSOR_WINDOWS, {"start": {"$gte": since}}
        if device is not None:
            query["device"] = device
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000, tz_aware=True)
    try:
        db = client.get_default_database(default=contract.DEFAULT_DATABASE)
        return list(db[coll].find(query).sort("start", DESCENDING).limit(limit))
    except PyMongoError as exc:
        raise BackendError(f"reading {coll} from MongoDB failed: {exc}") from exc
    finally:
        client.close()


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
