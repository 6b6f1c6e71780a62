"""Decoding `iot.readings` records and shaping what the backend writes: window and reading documents,
DLQ records. Pure functions; dates stay epoch ms here and become BSON dates in the Mongo sink."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from iot import contract

from .windows import WindowAcc, WindowKey

SENSOR: Final = "sensor"
PLACE: Final = "place"
UNKNOWN_TOPIC: Final = "sensors/unknown/unknown/reading"


class RejectedRecord(ValueError):
    """A record on iot.readings that is not a valid reading; it goes to the DLQ, never into a window."""

    def __init__(self, reason: str, detail: str, topic: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.topic = topic


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def decode_reading(value: bytes | None) -> dict[str, Any]:
    """Validate one iot.readings value (payload v1 plus `received_at`) and return the reading."""
    if value is None:
        raise RejectedRecord(contract.REASON_MALFORMED_JSON, "record has no value", UNKNOWN_TOPIC)
    try:
        obj = json.loads(value, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RejectedRecord(contract.REASON_MALFORMED_JSON, str(exc)[:200], UNKNOWN_TOPIC) from None
    if not isinstance(obj, dict):
        kind = type(obj).__name__
        raise RejectedRecord(contract.REASON_NOT_OBJECT, f"value is a JSON {kind}", UNKNOWN_TOPIC)
    place, device = obj.get("place"), obj.get("device")
    topic = (
        contract.reading_topic(place, device)
        if isinstance(place, str)
        and isinstance(device, str)
        and contract.ID_PATTERN.match(place)
        and contract.ID_PATTERN.match(device)
        else UNKNOWN_TOPIC
    )
    received_at = obj.pop("received_at", None)
    if not isinstance(received_at, int) or isinstance(received_at, bool):
        raise RejectedRecord(contract.REASON_SCHEMA, "field 'received_at' must be int epoch ms", topic)
    # Set by the gateway's clock guard (contract revision 3): the board's own, re-stamped, ts.
    device_ts = obj.pop("device_ts", None)
    if device_ts is not None and (not isinstance(device_ts, int) or isinstance(device_ts, bool)):
        raise RejectedRecord(contract.REASON_SCHEMA, "field 'device_ts' must be int epoch ms", topic)
    try:
        reading = contract.validate_reading(topic, contract.encode(obj))
    except contract.InvalidReading as exc:
        raise RejectedRecord(exc.reason, exc.detail, topic) from None
    except ValueError as exc:  # encode refuses what cannot be re-encoded
        raise RejectedRecord(contract.REASON_SCHEMA, str(exc)[:200], topic) from None
    reading["received_at"] = received_at
    if device_ts is not None:
        reading["device_ts"] = device_ts
    return reading


dlq_record = contract.dlq_record


def late_record(scope: str, reading: Mapping[str, Any], windows: list[WindowKey]) -> dict[str, Any]:
    payload = {k: v for k, v in reading.items() if k != "received_at"}
    missed = ",".join(f"{w.kind}:{w.size_ms // 1000}s@{w.start}" for w in windows)
    return dlq_record(
        contract.REASON_LATE,
        f"{scope} window(s) final and the reading is further behind the watermark than the allowed"
        f" lateness, not counted: {missed}",
        contract.reading_topic(reading["place"], reading["device"]),
        contract.encode(payload),
        reading["received_at"],
    )


def window_doc(
    scope: str,
    key: str,
    place: str,
    wkey: WindowKey,
    acc: WindowAcc,
    final: bool,
    now_ms: int,
    revision: int = 0,
    late_count: int = 0,
) -> dict[str, Any]:
    """A window document with dates as epoch ms (the Kafka form of the contract's document).

    Besides the contract's fields it carries what an amendment needs to go on from the document alone
    (so no closed window stays in memory): `sums` (the exact sum of each metric, a decimal numerator
    over 2**exp) and `offset` (the highest input offset counted, the replay fence)."""
    doc: dict[str, Any] = {"_id": contract.window_id(key, wkey.kind, wkey.size_ms // 1000, wkey.start)}
    if scope == SENSOR:
        doc["device"] = key
        doc["place"] = place
    else:
        doc["place"] = key
        doc["devices"] = sorted(acc.devices)
    doc.update(
        kind=wkey.kind,
        size_s=wkey.size_ms // 1000,
        step_s=wkey.step_ms // 1000,
        start=wkey.start,
        end=wkey.end,
        count=acc.count,
    )
    for name, macc in acc.metrics.items():
        doc[name] = macc.summary()
    doc["final"] = final
    doc["revision"] = revision
    doc["late_count"] = late_count
    doc["updated_at"] = now_ms
    doc["sums"] = {name: macc.exact() for name, macc in acc.metrics.items()}
    doc["offset"] = acc.offset
    return doc
