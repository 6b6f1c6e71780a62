"""The wire and command contract: the single source of it in code.

Every part of the product imports its names from here: MQTT topics, payload v1 (fields, ranges, limits,
DLQ reason codes), Kafka topics, MongoDB collection names and document ids, environment variables and
their defaults. The code that validates and encodes the payloads (payload v1, the Kafka JSON encoding,
acks, DLQ records) is iot/codec.py, imported through this module with the rest. The prose version is
docs/CONTRACT.md; both follow ../shared/CONTRACT.md. A change here is a versioned, deliberate change
(bump PAYLOAD_VERSION or CONTRACT_REVISION), never a side effect.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeGuard

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

# A DLQ record keeps at most this much of the rejected payload (a reading is <= 1 KiB; anything
# bigger is junk whose head is enough to diagnose it).
DLQ_PAYLOAD_CAP: Final = 64 * 1024

# The types FIELDS gives the fields (docs/CONTRACT.md's payload table), as iot/codec.py checks them.
KIND_INT: Final = "int"
KIND_STR: Final = "str"
KIND_BOOL: Final = "bool"
KIND_NUMBER_OR_NULL: Final = "number|null"
FIELDS: Final[Mapping[str, str]] = {
    "v": KIND_INT,
    "device": KIND_STR,
    "place": KIND_STR,
    "boot": KIND_INT,
    "seq": KIND_INT,
    "ts": KIND_INT,
    "time_valid": KIND_BOOL,
    "temperature": KIND_NUMBER_OR_NULL,
    "humidity": KIND_NUMBER_OR_NULL,
    "pressure": KIND_NUMBER_OR_NULL,
    "luminosity": KIND_NUMBER_OR_NULL,
    "fw": KIND_STR,
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


def is_id(value: object) -> TypeGuard[str]:
    """True when `value` is a device or place id: a str of 1..64 of A-Z a-z 0-9 _ -, as a whole."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def reading_id(device: str, boot: int, seq: int) -> str:
    """MongoDB `_id` of a reading, and the identity used for de-duplication."""
    return f"{device}:{boot}:{seq}"


def window_id(key: str, kind: str, size_s: int, start_ms: int) -> str:
    """Deterministic `_id` of a window document; key is the device (sensor) or place id."""
    return f"{key}:{kind}:{size_s}:{start_ms}"


# The codec (iot/codec.py) reads the names above, so it is imported after them, and re-exported (`as`)
# so that every part imports the whole contract from this one module. iot/__init__.py imports this
# module first, so that importing iot.codec on its own finds every name here defined.
# ruff: noqa: E402
from iot.codec import decode_ack as decode_ack
from iot.codec import dlq_record as dlq_record
from iot.codec import encode as encode
from iot.codec import encode_acks as encode_acks
from iot.codec import is_text as is_text
from iot.codec import kafka_source as kafka_source
from iot.codec import parse_reading_topic as parse_reading_topic
from iot.codec import seq_ranges as seq_ranges
from iot.codec import validate_reading as validate_reading
from iot.codec import validate_reading_object as validate_reading_object
