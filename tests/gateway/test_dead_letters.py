"""Bad input through a real gateway: each rejection reaches `iot.readings.dlq` with its stable reason,
and the gateway keeps bridging good readings after it."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from iot import contract
from tests.gateway.conftest import GatewayFactory, GatewayProcess, KafkaReader, Publisher, make_reading
from tests.support import unique, wait_for

pytestmark = pytest.mark.integration


def _reading_bytes(place: str, device: str, **over: Any) -> bytes:
    return json.dumps(make_reading(place, device, 0, **over)).encode()


def _assert_dead_letter(
    gateway: GatewayProcess,
    kafka_readers: Callable[..., KafkaReader],
    publisher: Publisher,
    topic: str,
    raw: bytes,
    reason: str,
) -> dict[str, Any]:
    reader = kafka_readers(contract.TOPIC_DLQ, f"^{re.escape(topic)}$")
    publisher.publish_raw(topic, raw)
    [record] = reader.wait_until(lambda rs: len(rs) >= 1, 30, f"a DLQ record for {topic}")
    letter = record.value
    assert set(letter) == {"reason", "detail", "topic", "payload_b64", "received_at"}
    assert letter["reason"] == reason, letter["detail"]
    assert letter["detail"]
    assert letter["topic"] == topic
    assert isinstance(letter["received_at"], int)
    label = f'iot_gateway_rejected_total{{reason="{reason}"}}'
    wait_for(lambda: gateway.metric(label) == 1.0, 10, f"{label} == 1")
    wait_for(lambda: gateway.metric("iot_gateway_acked_total") == 1.0, 10, "the rejected message acked")
    return letter


@pytest.fixture
def place_device(gateways: GatewayFactory) -> tuple[str, str, str]:
    device = unique("dev")
    return gateways.place, device, contract.reading_topic(gateways.place, device)


def test_malformed_json_goes_to_dlq_as_malformed_json(
    gateways: GatewayFactory,
    publisher: Publisher,
    kafka_readers: Callable[..., KafkaReader],
    place_device: tuple[str, str, str],
) -> None:
    _, _, topic = place_device
    letter = _assert_dead_letter(
        gateways(), kafka_readers, publisher, topic, b'{"v": 1, "seq": ', "malformed_json"
    )
    assert base64.b64decode(letter["payload_b64"]) == b'{"v": 1, "seq": '


def test_empty_payload_goes_to_dlq_as_malformed_json(
    gateways: GatewayFactory,
    publisher: Publisher,
    kafka_readers: Callable[..., KafkaReader],
    place_device: tuple[str, str, str],
) -> None:
    _, _, topic = place_device
    _assert_dead_letter(gateways(), kafka_readers, publisher, topic, b"", "malformed_json")


def test_json_array_goes_to_dlq_as_not_object(
    gateways: GatewayFactory,
    publisher: Publisher,
    kafka_readers: Callable[..., KafkaReader],
    place_device: tuple[str, str, str],
) -> None:
    _, _, topic = place_device
    _assert_dead_letter(gateways(), kafka_readers, publisher, topic, b"[21.5, 45]", "not_object")


def test_missing_field_goes_to_dlq_as_schema(
    gateways: GatewayFactory,
    publisher: Publisher,
    kafka_readers: Callable[..., KafkaReader],
    place_device: tuple[str, str, str],
) -> None:
    place, device, topic = place_device
    reading = make_reading(place, device, 0)
    del reading["boot"]
    letter = _assert_dead_letter(
        gateways(), kafka_readers, publisher, topic, json.dumps(reading).encode(), "schema"
    )
    assert "boot" in letter["detail"]


def test_wrong_type_goes_to_dlq_as_schema(
    gateways: GatewayFactory,
    publisher: Publisher,
    kafka_readers: Callable[..., KafkaReader],
    place_device: tuple[str, str, str],
) -> None:
    place, device, topic = place_device
    raw = _reading_bytes(place, device, temperature="21.5")
    letter = _assert_dead_letter(gateways(), kafka_readers, publisher, topic, raw, "schema")
    assert "temperature" in letter["detail"]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_number_goes_to_dlq_as_not_finite(
    gateways: GatewayFactory,
    publisher: Publisher,
    kafka_readers: Callable[..., KafkaReader],
    place_device: tuple[str, str, str],
    literal: bytes,
) -> None:
    place, device, topic = place_device
    raw = _reading_bytes(place, device, humidity=12.25).replace(b"12.25", literal)
    _assert_dead_letter(gateways(), kafka_readers, publisher, topic, raw, "not_finite")


def test_value_out_of_sensor_range_goes_to_dlq_as_out_of_range(
    gateways: GatewayFactory,
    publisher: Publisher,
    kafka_readers: Callable[..., KafkaReader],
    place_device: tuple[str, str, str],
) -> None:
    place, device, topic = place_device
    raw = _reading_bytes(place, device, pressure=1500.0)
    letter = _assert_dead_letter(gateways(), kafka_readers, publisher, topic, raw, "out_of_range")
    assert "pressure" in letter["detail"]


def test_payload_device_differing_from_topic_goes_to_dlq_as_topic_mismatch(
    gateways: GatewayFactory,
    publisher: Publisher,
    kafka_readers: Callable[..., KafkaReader],
    place_device: tuple[str, str, str],
) -> None:
    place, _, topic = place_device
    raw = _reading_bytes(place, unique("other"))
    _assert_dead_letter(gateways(), kafka_readers, publisher, topic, raw, "topic_mismatch")


@pytest.mark.parametrize("size", [1025, 60_000])
def test_oversize_payload_goes_to_dlq_as_too_large(
    gateways: GatewayFactory,
    publisher: Publisher,
    kafka_readers: Callable[..., KafkaReader],
    place_device: tuple[str, str, str],
    size: int,
) -> None:
    place, device, topic = place_device
    base = _reading_bytes(place, device)
    raw = base[:-1] + b', "pad": "' + b"x" * (size - len(base) - 11) + b'"}'
    assert len(raw) == size
    letter = _assert_dead_letter(gateways(), kafka_readers, publisher, topic, raw, "too_large")
    assert base64.b64decode(letter["payload_b64"]) == raw


def test_device_id_outside_the_charset_goes_to_dlq_as_bad_id(
    gateways: GatewayFactory,
    publisher: Publisher,
    kafka_readers: Callable[..., KafkaReader],
) -> None:
    device = unique("dev") + ".v2"
    topic = contract.reading_topic(gateways.place, device)
    raw = _reading_bytes(gateways.place, device)
    _assert_dead_letter(gateways(), kafka_readers, publisher, topic, raw, "bad_id")


def test_unknown_payload_version_goes_to_dlq_as_unknown_version(
    gateways: GatewayFactory,
    publisher: Publisher,
    kafka_readers: Callable[..., KafkaReader],
    place_device: tuple[str, str, str],
) -> None:
    place, device, topic = place_device
    _assert_dead_letter(
        gateways(), kafka_readers, publisher, topic, _reading_bytes(place, device, v=2), "unknown_version"
    )


def test_bad_input_neither_stops_nor_delays_good_readings(
    gateways: GatewayFactory,
    publisher: Publisher,
    kafka_readers: Callable[..., KafkaReader],
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
