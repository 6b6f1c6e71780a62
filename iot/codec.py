"""The contract's payloads in code: payload v1 validation, the one JSON encoding used on Kafka, the
end-to-end ack payloads and the DLQ record.

The names, limits and reason codes these follow are iot/contract.py's, and every part imports these
functions from there too (`contract.validate_reading`, `contract.encode`, ...): this module holds the
code, the contract module the contract. The gateway and the backend call these once or more per
reading: why-comments carry what each shortcut saved.
"""

from __future__ import annotations

import base64
import functools
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

from iot.contract import (
    ACK_MAX_RANGES,
    DLQ_PAYLOAD_CAP,
    FIELDS,
    FW_MAX_LEN,
    ID_PATTERN,
    INT64_LIMIT,
    KIND_BOOL,
    KIND_INT,
    KIND_NUMBER_OR_NULL,
    KIND_STR,
    MAX_PAYLOAD_BYTES,
    METRIC_RANGES,
    METRICS,
    PAYLOAD_VERSION,
    REASON_BAD_ID,
    REASON_BAD_TOPIC,
    REASON_MALFORMED_JSON,
    REASON_NOT_FINITE,
    REASON_NOT_OBJECT,
    REASON_OUT_OF_RANGE,
    REASON_SCHEMA,
    REASON_TOO_LARGE,
    REASON_TOPIC_MISMATCH,
    REASON_UNKNOWN_VERSION,
    TS_MAX_MS,
    TS_MIN_MS,
    InvalidReading,
    TopicIds,
    is_id,
)


def seq_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Inclusive [first, last] runs of the distinct seqs, ascending."""
    ranges: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if ranges and seq == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges


def encode_acks(boot: int, seqs: Iterable[int]) -> list[bytes]:
    """The ack payloads `{"boot": B, "ranges": [[first, last], ...]}` covering `seqs` of boot B, at
    most ACK_MAX_RANGES ranges each (normally exactly one message). Formatted, not JSON-encoded:
    the same bytes for ints, in a third of the time (the gateway sends about one ack a reading)."""
    ranges = seq_ranges(seqs)
    if len(ranges) == 1:  # the usual case (a board has one or a few readings per gateway flush)
        first, last = ranges[0]
        return [f'{{"boot":{boot:d},"ranges":[[{first:d},{last:d}]]}}'.encode("ascii")]
    return [_ack_payload(boot, ranges[i : i + ACK_MAX_RANGES]) for i in range(0, len(ranges), ACK_MAX_RANGES)]


def _ack_payload(boot: int, ranges: list[tuple[int, int]]) -> bytes:
    inner = ",".join([f"[{first:d},{last:d}]" for first, last in ranges])
    return f'{{"boot":{boot:d},"ranges":[{inner}]}}'.encode("ascii")


def decode_ack(payload: bytes) -> tuple[int, list[tuple[int, int]]]:
    """(boot, ranges) of an ack payload; raises ValueError when it is not one."""
    obj = _DECODER.decode(payload.decode("utf-8"))
    ok = isinstance(obj, dict) and _type_ok(KIND_INT, obj.get("boot")) and isinstance(obj.get("ranges"), list)
    if not ok:
        raise ValueError('an ack is {"boot": int, "ranges": [[first, last], ...]}')
    ranges: list[tuple[int, int]] = []
    for item in obj["ranges"]:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(_type_ok(KIND_INT, x) for x in item)
            or not 0 <= item[0] <= item[1]
        ):
            raise ValueError(f"ack range {item!r} is not [first, last] with 0 <= first <= last")
        ranges.append((item[0], item[1]))
    return int(obj["boot"]), ranges


@functools.lru_cache(maxsize=16_384)
def parse_reading_topic(topic: str) -> TopicIds:
    """The (place, device) of a reading topic. Cached: a fleet's topics repeat, one per board, and
    the split and the two id checks were ~1.5 us of each reading the backend validates (an invalid
    topic raises, and is not cached)."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "sensors" or parts[3] != "reading":
        raise InvalidReading(REASON_BAD_TOPIC, f"topic {topic!r} is not sensors/{{place}}/{{device}}/reading")
    place, device = parts[1], parts[2]
    for name, value in (("place", place), ("device", device)):
        if not is_id(value):
            raise InvalidReading(REASON_BAD_ID, f"topic {name} {value!r} must match {ID_PATTERN.pattern}")
    return TopicIds(place=place, device=device)


