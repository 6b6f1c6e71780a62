"""Kafka away for a while: the gateway holds readings un-acked (the MQTT broker queues the rest), says
so, and delivers everything once Kafka is back.

The shared stack's Kafka must not be stopped (other engineers' tests use it), and a TCP proxy in front
of it cannot cut the gateway off: after bootstrap the client dials the advertised 127.0.0.1:9092
directly. So this test starts a private single-node Kafka with the stack module (its own ports and
state folder), stops it for real and starts it again on the same data.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from iot import contract
from iot.harness.stack import PrivateStack
from tests.gateway.conftest import GatewayFactory, KafkaReader, Publisher, distinct_ids, make_reading
from tests.support import unique, wait_for

pytestmark = pytest.mark.integration

MAX_IN_FLIGHT = 100


def test_kafka_outage_holds_readings_back_and_loses_nothing_once_it_returns(
    gateways: GatewayFactory,
    publisher: Publisher,
    kafka_readers: Callable[..., KafkaReader],
    private_kafka: PrivateStack,
) -> None:
    bootstrap = private_kafka.kafka_bootstrap
    device = unique("dev")
    reader = kafka_readers(contract.TOPIC_READINGS, f"^{device}$", bootstrap)
    gateway = gateways(IOT_KAFKA_BOOTSTRAP=bootstrap, IOT_GATEWAY_MAX_IN_FLIGHT=str(MAX_IN_FLIGHT))

    before = [make_reading(gateways.place, device, seq) for seq in range(200)]
    publisher.publish_readings(before)
    reader.wait_until(lambda rs: len(distinct_ids(rs)) == 200, 60, "the first 200 readings")

    log_before_outage = len(gateway.log())
    private_kafka.down(["kafka"])
    wait_for(lambda: gateway.metric("iot_gateway_kafka_up") == 0.0, 60, "the gateway noticing Kafka is gone")
    during = [make_reading(gateways.place, device, seq) for seq in range(200, 1200)]
    publisher.publish_readings(during)

    # Backpressure: no more than MAX_IN_FLIGHT readings taken while none can be confirmed.
    def saturated() -> bool:
        m = gateway.metrics()
        assert m["iot_gateway_in_flight"] <= MAX_IN_FLIGHT
        assert m["iot_gateway_received_total"] - m["iot_gateway_produced_total"] <= MAX_IN_FLIGHT
        return m["iot_gateway_in_flight"] == MAX_IN_FLIGHT

    wait_for(saturated, 30, f"{MAX_IN_FLIGHT} readings in flight")
    wait_for(lambda: "backpressure_on" in gateway.log()[log_before_outage:], 10, "backpressure_on logged")
    assert "kafka_unreachable" in gateway.log()[log_before_outage:]
    assert gateway.metric("iot_gateway_produced_total") == 200

    private_kafka.up(["kafka"])
    reader.wait_until(lambda rs: len(distinct_ids(rs)) == 1200, 120, "all 1200 readings after Kafka returned")
    assert distinct_ids(reader.records) == {(device, 0, s) for s in range(1200)}
    wait_for(lambda: gateway.metric("iot_gateway_kafka_up") == 1.0, 30, "iot_gateway_kafka_up back to 1")
    wait_for(lambda: gateway.metric("iot_gateway_in_flight") == 0.0, 30, "nothing left in flight")
    assert "kafka_reachable" in gateway.log()
