"""The wire and command contract: the single source of it in code.

Every part of the product imports its names from here: MQTT topics, payload v1 and its validation,
Kafka topics, MongoDB collection names and document ids, environment variables and their defaults.
The prose version is docs/CONTRACT.md; both follow ../shared/CONTRACT.md. A change here is a
versioned, deliberate change (bump PAYLOAD_VERSION or CONTRACT_REVISION), never a side effect.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

from iot.errors import IotError

# Revision 2 added the health topic (retained board telemetry); nothing existing changed.
# Revision 3: window amendments within an allowed lateness (`revision`, `late_count`), and the clock
# guard (a `ts` too far ahead is re-stamped by the gateway, the board's claim kept in `device_ts`).
# Revision 4: the `readings` collection stores buckets (a document per aligned run of a device's
# seqs, iot/readings_store.py owns the shape); `iot readings migrate` rewrites revision 3 documents.
CONTRACT_REVISION: Final = 4
PAYLOAD_VERSION: Final = 1
MAX_PAYLOAD_BYTES: Final = 1024

# --- MQTT -------------------------------------------------------------------------------------
# Match an id with `is_id` (fullmatch): `$` also matches before a trailing newline, so
# `ID_PATTERN.match("node-1\n")` succeeds, and such an id became a device of its own.
ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
READING_TOPIC: Final = "sensors/{place}/{device}/reading"
STATUS_TOPIC: Final = "sensors/{place}/{device}/status"
HEALTH_TOPIC: Final = "sensors/{place}/{device}/health"
READING_SUBSCRIPTION: Final = "sensors/+/+/reading"
STATUS_SUBSCRIPTION: Final = "sensors/+/+/status"
HEALTH_SUBSCRIPTION: Final = "sensors/+/+/health"
# Fields of the retained health message a board publishes (QoS 0), all optional to readers. The
# message also carries `device` and `place` (equal to the topic's). Revision 2 defined the first
# eleven; the rest are a project addition beside revision 3 (firmware crash handling, the flash
# outbox, bounded incoming packets, clone BME280 parts, safe mode), additive like the ack: readers
# that do not know a field ignore it. Types: docs/CONTRACT.md, "Health".
HEALTH_FIELDS: Final = (
    "boot",
    "fw",
    "uptime_s",
    "rssi",
    "mem_free",
    "outbox_depth",
    "outbox_dropped",
    "sensor_errors",
    "reconnects",
    "time_valid",
    "skipped_cycles",
    "outbox_flash",
    "outbox_torn",
    "oversized_in",
    "sensor_warnings",
    "reset_cause",
    "last_crash",
    "crashes",
    "safe_mode",
    "idf_largest",
    # Remote configuration and over-the-air updates (issue 22; firmware/remote_config.py, ota.py).
    "config_rev",
    "config_trial",
    "config_error",
    "update_state",
    "update_version",
    "update_id",
    "update_have",
    "update_size",
    "update_error",
    "update_bad_chunks",
)
# End-to-end delivery acknowledgement (a project addition beside revision 3, like health was): the
# gateway tells a board which of its readings Kafka holds, so the board's outbox releases only those.
ACK_TOPIC: Final = "sensors/{place}/{device}/ack"
ACK_SUBSCRIPTION: Final = "sensors/+/+/ack"
ACK_QOS: Final = 0
# Ranges per ack message: a board parses it on a ~110 KB heap; more ranges go in further messages.
ACK_MAX_RANGES: Final = 64
# Remote configuration and over-the-air updates (project addition beside revision 3, issue 22): one
# topic tree per board that only the operator account writes and only that board reads (the ACL in
# iot/broker/accounts.py). `config` carries the board's configuration (retained, QoS 1); `ota` and
# everything under `ota/` carries updates. Boards report what they applied in health (`config_rev`,
# `update_state`, below). Payloads: docs/CONTRACT.md, "Accounts, ACL and provisioning".
CONFIG_TOPIC: Final = "sensors/{place}/{device}/config"
OTA_TOPIC: Final = "sensors/{place}/{device}/ota"
# An update travels as a retained offer on OTA_TOPIC and a bundle in chunks on OTA_CHUNK_TOPIC; the
# board says how far it got (`update_have`) in health every OTA_WINDOW_BYTES, and the sender resumes
# from there (docs/CONTRACT.md, "Over-the-air updates"; firmware/ota.py keeps the same numbers).
OTA_CHUNK_TOPIC: Final = "sensors/{place}/{device}/ota/chunk"
OTA_BUNDLE_MAGIC: Final = b"IOT\x01"
OTA_BUNDLE_HEAD: Final = 8  # magic, manifest length, signature length (uint16 big-endian each)
OTA_CHUNK_HEAD: Final = 16  # bundle id (8 bytes), offset, CRC-32 of the data (uint32 big-endian each)
OTA_CHUNK_BYTES: Final = 1024  # data per chunk: a chunk and its topic fit the board's 1,800-byte packets
OTA_WINDOW_BYTES: Final = 8192
OTA_MAX_BUNDLE: Final = 1_048_576
OTA_MAX_HEADER: Final = 8192
OTA_KEY_FILE: Final = "ota.pub"  # on the board: the RSA public modulus, big-endian; exponent 65537
# What `update_state` says: the transfer (receiving, verifying), the outcome of the header or the
# files' check (refused), the new version on trial, committed (updated) or undone (rolled_back).
UPDATE_STATES: Final = ("idle", "receiving", "verifying", "refused", "trial", "updated", "rolled_back")
UPDATE_DONE: Final = ("refused", "updated", "rolled_back")
STATUS_ONLINE: Final = "online"
STATUS_OFFLINE: Final = "offline"
# Retained by a board that crashed SAFE_MODE_AFTER times in a row and did not start its firmware
# (project addition beside revision 3): it is not measuring, its REPL is free for a re-flash.
STATUS_SAFE_MODE: Final = "safe_mode"
READING_QOS: Final = 1

# --- Kafka ------------------------------------------------------------------------------------
TOPIC_READINGS: Final = "iot.readings"
TOPIC_DLQ: Final = "iot.readings.dlq"
TOPIC_WINDOWS_SENSOR: Final = "iot.windows.sensor"
TOPIC_WINDOWS_PLACE: Final = "iot.windows.place"

# --- MongoDB ----------------------------------------------------------------------------------
DEFAULT_DATABASE: Final = "iot"
COLL_READINGS: Final = "readings"
COLL_SENSOR_WINDOWS: Final = "sensor_windows"
COLL_PLACE_WINDOWS: Final = "place_windows"
# The device registry: one document per provisioned board, `_id` = device id (`iot devices`; the
# gateway keeps it current from status and health). Fields: docs/CONTRACT.md, "Device registry".
COLL_DEVICES: Final = "devices"
# The remote configuration the operator wants per board (`iot config set`), apart from `devices` so
# that each document has one writer (docs/CONTRACT.md, "Device registry").
COLL_DEVICE_CONFIGS: Final = "device_configs"
# Health fields the registry keeps besides `fw`: the applied configuration revision and the state of
# an over-the-air update, as boards with remote configuration and OTA report them.
HEALTH_CONFIG_REV: Final = "config_rev"
HEALTH_UPDATE_STATE: Final = "update_state"

# --- Environment ------------------------------------------------------------------------------
ENV_DEFAULTS: Final[Mapping[str, str]] = {
    "IOT_MQTT_URL": "mqtt://127.0.0.1:1883",
    "IOT_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
    "IOT_MONGO_URI": "mongodb://127.0.0.1:27017/iot",
    "IOT_WINDOW_TUMBLING_S": "60",
    "IOT_WINDOW_HOPPING_S": "300",
    "IOT_WINDOW_HOP_STEP_S": "60",
    "IOT_WINDOW_GRACE_S": "10",
    "IOT_WINDOW_ALLOWED_LATENESS_S": "86400",
    "IOT_MAX_CLOCK_AHEAD_S": "300",
}

# Default Prometheus endpoints of the two services (deployment defaults, not wire contract); the
# native stack's Prometheus, the compose file, the demo and the tests take them from here.
GATEWAY_METRICS_PORT: Final = 9108
BACKEND_METRICS_PORT: Final = 9109

# --- Payload v1 -------------------------------------------------------------------------------
METRICS: Final = ("temperature", "humidity", "pressure", "luminosity")
# Inclusive physical ranges of the sensors (BME280 / BH1750 datasheets).
METRIC_RANGES: Final[Mapping[str, tuple[float, float]]] = {
    "temperature": (-40.0, 85.0),
    "humidity": (0.0, 100.0),
    "pressure": (300.0, 1100.0),
    "luminosity": (0.0, 150000.0),
}
# Epoch ms bounds for ts: anything outside is a broken clock, not a measurement.
TS_MIN_MS: Final = 0
TS_MAX_MS: Final = 4_102_444_800_000  # 2100-01-01
FW_MAX_LEN: Final = 64
INT64_LIMIT: Final = 2**63

# Stable DLQ reason codes; tests and dashboards key on them.
REASON_MALFORMED_JSON: Final = "malformed_json"
REASON_NOT_OBJECT: Final = "not_object"
REASON_SCHEMA: Final = "schema"  # missing field or wrong type
REASON_NOT_FINITE: Final = "not_finite"
REASON_OUT_OF_RANGE: Final = "out_of_range"
REASON_TOPIC_MISMATCH: Final = "topic_mismatch"
REASON_BAD_TOPIC: Final = "bad_topic"
REASON_TOO_LARGE: Final = "too_large"
REASON_BAD_ID: Final = "bad_id"
REASON_UNKNOWN_VERSION: Final = "unknown_version"
REASON_LATE: Final = "late"
REASON_UNPROCESSABLE: Final = "unprocessable"  # the service's own code failed on it: a bug to report
# Backend: the same (device, boot, seq) again with other values; the first reading is the one kept.
REASON_CONFLICTING_DUPLICATE: Final = "conflicting_duplicate"
# Backend: a stored window document that does not hold a window (the document itself is the payload);
# the window was rebuilt from the stored readings.
REASON_CORRUPT_WINDOW: Final = "corrupt_window"
# Backend: an iot.readings record whose Kafka key is not its reading's device id.
REASON_KEY_MISMATCH: Final = "key_mismatch"
DLQ_REASONS: Final = (
    REASON_MALFORMED_JSON,
    REASON_NOT_OBJECT,
    REASON_SCHEMA,
    REASON_NOT_FINITE,
    REASON_OUT_OF_RANGE,
    REASON_TOPIC_MISMATCH,
    REASON_BAD_TOPIC,
    REASON_TOO_LARGE,
    REASON_BAD_ID,
    REASON_UNKNOWN_VERSION,
    REASON_LATE,
    REASON_UNPROCESSABLE,
    REASON_CONFLICTING_DUPLICATE,
    REASON_CORRUPT_WINDOW,
    REASON_KEY_MISMATCH,
)

_INT = "int"
_STR = "str"
_BOOL = "bool"
_NUM_OR_NULL = "number|null"
FIELDS: Final[Mapping[str, str]] = {
    "v": _INT,
    "device": _STR,
    "place": _STR,
    "boot": _INT,
    "seq": _INT,
    "ts": _INT,
    "time_valid": _BOOL,
    "temperature": _NUM_OR_NULL,
    "humidity": _NUM_OR_NULL,
    "pressure": _NUM_OR_NULL,
    "luminosity": _NUM_OR_NULL,
    "fw": _STR,
}


class InvalidReading(IotError, ValueError):
    """A message that is not a valid payload v1 reading; `reason` is a stable DLQ code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class TopicIds:
    place: str
    device: str