def _reject_constant(name: str) -> float:
    # json accepts NaN/Infinity literals by default; payload v1 forbids them.
    raise InvalidReading(REASON_NOT_FINITE, f"{name} is not a finite number")


# Built once: json.loads/json.dumps with options build a new decoder/encoder per call, a measurable
# share of the gateway's per-message CPU.
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _type_ok(kind: str, value: Any) -> bool:
    if kind == KIND_INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == KIND_STR:
        return isinstance(value, str)
    if kind == KIND_BOOL:
        return isinstance(value, bool)
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def is_text(value: str) -> bool:
    """True when `value` encodes as UTF-8. JSON's `\\ud800` escape decodes to a lone surrogate: valid
    JSON, but no text, and the backend (orjson, BSON) cannot encode it."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_reading(topic: str, payload: bytes) -> dict[str, Any]:
    """Validate one MQTT message against payload v1 and return the normalised reading.

    Metrics come back as float or None; unknown fields are dropped. Raises InvalidReading.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidReading(REASON_TOO_LARGE, f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    ids = parse_reading_topic(topic)
    try:
        text = payload.decode("utf-8")
        obj = _DECODER.decode(text)
    except InvalidReading:
        raise
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidReading(REASON_MALFORMED_JSON, str(exc)[:200]) from None
    except RecursionError:
        # json's parser recurses per nesting level: 1,000 `[` fit in a payload and exceed the stack.
        raise InvalidReading(REASON_MALFORMED_JSON, "JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise InvalidReading(REASON_NOT_OBJECT, f"payload is a JSON {type(obj).__name__}, not an object")
    return _validate_fields(ids, obj)


def validate_reading_object(topic: str, obj: Mapping[str, Any], size: int) -> dict[str, Any]:
    """`validate_reading` for a payload already parsed into an object whose encoding is `size` bytes
    (the backend parses each Kafka record once and validates the object it got)."""
    if size > MAX_PAYLOAD_BYTES:
        raise InvalidReading(REASON_TOO_LARGE, f"{size} bytes > {MAX_PAYLOAD_BYTES}")
    return _validate_fields(parse_reading_topic(topic), obj)


# (name, low, high) of each metric, in FIELDS' order: the fast path's range checks.
_METRIC_BOUNDS: Final = tuple((m, *METRIC_RANGES[m]) for m in METRICS)


def _valid_fields_fast(ids: TopicIds, obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """`_validate_fields`' result for a reading every check passes at first sight (exact types, ASCII
    strings, metrics in range): the common case, in about a third of the time; None when anything is
    less plain, and the full checks then decide (and name what is wrong). Only accepts what they
    accept: each condition here is one of theirs or stricter (a metric that is NaN or infinite fails
    its range comparison, an int subclass its `type` test)."""
    try:
        v, device, place = obj["v"], obj["device"], obj["place"]
        boot, seq, ts, time_valid, fw = obj["boot"], obj["seq"], obj["ts"], obj["time_valid"], obj["fw"]
    except KeyError:
        return None
    if not (
        type(v) is int
        and v == PAYLOAD_VERSION
        and type(device) is str
        and type(place) is str
        and device == ids.device  # the topic's ids passed is_id
        and place == ids.place
        and type(boot) is int
        and type(seq) is int
        and type(ts) is int
        and 0 <= boot < INT64_LIMIT
        and 0 <= seq < INT64_LIMIT
        and -INT64_LIMIT <= ts < INT64_LIMIT
        and type(time_valid) is bool
        and (not time_valid or TS_MIN_MS <= ts < TS_MAX_MS)
        and type(fw) is str
        and 0 < len(fw) <= FW_MAX_LEN
        and fw.isascii()
    ):
        return None
    out: dict[str, Any] = {
        "v": v,
        "device": device,
        "place": place,
        "boot": boot,
        "seq": seq,
        "ts": ts,
        "time_valid": time_valid,
    }
    for name, low, high in _METRIC_BOUNDS:
        value = obj.get(name, obj)  # obj itself: absent
        if value is None:
            out[name] = None
        elif (type(value) is float or type(value) is int) and low <= value <= high:
            out[name] = float(value)
        else:
            return None
    out["fw"] = fw
    return out


def _validate_fields(ids: TopicIds, obj: Mapping[str, Any]) -> dict[str, Any]:
    fast = _valid_fields_fast(ids, obj)
    return fast if fast is not None else _validate_fields_fully(ids, obj)


def _validate_fields_fully(ids: TopicIds, obj: Mapping[str, Any]) -> dict[str, Any]:
    if "v" in obj and _type_ok(KIND_INT, obj["v"]) and obj["v"] != PAYLOAD_VERSION:
        raise InvalidReading(REASON_UNKNOWN_VERSION, f"v={obj['v']}, this gateway speaks v{PAYLOAD_VERSION}")
    out: dict[str, Any] = {}
    for field, kind in FIELDS.items():
        if field not in obj:
            raise InvalidReading(REASON_SCHEMA, f"missing field {field!r}")
        value = obj[field]
        if not _type_ok(kind, value):
            raise InvalidReading(REASON_SCHEMA, f"field {field!r} must be {kind}, got {type(value).__name__}")
        if kind == KIND_STR and not is_text(value):
            raise InvalidReading(REASON_SCHEMA, f"field {field!r} is not text (an unpaired surrogate escape)")
        if kind == KIND_NUMBER_OR_NULL and value is not None:
            value = float(value)
            if not math.isfinite(value):
                raise InvalidReading(REASON_NOT_FINITE, f"{field} is not a finite number")
            low, high = METRIC_RANGES[field]
            if not low <= value <= high:
                raise InvalidReading(REASON_OUT_OF_RANGE, f"{field}={value} outside {low}..{high}")
        out[field] = value
    for field in ("device", "place"):
        if not is_id(out[field]):
            raise InvalidReading(REASON_BAD_ID, f"{field} {out[field]!r} must match {ID_PATTERN.pattern}")
    if out["device"] != ids.device or out["place"] != ids.place:
        raise InvalidReading(
            REASON_TOPIC_MISMATCH,
            f"payload {out['place']}/{out['device']} != topic {ids.place}/{ids.device}",
        )
    for field in ("boot", "seq", "ts"):
        # MongoDB stores integers as int64: a bigger one would make the backend's write fail on it.
        if not -INT64_LIMIT <= out[field] < INT64_LIMIT:
            raise InvalidReading(REASON_OUT_OF_RANGE, f"{field}={out[field]} does not fit 64 bits")
    for field in ("boot", "seq"):
        if out[field] < 0:
            raise InvalidReading(REASON_OUT_OF_RANGE, f"{field}={out[field]} must be >= 0")
    if out["time_valid"] and not TS_MIN_MS <= out["ts"] < TS_MAX_MS:
        raise InvalidReading(REASON_OUT_OF_RANGE, f"ts={out['ts']} is not a plausible epoch ms")
    if not 0 < len(out["fw"]) <= FW_MAX_LEN:
        raise InvalidReading(REASON_OUT_OF_RANGE, f"fw must be 1..{FW_MAX_LEN} characters")
    return out


def dlq_record(
    reason: str,
    detail: str,
    topic: str,
    payload: bytes,
    received_at_ms: int,
    source: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `iot.readings.dlq` value for a rejected message (keyed by its MQTT `topic`), as the gateway
    and the backend both write it; produce it with `encode`. The backend adds `source`, the Kafka
    record it rejected (`kafka_source`)."""
    kept = payload[:DLQ_PAYLOAD_CAP]
    if len(kept) < len(payload):
        detail = f"{detail} (payload_b64 holds the first {len(kept)} of {len(payload)} bytes)"
    return {
        "reason": reason,
        "detail": detail,
        "topic": topic,
        "payload_b64": base64.b64encode(kept).decode("ascii"),
        "received_at": received_at_ms,
        **({"source": dict(source)} if source is not None else {}),
    }


def kafka_source(topic: str, partition: int, offset: int, key: bytes | None) -> dict[str, Any]:
    """Where a Kafka record came from, as a DLQ record's `source`: topic, partition, offset and key
    (base64: a key is bytes, not necessarily text)."""
    return {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key_b64": None if key is None else base64.b64encode(key).decode("ascii"),
    }


def encode(obj: Mapping[str, Any]) -> bytes:
    """The one JSON encoding used on Kafka: compact, UTF-8, no NaN."""
    return _ENCODER.encode(obj).encode("utf-8")
