"""Decoding `iot.readings` records and shaping what the backend writes: window and reading documents,
DLQ records. Pure functions; dates stay epoch ms here and become BSON dates in the Mongo sink."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from iot import contract

from .accumulators import WindowAcc
from .errors import BackendError
from .windows import WindowKey

SENSOR: Final = "sensor"
PLACE: Final = "place"
UNKNOWN_TOPIC: Final = "sensors/unknown/unknown/reading"


class RejectedRecord(BackendError, ValueError):
    """A record on iot.readings that is not a valid reading; it goes to the DLQ, never into a window."""

    def __init__(self, reason: str, detail: str, topic: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.topic = topic


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _parse(value: bytes) -> tuple[Any, bool]:
    """One JSON parse, and whether orjson made it (then every float in it is finite). orjson (~0.5 us
    for a reading, json 2.7 us); a value orjson refuses is parsed again by json so that what is
    rejected, and why, stays as it was (json also reads 1e400 as inf, lone surrogates and UTF-16;
    orjson reads an integer beyond 64 bits as a float, which validation then rejects instead of
    letting pymongo fail on it)."""
    try:
        return orjson.loads(value), True
    except orjson.JSONDecodeError:
        return json.loads(value, parse_constant=_reject_constant), False


# The size limit is on the payload as the contract encodes it (compact, ensure_ascii). Re-encoding
# every reading only to measure it took ~10 % of the worker's event loop (py-spy, issue #24), so a
# record is re-encoded only when a cheap bound does not already prove it within the limit. For an
# ASCII record without DEL (which the encoder escapes into six bytes) that orjson parsed (finite
# floats), re-encoding adds nothing to strings and keys (escapes come out as long or shorter),
# integers, literals or whitespace (dropped), and at most NUMBER_GROWTH bytes to a number: a JSON
# float is at least 3 characters ("1e5"), Python's repr of one at most 24 ("100000.0" for "1e5").
# There is at most one number per ':', ',' or '[' (plus a bare one): the bound counts them all.
NUMBER_GROWTH: Final = 21


def encoded_size_bound(value: bytes) -> int | None:
    """An upper bound of the contract encoding's size of what `value` parses to (orjson having parsed
    it), or None when none is cheap to give."""
    if not value.isascii() or b"\x7f" in value:
        return None
    numbers = value.count(b":") + value.count(b",") + value.count(b"[") + 1
    return len(value) + NUMBER_GROWTH * numbers


@functools.lru_cache(maxsize=16_384)
def _topic_of(place: str, device: str) -> str:
    """The reading topic of a record's (place, device), UNKNOWN_TOPIC unless both are ids. Cached: a
    fleet's pairs repeat, one per board, and the two id checks and the format were ~4 % of the batch
    path's CPU (bench/batch_cpu.py)."""
    if contract.is_id(place) and contract.is_id(device):
        return contract.reading_topic(place, device)
    return UNKNOWN_TOPIC


def decode_reading(value: bytes | None) -> dict[str, Any]:
    """Validate one iot.readings value (payload v1 plus `received_at`) and return the reading."""
    if value is None:
        raise RejectedRecord(contract.REASON_MALFORMED_JSON, "record has no value", UNKNOWN_TOPIC)
    try:
        obj, finite = _parse(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RejectedRecord(contract.REASON_MALFORMED_JSON, str(exc)[:200], UNKNOWN_TOPIC) from None
    except RecursionError:
        # orjson stops at 1,024 levels, and json then recurses once per level: a record of 3,000 `[`
        # exceeded the stack and crashed the agent with its batch.
        raise RejectedRecord(
            contract.REASON_MALFORMED_JSON, "JSON nested too deeply", UNKNOWN_TOPIC
        ) from None
    if not isinstance(obj, dict):
        kind = type(obj).__name__
        raise RejectedRecord(contract.REASON_NOT_OBJECT, f"value is a JSON {kind}", UNKNOWN_TOPIC)
    place, device = obj.get("place"), obj.get("device")
    # Only str pairs reach the cache (a list is unhashable, and is no id).
    topic = _topic_of(place, device) if type(place) is str and type(device) is str else UNKNOWN_TOPIC
    received_at = obj.pop("received_at", None)
    if not isinstance(received_at, int) or isinstance(received_at, bool):
        raise RejectedRecord(contract.REASON_SCHEMA, "field 'received_at' must be int epoch ms", topic)
    # Set by the gateway's clock guard (contract revision 3): the board's own, re-stamped, ts.
    device_ts = obj.pop("device_ts", None)
    if device_ts is not None and (not isinstance(device_ts, int) or isinstance(device_ts, bool)):
        raise RejectedRecord(contract.REASON_SCHEMA, "field 'device_ts' must be int epoch ms", topic)
    try:
        bound = encoded_size_bound(value) if finite else None
        if bound is not None and bound <= contract.MAX_PAYLOAD_BYTES:
            size = bound  # within the limit re-encoded too: no need to re-encode it
        else:
            size = len(contract.encode(obj))  # the exact size, as the contract encodes it
        reading = contract.validate_reading_object(topic, obj, size)
    except contract.InvalidReading as exc:
        raise RejectedRecord(exc.reason, exc.detail, topic) from None
    except ValueError as exc:  # encode refuses what cannot be re-encoded
        raise RejectedRecord(contract.REASON_SCHEMA, str(exc)[:200], topic) from None
    reading["received_at"] = received_at
    if device_ts is not None:
        reading["device_ts"] = device_ts
    return reading


# The keys of a reading `decode_reading` returns, without and with the optional device_ts.
_FORWARD_KEYS: Final = frozenset(contract.FIELDS) | {"received_at"}
_FORWARD_KEYS_TS: Final = _FORWARD_KEYS | {"device_ts"}


def encode_forward(reading: Mapping[str, Any]) -> bytes:
    """A validated reading as the sensor stage forwards it to the place stage: its normalised form, so
    the place stage decodes it without validating it again (`decode_forwarded`)."""
    return orjson.dumps(reading)


# Forwarded readings travel as bundles: one repartition record per place per sensor batch holds up to
# BUNDLE_MAX readings. Faust's per-message machinery (a `wait_first` with two futures, stream and ack
# bookkeeping) is then paid per bundle on the place stage instead of per reading, and the producer
# sends one message per bundle. A reading's input offset in the place scope (the amendment fence, which
# must grow along the key's log) is `record offset * FORWARD_SLOTS + index in the bundle`. Each element
# is `[partition, offset, reading]`: the reading's origin, the iot.readings record the sensor scope
# counted it from (the place scope's replay fence, engine.py).
BUNDLE_MAX: Final = 1000
FORWARD_SLOTS: Final = 1024
# About what a forwarded reading takes in a bundle (a board's reading with its origin: 235 B), to
# bound the place stage's batches in bytes.
FORWARD_BYTES: Final = 256
# (key, value, partition or None for the key's): a record for the place repartition topic.
Forward = tuple[str, bytes, int | None]


# After each batch the sensor stage tells every place partition how far each source partition it
# owns has come: the highest `ts` it forwarded from there while that partition still has unread
# input, or null once it has caught up (no hold then). The place stage holds its windows below the
# lowest of these (ScopeEngine.holds), so a backlog read unevenly across source partitions is merged
# in event-time order instead of amended. The key is no valid place id (contract.ID_PATTERN).
WATERMARKS_KEY: Final = "~watermarks"


def encode_watermarks(marks: Mapping[int, int | None]) -> bytes:
    return orjson.dumps({"source_watermarks": {str(p): ts for p, ts in marks.items()}})


def decode_watermarks(value: bytes | None) -> dict[int, int | None]:
    """A watermarks record of the place repartition topic; RejectedRecord if it is not one."""
    try:
        obj = orjson.loads(value or b"")
        marks = obj["source_watermarks"]
        out = {int(p): ts for p, ts in marks.items()}
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError) as exc:
        detail = f"bad watermarks record: {exc}"[:200]
        raise RejectedRecord(contract.REASON_SCHEMA, detail, UNKNOWN_TOPIC) from None
    if not all(ts is None or (type(ts) is int) for ts in out.values()):
        raise RejectedRecord(contract.REASON_SCHEMA, "watermarks must be int epoch ms or null", UNKNOWN_TOPIC)
    return out


