"""End-to-end acks (docs/CONTRACT.md): the gateway tells each board which of its readings Kafka holds,
on `sensors/{place}/{device}/ack`, and only after Kafka confirmed them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from gateway.records import dead_letter, identify, route
from iot import contract
from iot.harness.broker import PrivateBroker
from iot.harness.mqtt import MqttLogin
from iot.harness.stack import PrivateStack
from tests.gateway.conftest import SHARED, GatewayFactory, KafkaReader, Publisher, distinct_ids, make_reading
from tests.support import unique, wait_for


class Board:
    """The board side of the ack: subscribed to its own ack topic, records every ack it receives."""

    def __init__(self, place: str, device: str, broker: MqttLogin = SHARED) -> None:
        self.topic = contract.ack_topic(place, device)
        self.acks: list[tuple[float, int, list[tuple[int, int]]]] = []
        self.barriers: set[str] = set()
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self._client = broker.client(unique("board"))
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_a: subscribed.set()
        self._client.subscribe(self.topic, qos=contract.ACK_QOS)
        assert subscribed.wait(10), "SUBACK for the ack topic"

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        assert msg.topic == self.topic
        if msg.payload.startswith(b'{"barrier"'):
            with self._lock:
                self.barriers.add(json.loads(msg.payload)["barrier"])
            return
        boot, ranges = contract.decode_ack(bytes(msg.payload))
        with self._lock:
            self.acks.append((time.monotonic(), boot, ranges))

    def covered(self, boot: int) -> set[int]:
        with self._lock:
            return {s for _t, b, ranges in self.acks if b == boot for a, z in ranges for s in range(a, z + 1)}

    def barrier(self, via: Publisher) -> None:
        """A marker published to this board's ack topic now has reached it: the broker delivers one
        subscriber's messages in the order they came, so any ack published before it has come too."""
        token = unique("barrier")
        via.publish_raw(self.topic, json.dumps({"barrier": token}).encode())
        wait_for(lambda: token in self.barriers, 10, "the marker on the ack topic")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def boards() -> Iterator[Callable[..., Board]]:
    made: list[Board] = []

    def make(place: str, device: str, broker: MqttLogin = SHARED) -> Board:
        board = Board(place, device, broker)
        made.append(board)
        return board

    yield make
    for board in made:
        board.close()


# --- unit: ack payloads and who a message is acked to --------------------------------------------


@pytest.mark.unit
def test_ack_payload_is_compact_ranges_split_beyond_the_limit() -> None:
    assert contract.encode_acks(3, [5, 1, 2, 3, 3, 7, 8]) == [b'{"boot":3,"ranges":[[1,3],[5,5],[7,8]]}']
    assert contract.decode_ack(b'{"boot":3,"ranges":[[1,3],[5,5]]}') == (3, [(1, 3), (5, 5)])
    many = contract.encode_acks(0, range(0, 2 * (contract.ACK_MAX_RANGES + 1), 2))
    assert len(many) == 2
    assert [len(contract.decode_ack(p)[1]) for p in many] == [contract.ACK_MAX_RANGES, 1]
    for bad in (b"[]", b'{"boot":1}', b'{"boot":1,"ranges":[[3,2]]}', b'{"boot":true,"ranges":[]}'):
        with pytest.raises(ValueError):
            contract.decode_ack(bad)


@pytest.mark.unit
def test_rejected_messages_are_acked_to_the_topic_device_when_they_carry_boot_and_seq() -> None:
    topic = "sensors/kitchen/k-1/reading"
    valid = route(topic, json.dumps(make_reading("kitchen", "k-1", 4, boot=2)).encode(), 0)
    assert valid.reason is None and valid.ident == ("kitchen", "k-1", 2, 4)
    hot = route(topic, json.dumps(make_reading("kitchen", "k-1", 5, boot=2, temperature=900.0)).encode(), 0)
    assert hot.reason == "out_of_range" and hot.ident == ("kitchen", "k-1", 2, 5)
    # Payload claims another board: the ack goes to the one the broker let publish on this topic.
    other = route(topic, json.dumps(make_reading("kitchen", "k-2", 6, boot=2)).encode(), 0)
    assert other.reason == "topic_mismatch" and other.ident == ("kitchen", "k-1", 2, 6)
    assert route(topic, b"{not json", 0).ident is None
    assert identify(topic, b'{"boot":-1,"seq":3}') is None
    assert identify(topic, b'{"boot":true,"seq":3}') is None
    assert identify("sensors/kitchen/reading", b'{"boot":1,"seq":3}') is None
    assert dead_letter(topic, b'{"boot":1,"seq":3}', "unprocessable", "x", 0).ident == (
        "kitchen",
        "k-1",
        1,
        3,
    )


# --- integration: the real gateway --------------------------------------------------------------


