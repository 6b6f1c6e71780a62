"""Nothing lost when a gateway dies hard, and load split when several share one subscription group."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from iot import contract
from iot.harness.broker import PrivateBroker
from tests.gateway.conftest import GatewayFactory, KafkaReader, Publisher, distinct_ids, make_reading
from tests.support import unique, wait_for

pytestmark = pytest.mark.integration


def test_kill_9_mid_stream_then_restart_loses_no_reading(
    gateways: GatewayFactory, publisher: Publisher, kafka_readers: Callable[..., KafkaReader]
) -> None:
    devices = [unique("dev") for _ in range(3)]
    per_device = 1500
    total = per_device * len(devices)
    reader = kafka_readers(contract.TOPIC_READINGS, "^(" + "|".join(devices) + ")$")
    client_id = unique("gw")
    gateway = gateways(client_id=client_id)
    readings = [make_reading(gateways.place, d, seq, boot=7) for seq in range(per_device) for d in devices]

    published = threading.Event()

    def publish() -> None:
        publisher.publish_readings(readings, timeout=120)
        published.set()

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    # Kill once the gateway is demonstrably mid-stream: some readings produced, most still to come.
    wait_for(lambda: (gateway.metric("iot_gateway_produced_total") or 0) >= 300, 60, "300 readings produced")
    gateway.kill()
    produced_before = len(distinct_ids(reader.drain()))
    assert produced_before < total, "the stream finished before the kill; the test proved nothing"

    gateways(client_id=client_id)
    thread.join(timeout=120)
    assert published.is_set()
    records = reader.wait_until(
        lambda rs: len(distinct_ids(rs)) == total, 90, f"all {total} distinct readings after restart"
    )
    assert distinct_ids(records) == {(d, 7, s) for d in devices for s in range(per_device)}


def test_two_gateways_in_one_group_split_the_load_and_lose_nothing(
    gateways: GatewayFactory, publisher: Publisher, kafka_readers: Callable[..., KafkaReader]
) -> None:
    devices = [unique("dev") for _ in range(4)]
    per_device = 500
    total = per_device * len(devices)
    reader = kafka_readers(contract.TOPIC_READINGS, "^(" + "|".join(devices) + ")$")
    first, second = gateways(), gateways()
    publisher.publish_readings(
        make_reading(gateways.place, d, seq) for seq in range(per_device) for d in devices
    )

    records = reader.wait_until(lambda rs: len(distinct_ids(rs)) == total, 60, f"all {total} readings")
    assert distinct_ids(records) == {(d, 0, s) for d in devices for s in range(per_device)}
    shares = [g.metric("iot_gateway_produced_total") or 0 for g in (first, second)]
    assert sum(shares) == total, f"each reading bridged exactly once without failures, got {shares}"
    # Mosquitto distributes shared-subscription messages round robin: expect a fair split.
    assert min(shares) >= total * 0.3, f"load not split: {shares}"


def test_broker_restart_resumes_the_session_and_keeps_bridging(
    gateways: GatewayFactory, private_broker: PrivateBroker, kafka_readers: Callable[..., KafkaReader]
) -> None:
    device = unique("dev")
    reader = kafka_readers(contract.TOPIC_READINGS, f"^{device}$")
    gateway = gateways(IOT_MQTT_URL=private_broker.url)
    before = Publisher(private_broker.login)
    before.publish_readings(make_reading(gateways.place, device, seq) for seq in range(1000))
    before.close()
    reader.wait_until(lambda rs: len(distinct_ids(rs)) == 1000, 60, "the first 1000 readings")

    private_broker.stop()
    wait_for(
        lambda: gateway.metric("iot_gateway_mqtt_connected") == 0.0, 30, "the gateway seeing the broker go"
    )
    private_broker.start()
    wait_for(lambda: gateway.metric("iot_gateway_mqtt_connected") == 1.0, 30, "the gateway reconnected")
    assert "session_present=True" in gateway.log()
    after = Publisher(private_broker.login)
    after.publish_readings(make_reading(gateways.place, device, seq) for seq in range(1000, 2000))
    after.close()

    records = reader.wait_until(lambda rs: len(distinct_ids(rs)) == 2000, 60, "all 2000 readings")
    assert distinct_ids(records) == {(device, 0, s) for s in range(2000)}


def test_two_processes_with_one_client_id_are_reported_not_silently_flapping(
    gateways: GatewayFactory,
) -> None:
    client_id = unique("gw")
    first = gateways(client_id=client_id)
    second = gateways(client_id=client_id, start=False).start(wait_ready=False)

    def reported() -> bool:
        logs = first.log() + second.log()
        return "mqtt_session_taken_over" in logs or "mqtt_flapping" in logs

    wait_for(reported, 30, "the client id clash to be logged")
