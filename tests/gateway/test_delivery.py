"""Valid readings through a real gateway: MQTT (Mosquitto) → `iot gateway` → Kafka."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable

import pytest

from iot import contract
from iot.harness.ports import free_ports
from tests.gateway.conftest import GatewayFactory, KafkaReader, Publisher, distinct_ids, make_reading
from tests.support import unique, wait_for

pytestmark = pytest.mark.integration


def test_valid_readings_arrive_keyed_by_device_in_order_per_device(
    gateways: GatewayFactory, publisher: Publisher, kafka_readers: Callable[..., KafkaReader]
) -> None:
    devices = [unique("dev") for _ in range(4)]
    per_device = 250
    reader = kafka_readers(contract.TOPIC_READINGS, "^(" + "|".join(devices) + ")$")
    gateway = gateways()
    readings = [make_reading(gateways.place, d, seq) for seq in range(per_device) for d in devices]
    publisher.publish_readings(readings)

    records = reader.wait_until(
        lambda rs: len(distinct_ids(rs)) == len(readings), 60, "every reading in iot.readings"
    )
    seqs: dict[str, list[int]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for record in records:
        assert record.key == record.value["device"]
        assert isinstance(record.value["received_at"], int)
        seqs[record.key].append(record.value["seq"])
        partitions[record.key].add(record.partition)
    for device in devices:
        assert seqs[device] == list(range(per_device)), f"{device} out of order or duplicated"
        assert len(partitions[device]) == 1
    assert gateway.metric("iot_gateway_produced_total") == len(readings)
    assert gateway.metric("iot_gateway_in_flight") == 0


def test_acks_follow_kafka_confirmation_for_every_reading(
    gateways: GatewayFactory, publisher: Publisher, kafka_readers: Callable[..., KafkaReader]
) -> None:
    device = unique("dev")
    reader = kafka_readers(contract.TOPIC_READINGS, f"^{device}$")
    gateway = gateways()
    publisher.publish_readings(make_reading(gateways.place, device, seq) for seq in range(100))
    reader.wait_until(lambda rs: len(distinct_ids(rs)) == 100, 30, "100 readings in Kafka")

    def settled() -> bool:
        m = gateway.metrics()
        return m.get("iot_gateway_acked_total") == 100 and m.get("iot_gateway_in_flight") == 0

    wait_for(settled, 10, "100 acks and nothing in flight")
    m = gateway.metrics()
    assert m["iot_gateway_produce_latency_seconds_count"] == 100
    assert m["iot_gateway_received_total"] == 100


def test_reading_without_synced_clock_gets_gateway_receive_time(
    gateways: GatewayFactory, publisher: Publisher, kafka_readers: Callable[..., KafkaReader]
) -> None:
    device = unique("dev")
    reader = kafka_readers(contract.TOPIC_READINGS, f"^{device}$")
    gateways()
    publisher.publish_readings([make_reading(gateways.place, device, 0, ts=1000, time_valid=False)])
    [record] = reader.wait_until(lambda rs: len(rs) == 1, 30, "the reading in Kafka")
    assert record.value["time_valid"] is False
    assert record.value["ts"] == record.value["received_at"]
    assert record.value["ts"] > 1000


def stopped_counts(log: str, event: str) -> dict[str, int]:
    """The counters of the gateway's last `event` log line (`event key=value ...`)."""
    [line] = [ln for ln in log.splitlines() if f" {event} " in f"{ln} "][-1:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)\b", line.split(event, 1)[1])}


def test_sigterm_drains_in_flight_and_exits_zero_losing_nothing(
    gateways: GatewayFactory, publisher: Publisher, kafka_readers: Callable[..., KafkaReader]
) -> None:
    device = unique("dev")
    total = 2000
    reader = kafka_readers(contract.TOPIC_READINGS, f"^{device}$")
    client_id = unique("gw")
    first = gateways(client_id=client_id)
    publisher.publish_readings(make_reading(gateways.place, device, seq) for seq in range(total))
    wait_for(lambda: (first.metric("iot_gateway_received_total") or 0) > 0, 30, "the gateway receiving")
    assert first.terminate() == 0
    # Drained: everything it took was confirmed by Kafka and acked to the broker before it exited.
    counts = stopped_counts(first.log(), "gateway_stopped")
    assert counts["unacked"] == 0 and counts["received"] > 0, counts
    assert counts["received"] == counts["completed"] == counts["acked"], counts
    # Whatever the first gateway did not take stays in its session and goes to its successor.
    gateways(client_id=client_id)
    reader.wait_until(lambda rs: len(distinct_ids(rs)) == total, 60, f"all {total} readings in Kafka")
    assert len(distinct_ids(reader.drain())) <= total


def test_drain_timeout_bounds_a_stop_while_kafka_is_away_and_loses_nothing(
    gateways: GatewayFactory, publisher: Publisher, kafka_readers: Callable[..., KafkaReader]
) -> None:
    device = unique("dev")
    total = 50
    reader = kafka_readers(contract.TOPIC_READINGS, f"^{device}$")
    client_id = unique("gw")
    (nowhere,) = free_ports(1)
    # Kafka unreachable: nothing it takes can be confirmed, so the drain can only end by its timeout
    # (IOT_GATEWAY_DRAIN_TIMEOUT_S, 1 s here; the default 15 s would outlast terminate's 10 s below).
    stuck = gateways(
        client_id=client_id, IOT_KAFKA_BOOTSTRAP=f"127.0.0.1:{nowhere}", IOT_GATEWAY_DRAIN_TIMEOUT_S="1"
    )
    publisher.publish_readings(make_reading(gateways.place, device, seq) for seq in range(total))
    wait_for(lambda: (stuck.metric("iot_gateway_in_flight") or 0) > 0, 30, "readings in flight")
    assert stuck.terminate(timeout=10) == 0
    counts = stopped_counts(stuck.log(), "gateway_stopped_with_unacked")
    assert counts["unacked"] > 0 and counts["acked"] == 0, counts
    # Un-acked readings stayed with the broker: the next gateway of this client id delivers them all.
    gateways(client_id=client_id)
    reader.wait_until(lambda rs: len(distinct_ids(rs)) == total, 60, f"all {total} readings in Kafka")
