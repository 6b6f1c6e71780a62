"""The gateway's own in-flight bound: however the broker sends, no more than IOT_GATEWAY_MAX_IN_FLIGHT
readings are received and not yet confirmed by Kafka at once.

Mosquitto 2.0.11 does not hold a session to its Receive Maximum while acks flow: each PUBACK refills
the session's in-flight window by the acked message's place in the window, not by how many are in
flight (src/database.c, db__message_delete_outgoing; fixed in 2.0.13). A backlog drained by a gateway
that acks in order therefore arrives nearly whole at once. The gateway stops reading PUBLISHes at its
bound instead (gateway/take_gate.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from iot import contract
from tests.gateway.conftest import GatewayFactory, KafkaReader, Publisher, distinct_ids, make_reading
from tests.support import unique, wait_for

pytestmark = pytest.mark.integration

MAX_IN_FLIGHT = 50


def test_a_drained_backlog_never_holds_more_than_the_in_flight_bound_and_arrives_once(
    gateways: GatewayFactory, publisher: Publisher, kafka_readers: Callable[..., KafkaReader]
) -> None:
    devices = [unique("dev") for _ in range(4)]
    total = 3000
    reader = kafka_readers(contract.TOPIC_READINGS, "^(" + "|".join(devices) + ")$")
    client_id = unique("gw")
    bound = {"IOT_GATEWAY_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT)}
    # A session that outlives its gateway: the backlog queues in the broker while it is away.
    assert gateways(client_id=client_id, **bound).terminate() == 0
    readings = [make_reading(gateways.place, d, seq) for seq in range(total // 4) for d in devices]
    publisher.publish_readings(readings)

    gateway = gateways(client_id=client_id, **bound)
    reader.wait_until(lambda rs: len(distinct_ids(rs)) == total, 90, f"all {total} readings in Kafka")

    def settled() -> bool:
        m = gateway.metrics()
        return m.get("iot_gateway_acked_total") == total and m.get("iot_gateway_in_flight") == 0

    wait_for(settled, 30, f"{total} acks and nothing in flight")
    # Slack 0: the bound is checked before each PUBLISH is taken from the stream, in the one thread
    # that takes them, so a reading is taken only while fewer than the bound are in flight.
    peak = gateway.metric("iot_gateway_in_flight_peak")
    assert peak is not None and 0 < peak <= MAX_IN_FLIGHT, peak
    # Exactly once: every reading taken once (no reconnect, no redelivery) and written once.
    assert gateway.metric("iot_gateway_received_total") == total
    records = reader.drain(1.0)
    assert len(records) == total, f"{len(records) - total} duplicates in Kafka"
    assert distinct_ids(records) == {(r["device"], 0, r["seq"]) for r in readings}
