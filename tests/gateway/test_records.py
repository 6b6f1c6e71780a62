"""Routing one MQTT message to its Kafka record: readings keyed by device, rejects to the DLQ."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from gateway.records import route
from iot import contract
from iot.harness import payloads

pytestmark = pytest.mark.unit

RECEIVED = 1_764_370_000_123


def reading(**over: Any) -> dict[str, Any]:
    fixed = {"humidity": 40, "pressure": 1013.2, "luminosity": None, "fw": "1.0.0"}
    return {**payloads.reading("lab", "dev-1", 42, 1_764_369_999_000, boot=3, **fixed), **over}


def payload(obj: Any) -> bytes:
    return json.dumps(obj).encode()


TOPIC = "sensors/lab/dev-1/reading"


def test_valid_reading_goes_to_readings_keyed_by_device_with_received_at() -> None:
    out = route(TOPIC, payload(reading()), RECEIVED)
    assert out.topic == contract.TOPIC_READINGS
    assert out.key == b"dev-1"
    assert out.reason is None
    value = json.loads(out.value)
    assert value["received_at"] == RECEIVED
    assert value["ts"] == 1_764_369_999_000
    assert (value["device"], value["boot"], value["seq"]) == ("dev-1", 3, 42)
    assert value["humidity"] == 40.0


def test_clock_ten_years_ahead_is_restamped_with_receive_time_and_keeps_its_claim() -> None:
    ahead = RECEIVED + 10 * 365 * 86_400_000
    out = route(TOPIC, payload(reading(ts=ahead)), RECEIVED)
    value = json.loads(out.value)
    assert out.reason is None and out.restamped
    assert (value["ts"], value["time_valid"], value["device_ts"]) == (RECEIVED, False, ahead)


def test_clock_ahead_bound_is_inclusive_and_configurable() -> None:
    at_bound = json.loads(route(TOPIC, payload(reading(ts=RECEIVED + 300_000)), RECEIVED).value)
    assert at_bound["ts"] == RECEIVED + 300_000 and at_bound["time_valid"] and "device_ts" not in at_bound
    out = route(TOPIC, payload(reading(ts=RECEIVED + 300_001)), RECEIVED)
    assert out.restamped and json.loads(out.value)["device_ts"] == RECEIVED + 300_001
    assert not route(TOPIC, payload(reading(ts=RECEIVED + 300_001)), RECEIVED, 600_000).restamped


def test_clock_behind_is_left_alone_and_a_board_without_time_is_not_counted_as_ahead() -> None:
    behind = route(TOPIC, payload(reading(ts=RECEIVED - 7 * 86_400_000)), RECEIVED)
    assert not behind.restamped and json.loads(behind.value)["ts"] == RECEIVED - 7 * 86_400_000
    unsynced = route(TOPIC, payload(reading(time_valid=False, ts=RECEIVED + 10**12)), RECEIVED)
    assert not unsynced.restamped and "device_ts" not in json.loads(unsynced.value)


def test_reading_without_valid_time_gets_receive_time_as_ts() -> None:
    value = json.loads(route(TOPIC, payload(reading(time_valid=False, ts=5)), RECEIVED).value)
    assert value["ts"] == RECEIVED
    assert value["time_valid"] is False


def test_dlq_record_has_reason_detail_topic_payload_and_receive_time() -> None:
    raw = b'{"v": 1,'
    out = route(TOPIC, raw, RECEIVED)
    assert out.topic == contract.TOPIC_DLQ
    assert out.key == TOPIC.encode()
    record = json.loads(out.value)
    assert set(record) == {"reason", "detail", "topic", "payload_b64", "received_at"}
    assert record["reason"] == contract.REASON_MALFORMED_JSON
    assert record["detail"]
    assert record["topic"] == TOPIC
    assert base64.b64decode(record["payload_b64"]) == raw
    assert record["received_at"] == RECEIVED


BAD_CASES = [
    ("malformed_json", TOPIC, b"{not json"),
    ("malformed_json", TOPIC, b"\xff\xfe"),
    ("not_object", TOPIC, b"[1, 2, 3]"),
    ("schema", TOPIC, payload({k: v for k, v in reading().items() if k != "seq"})),
    ("schema", TOPIC, payload(reading(seq="42"))),
    ("schema", TOPIC, payload(reading(time_valid=1))),
    ("not_finite", TOPIC, payload(reading()).replace(b"21.5", b"NaN")),
    ("not_finite", TOPIC, payload(reading()).replace(b"21.5", b"Infinity")),
    ("out_of_range", TOPIC, payload(reading(temperature=120.0))),
    ("out_of_range", TOPIC, payload(reading(seq=-1))),
    ("topic_mismatch", "sensors/lab/dev-2/reading", payload(reading())),
    ("too_large", TOPIC, payload(reading(fw="x" * 2000))),
    ("bad_id", "sensors/lab/dev.1/reading", payload(reading())),
    ("bad_id", TOPIC.replace("lab", "l a b"), payload(reading())),
    ("unknown_version", TOPIC, payload(reading(v=2))),
    ("bad_topic", "sensors/lab/reading", payload(reading())),
]


@pytest.mark.parametrize(("reason", "topic", "raw"), BAD_CASES)
def test_bad_message_becomes_dlq_record_with_its_reason(reason: str, topic: str, raw: bytes) -> None:
    out = route(topic, raw, RECEIVED)
    assert (out.topic, out.reason) == (contract.TOPIC_DLQ, reason)
    assert json.loads(out.value)["reason"] == reason


def test_huge_payload_is_kept_in_part_and_says_so() -> None:
    raw = b"x" * (contract.DLQ_PAYLOAD_CAP * 4)
    record = json.loads(route(TOPIC, raw, RECEIVED).value)
    assert record["reason"] == contract.REASON_TOO_LARGE
    assert base64.b64decode(record["payload_b64"]) == raw[: contract.DLQ_PAYLOAD_CAP]
    assert f"first {contract.DLQ_PAYLOAD_CAP} of {len(raw)} bytes" in record["detail"]


def test_null_payload_goes_to_dlq_not_a_crash() -> None:
    assert route(TOPIC, b"", RECEIVED).reason == contract.REASON_MALFORMED_JSON
    assert route(TOPIC, b"null", RECEIVED).reason == contract.REASON_NOT_OBJECT
