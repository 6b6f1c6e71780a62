"""Per-board metrics the alert rules and dashboards query: online from the retained status topic,
and the time of the last valid reading."""

from __future__ import annotations

import time

import pytest

from iot import contract
from tests.gateway.conftest import GatewayFactory, Publisher, make_reading
from tests.support import unique, wait_for

pytestmark = pytest.mark.integration


def _retain(publisher: Publisher, topic: str, payload: bytes) -> None:
    publisher.publish_raw(topic, payload, retain=True)


def test_retained_status_drives_device_online(gateways: GatewayFactory, publisher: Publisher) -> None:
    device = unique("dev")
    status = contract.status_topic(gateways.place, device)
    label = f'iot_gateway_device_online{{device="{device}",place="{gateways.place}"}}'
    try:
        # Retained before the gateway starts: it learns the state on subscribe.
        _retain(publisher, status, b"online")
        gateway = gateways()
        wait_for(lambda: gateway.metric(label) == 1.0, 10, f"{label} == 1")
        _retain(publisher, status, b"offline")
        wait_for(lambda: gateway.metric(label) == 0.0, 10, f"{label} == 0")
    finally:
        _retain(publisher, status, b"")  # clear the retained message on the shared broker


def test_valid_reading_sets_last_reading_time_and_a_rejected_one_does_not(
    gateways: GatewayFactory, publisher: Publisher
) -> None:
    good, bad = unique("dev"), unique("dev")
    gateway = gateways()
    before = time.time()
    publisher.publish_readings([make_reading(gateways.place, good, 0)])
    publisher.publish_raw(contract.reading_topic(gateways.place, bad), b"{broken")
    label = 'iot_gateway_device_last_reading_timestamp_seconds{{device="{}",place="{}"}}'
    seen = wait_for(lambda: gateway.metric(label.format(good, gateways.place)), 10, "the good device's time")
    assert seen is not None and before - 1 <= seen <= time.time() + 1
    wait_for(lambda: gateway.metric("iot_gateway_acked_total") == 2.0, 10, "both messages handled")
    assert gateway.metric(label.format(bad, gateways.place)) is None


def test_retained_health_message_becomes_device_health_gauges(
    gateways: GatewayFactory, publisher: Publisher
) -> None:
    device = unique("dev")
    health = contract.health_topic(gateways.place, device)
    label = f'iot_gateway_device_health{{device="{device}",field="outbox_depth",place="{gateways.place}"}}'
    gateway = gateways()
    try:
        _retain(publisher, health, b'{"boot": 3, "outbox_depth": 17, "sensor_errors": {"bme280": 1}}')
        wait_for(lambda: gateway.metric(label) == 17.0, 10, f"{label} == 17")
    finally:
        _retain(publisher, health, b"")