@pytest.mark.integration
def test_acks_cover_exactly_the_readings_kafka_holds_valid_and_rejected(
    gateways: GatewayFactory,
    publisher: Publisher,
    kafka_readers: Callable[..., KafkaReader],
    boards: Callable[..., Board],
) -> None:
    device = unique("dev")
    board = boards(gateways.place, device)
    reader = kafka_readers(contract.TOPIC_READINGS, f"^{device}$")
    dlq = kafka_readers(contract.TOPIC_DLQ, f"/{device}/")
    gateway = gateways()
    publisher.publish_readings(make_reading(gateways.place, device, seq, boot=7) for seq in range(300))
    topic = contract.reading_topic(gateways.place, device)
    publisher.publish_raw(
        topic, json.dumps(make_reading(gateways.place, device, 300, boot=7, humidity=-5.0)).encode()
    )
    publisher.publish_raw(topic, b"not json at all")

    wait_for(lambda: board.covered(7) == set(range(301)), 60, "acks covering seq 0..300 of boot 7")
    assert distinct_ids(reader.drain()) == {(device, 7, s) for s in range(300)}
    dlq.wait_until(lambda rs: len(rs) == 2, 30, "both rejected messages in the DLQ")
    assert {r.value["reason"] for r in dlq.records} == {"out_of_range", "malformed_json"}
    assert {b for _t, b, _r in board.acks} == {7}
    wait_for(lambda: gateway.metric("iot_gateway_in_flight") == 0.0, 30, "nothing left in flight")
    sent = gateway.metric("iot_gateway_e2e_acks_total")
    assert sent is not None and 1 <= sent <= 302


def read_all_ids(bootstrap: str, timeout: float, want: int) -> set[tuple[str, int, int]]:
    """(device, boot, seq) of every record in iot.readings of a private Kafka, read from offset 0."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": unique("e2e"), "enable.auto.commit": False}
    )
    try:
        topic = contract.TOPIC_READINGS
        parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        ids: set[tuple[str, int, int]] = set()
        deadline = time.monotonic() + timeout
        while len(ids) < want and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error() is None:
                    value = json.loads(msg.value() or b"null")
                    ids.add((value["device"], value["boot"], value["seq"]))
        return ids
    finally:
        consumer.close()


@pytest.mark.integration
def test_no_ack_while_kafka_is_away_then_acks_once_it_holds_them(
    gateways: GatewayFactory,
    private_broker: PrivateBroker,
    private_kafka: PrivateStack,
    boards: Callable[..., Board],
) -> None:
    # Private broker and Kafka: no other gateway may bridge (and ack) these readings.
    device = unique("dev")
    bootstrap = private_kafka.kafka_bootstrap
    board = boards(gateways.place, device, private_broker.login)
    publisher = Publisher(private_broker.login)
    gateway = gateways(IOT_MQTT_URL=private_broker.url, IOT_KAFKA_BOOTSTRAP=bootstrap)
    try:
        publisher.publish_readings(make_reading(gateways.place, device, seq) for seq in range(50))
        wait_for(lambda: board.covered(0) == set(range(50)), 60, "acks for the first 50")

        private_kafka.down(["kafka"])
        wait_for(
            lambda: gateway.metric("iot_gateway_kafka_up") == 0.0, 60, "the gateway noticing Kafka is gone"
        )
        acks_before = len(board.acks)
        publisher.publish_readings(make_reading(gateways.place, device, seq) for seq in range(50, 150))
        wait_for(lambda: gateway.metric("iot_gateway_in_flight") == 100.0, 30, "100 readings in flight")
        # The gateway holds them and cannot confirm them: no ack may come. Once its main loop has served
        # two more of the Kafka client's reconnect failures (their callbacks run in the poll() that serves
        # the delivery reports an ack comes from) and a marker sent to the board's ack topic after that
        # has arrived, an ack the gateway had sent for them would have arrived before it.
        transport = 'iot_gateway_kafka_errors_total{error="transport"}'
        failures = gateway.metrics().get(transport, 0.0)
        wait_for(lambda: gateway.metrics().get(transport, 0.0) >= failures + 2, 60, "two reconnects served")
        board.barrier(publisher)
        assert len(board.acks) == acks_before, f"acked while Kafka was away: {board.acks[acks_before:]}"

        private_kafka.up(["kafka"])
        wait_for(lambda: board.covered(0) == set(range(150)), 120, "acks for all 150 after Kafka returned")
        # Everything acked is in Kafka (acks=all on one broker: readable once confirmed). Read by a fresh
        # consumer from the start of this private Kafka: one that lived through the restart may sit in
        # its reconnect backoff for a while on a loaded machine.
        assert read_all_ids(bootstrap, 60, want=150) == {(device, 0, s) for s in range(150)}
    finally:
        publisher.close()
