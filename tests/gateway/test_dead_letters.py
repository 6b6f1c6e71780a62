"""Bad input through a real gateway: each rejection reaches `iot.readings.dlq` with its stable reason,
and the gateway keeps bridging good readings after it."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from iot import contract
from tests.gateway.conftest import GatewayFactory, KafkaReader, Publisher, make_reading
from tests.support import unique, wait_for

pytestmark = pytest.mark.integration


@dataclass
class Rejection:
    """One gateway, one device of its own, and a check that a message becomes exactly one DLQ record."""

    gateways: GatewayFactory
    publisher: Publisher
    kafka_readers: Callable[..., KafkaReader]
    device: str

    @property
    def place(self) -> str:
        return self.gateways.place

    @property
    def topic(self) -> str:
        return contract.reading_topic(self.place, self.device)

    def reading(self, **over: Any) -> bytes:
        return json.dumps(make_reading(self.place, self.device, 0, **over)).encode()

    def expect(self, raw: bytes, reason: str, topic: str | None = None) -> dict[str, Any]:
        topic = topic or self.topic
        gateway = self.gateways()
        reader = self.kafka_readers(contract.TOPIC_DLQ, f"^{re.escape(topic)}$")
        self.publisher.publish_raw(topic, raw)
        [record] = reader.wait_until(lambda rs: len(rs) >= 1, 30, f"a DLQ record for {topic}")
        letter = record.value
        assert set(letter) == {"reason", "detail", "topic", "payload_b64", "received_at"}
        assert letter["reason"] == reason, letter["detail"]
        assert letter["detail"]
        assert letter["topic"] == topic
        assert base64.b64decode(letter["payload_b64"]) == raw
        assert isinstance(letter["received_at"], int)
        label = f'iot_gateway_rejected_total{{reason="{reason}"}}'
        wait_for(lambda: gateway.metric(label) == 1.0, 10, f"{label} == 1")
        wait_for(lambda: gateway.metric("iot_gateway_acked_total") == 1.0, 10, "the rejected message acked")
        return dict(letter)


@pytest.fixture
def rejection(
    gateways: GatewayFactory, publisher: Publisher, kafka_readers: Callable[..., KafkaReader]
) -> Rejection:
    return Rejection(gateways, publisher, kafka_readers, unique("dev"))


def test_malformed_json_goes_to_dlq_as_malformed_json(rejection: Rejection) -> None:
    rejection.expect(b'{"v": 1, "seq": ', "malformed_json")


def test_empty_payload_goes_to_dlq_as_malformed_json(rejection: Rejection) -> None:
    rejection.expect(b"", "malformed_json")


def test_json_array_goes_to_dlq_as_not_object(rejection: Rejection) -> None:
    rejection.expect(b"[21.5, 45]", "not_object")


def test_missing_field_goes_to_dlq_as_schema(rejection: Rejection) -> None:
    reading = make_reading(rejection.place, rejection.device, 0)
    del reading["boot"]
    assert "boot" in rejection.expect(json.dumps(reading).encode(), "schema")["detail"]


def test_wrong_type_goes_to_dlq_as_schema(rejection: Rejection) -> None:
    assert "temperature" in rejection.expect(rejection.reading(temperature="21.5"), "schema")["detail"]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_number_goes_to_dlq_as_not_finite(rejection: Rejection, literal: bytes) -> None:
    rejection.expect(rejection.reading(humidity=12.25).replace(b"12.25", literal), "not_finite")


def test_value_out_of_sensor_range_goes_to_dlq_as_out_of_range(rejection: Rejection) -> None:
    assert "pressure" in rejection.expect(rejection.reading(pressure=1500.0), "out_of_range")["detail"]


def test_payload_device_differing_from_topic_goes_to_dlq_as_topic_mismatch(rejection: Rejection) -> None:
    other = json.dumps(make_reading(rejection.place, unique("other"), 0)).encode()
    rejection.expect(other, "topic_mismatch")


@pytest.mark.parametrize("size", [1025, 60_000])
def test_oversize_payload_goes_to_dlq_as_too_large(rejection: Rejection, size: int) -> None:
    base = rejection.reading()
    raw = base[:-1] + b', "pad": "' + b"x" * (size - len(base) - 11) + b'"}'
    assert len(raw) == size
    rejection.expect(raw, "too_large")


def test_device_id_outside_the_charset_goes_to_dlq_as_bad_id(rejection: Rejection) -> None:
    rejection.device += ".v2"
    rejection.expect(rejection.reading(), "bad_id")


def test_unknown_payload_version_goes_to_dlq_as_unknown_version(rejection: Rejection) -> None:
    rejection.expect(rejection.reading(v=2), "unknown_version")


def test_bad_input_neither_stops_nor_delays_good_readings(
    gateways: GatewayFactory, publisher: Publisher, kafka_readers: Callable[..., KafkaReader]
) -> None:
    device = unique("dev")
    topic = contract.reading_topic(gateways.place, device)
    readings = kafka_readers(contract.TOPIC_READINGS, f"^{device}$")
    letters = kafka_readers(contract.TOPIC_DLQ, f"^{re.escape(topic)}$")
    gateway = gateways()
    garbage = [b"", b"null", b"\xff" * 2000, b"{" * 1000, b'{"v": 1}', b"[]" * 400]
    for seq in range(50):
        publisher.publish_raw(topic, garbage[seq % len(garbage)])
        publisher.publish_readings([make_reading(gateways.place, device, seq)])
    readings.wait_until(lambda rs: len(rs) == 50, 30, "all 50 good readings")
    letters.wait_until(lambda rs: len(rs) == 50, 30, "all 50 dead letters")
    assert gateway.proc is not None and gateway.proc.poll() is None
    assert [r.value["seq"] for r in readings.records] == list(range(50))