def encode_bundle(forwards: Sequence[tuple[int, int, bytes]]) -> bytes:
    """(origin partition, origin offset, reading encoded by `encode_forward`) as one repartition record."""
    if not 0 < len(forwards) <= BUNDLE_MAX:
        raise ValueError(f"a bundle holds 1..{BUNDLE_MAX} readings, got {len(forwards)}")
    return b"[" + b",".join(b"[%d,%d,%b]" % item for item in forwards) + b"]"


Forwarded = tuple[dict[str, Any], tuple[int, int]]


def decode_forwarded(value: bytes | None) -> list[Forwarded | RejectedRecord]:
    """Decode a record of the place repartition topic: a bundle (JSON array) of `[partition, offset,
    reading]` as `encode_bundle` wrote them, the readings taken as they are (one parse, ~1 us a reading
    against ~8 us to validate). Each element is (reading, origin), or a RejectedRecord for one that is
    not that (never expected: our own sensor stage wrote it)."""
    try:
        items = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError as exc:
        return [RejectedRecord(contract.REASON_MALFORMED_JSON, str(exc)[:200], UNKNOWN_TOPIC)]
    if not isinstance(items, list) or not 0 < len(items) <= FORWARD_SLOTS:
        return [RejectedRecord(contract.REASON_SCHEMA, "not a bundle of forwarded readings", UNKNOWN_TOPIC)]
    out: list[Forwarded | RejectedRecord] = []
    for item in items:
        if (
            type(item) is list
            and len(item) == 3
            and type(item[0]) is int
            and type(item[1]) is int
            and item[0] >= 0
            and item[1] >= 0
            and _normalised(item[2])
        ):
            out.append((item[2], (item[0], item[1])))
        else:
            out.append(RejectedRecord(contract.REASON_SCHEMA, "not a forwarded reading", UNKNOWN_TOPIC))
    return out


def _normalised(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and (obj.keys() == _FORWARD_KEYS or obj.keys() == _FORWARD_KEYS_TS)
        and all(type(obj[m]) is float or obj[m] is None for m in contract.METRICS)
    )


dlq_record = contract.dlq_record


def reading_id_of(reading: Mapping[str, Any]) -> str:
    """A decoded reading's id, `{device}:{boot}:{seq}` (contract.reading_id)."""
    return contract.reading_id(reading["device"], reading["boot"], reading["seq"])


def late_record(
    scope: str, reading: Mapping[str, Any], windows: list[WindowKey], source: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    payload = {k: v for k, v in reading.items() if k != "received_at"}
    missed = ",".join(f"{w.kind}:{w.size_ms // 1000}s@{w.start}" for w in windows)
    return dlq_record(
        contract.REASON_LATE,
        f"{scope} window(s) final and the reading is further behind the watermark than the allowed"
        f" lateness, not counted: {missed}",
        contract.reading_topic(reading["place"], reading["device"]),
        contract.encode(payload),
        reading["received_at"],
        source,
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