def _board_topic(pattern: str) -> Callable[[str, str], str]:
    """The function that names one of a board's topics: `f(place, device)`."""

    def topic(place: str, device: str) -> str:
        return pattern.format(place=place, device=device)

    return topic


reading_topic = _board_topic(READING_TOPIC)
status_topic = _board_topic(STATUS_TOPIC)
health_topic = _board_topic(HEALTH_TOPIC)
ack_topic = _board_topic(ACK_TOPIC)
config_topic = _board_topic(CONFIG_TOPIC)
ota_topic = _board_topic(OTA_TOPIC)
ota_chunk_topic = _board_topic(OTA_CHUNK_TOPIC)


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
    ok = isinstance(obj, dict) and _type_ok(_INT, obj.get("boot")) and isinstance(obj.get("ranges"), list)
    if not ok:
        raise ValueError('an ack is {"boot": int, "ranges": [[first, last], ...]}')
    ranges: list[tuple[int, int]] = []
    for item in obj["ranges"]:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(_type_ok(_INT, x) for x in item)
            or not 0 <= item[0] <= item[1]
        ):
            raise ValueError(f"ack range {item!r} is not [first, last] with 0 <= first <= last")
        ranges.append((item[0], item[1]))
    return int(obj["boot"]), ranges


def is_id(value: object) -> TypeGuard[str]:
    """True when `value` is a device or place id: a str of 1..64 of A-Z a-z 0-9 _ -, as a whole."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


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
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _STR:
        return isinstance(value, str)
    if kind == _BOOL:
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
    if "v" in obj and _type_ok(_INT, obj["v"]) and obj["v"] != PAYLOAD_VERSION:
        raise InvalidReading(REASON_UNKNOWN_VERSION, f"v={obj['v']}, this gateway speaks v{PAYLOAD_VERSION}")
    out: dict[str, Any] = {}
    for field, kind in FIELDS.items():
        if field not in obj:
            raise InvalidReading(REASON_SCHEMA, f"missing field {field!r}")
        value = obj[field]
        if not _type_ok(kind, value):
            raise InvalidReading(REASON_SCHEMA, f"field {field!r} must be {kind}, got {type(value).__name__}")
        if kind == _STR and not is_text(value):
            raise InvalidReading(REASON_SCHEMA, f"field {field!r} is not text (an unpaired surrogate escape)")
        if kind == _NUM_OR_NULL and value is not None:
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


def reading_id(device: str, boot: int, seq: int) -> str:
    """MongoDB `_id` of a reading, and the identity used for de-duplication."""
    return f"{device}:{boot}:{seq}"


def window_id(key: str, kind: str, size_s: int, start_ms: int) -> str:
    """Deterministic `_id` of a window document; key is the device (sensor) or place id."""
    return f"{key}:{kind}:{size_s}:{start_ms}"


# A DLQ record keeps at most this much of the rejected payload (a reading is <= 1 KiB; anything
# bigger is junk whose head is enough to diagnose it).
DLQ_PAYLOAD_CAP: Final = 64 * 1024


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
