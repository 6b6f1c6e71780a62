"""What a board may publish on its own topics (the ACL allows it) must never stop, silence or loop the
gateway (issue #19): each message is handled on its own, a bad status or health message is counted
and ignored, a reading ends in Kafka (reading or dead letter) or, retained, as an ignored stale copy.
All on the real broker and Kafka."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iot import contract
from tests.gateway.conftest import GatewayFactory, KafkaReader, Publisher, distinct_ids, make_reading
from tests.gateway.test_e2e_ack import Board
from tests.support import unique, wait_for

pytestmark = pytest.mark.integration


def ignored(kind: str, reason: str) -> str:
    return f'iot_gateway_ignored_total{{kind="{kind}",reason="{reason}"}}'


class Retained:
    """Publishes retained messages and clears them after the test (the broker is shared)."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.topics: set[str] = set()

    def __call__(self, topic: str, payload: bytes, properties: Properties | None = None) -> None:
        self.topics.add(topic)
        self.publisher.publish_raw(topic, payload, retain=True, properties=properties)

    def clear(self) -> None:
        for topic in self.topics:
            self.publisher.publish_raw(topic, b"", retain=True)


@pytest.fixture
def retained(publisher: Publisher) -> Iterator[Retained]:
    keeper = Retained(publisher)
    yield keeper
    keeper.clear()


def feff_property() -> Properties:
    """A user property Mosquitto accepts (valid UTF-8) and paho 2.2 refuses (U+FEFF, MQTT-1.5.4-3)."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = ("note", "\ufeff")
    return props


def test_a_retained_health_nested_too_deep_neither_stops_nor_silences_the_gateway(
    gateways: GatewayFactory,
    publisher: Publisher,
    retained: Retained,
    kafka_readers: Callable[..., KafkaReader],
) -> None:
    # Before: json.loads raised RecursionError in paho's network thread, which died; the process stayed
    # up with iot_gateway_mqtt_connected 1 and bridged nothing, at every restart again.
    device = unique("dev")
    retained(contract.health_topic(gateways.place, unique("bad")), b"[" * 3000)
    reader = kafka_readers(contract.TOPIC_READINGS, f"^{device}$")
    client_id = unique("gw")
    gateway = gateways(client_id=client_id)
    publisher.publish_readings(make_reading(gateways.place, device, seq) for seq in range(20))
    reader.wait_until(lambda rs: len(distinct_ids(rs)) == 20, 30, "20 readings past the bad health")
    wait_for(lambda: gateway.metric(ignored("health", "malformed_json")) == 1.0, 10, "it counted")
    assert "health_ignored" in gateway.log()

    # The message is retained: a restarted gateway gets it again at subscribe, and goes on all the same.
    assert gateway.terminate() == 0
    again = gateways(client_id=client_id)
    publisher.publish_readings(make_reading(gateways.place, device, seq) for seq in range(20, 40))
    reader.wait_until(lambda rs: len(distinct_ids(rs)) == 40, 30, "20 more readings after a restart")
    assert again.metric(ignored("health", "malformed_json")) == 1.0
    assert again.metric('iot_gateway_callback_errors_total{callback="on_message"}') is None


def test_bad_status_and_health_messages_are_counted_and_ignored_good_ones_still_count(
    gateways: GatewayFactory, publisher: Publisher
) -> None:
    place, board = gateways.place, unique("dev")
    gateway = gateways()
    bad = [
        ("health", contract.health_topic(place, board), b"[" * 3000, "malformed_json"),
        ("health", contract.health_topic(place, board), b"\xff\xfe" * 10, "malformed_json"),
        # A 400-digit integer is valid JSON and overflowed float() (OverflowError) before.
        ("health", contract.health_topic(place, board), b'{"uptime_s": 1' + b"0" * 400 + b"}", "no_numbers"),
        ("health", contract.health_topic(place, board), b"{" + b" " * 5000 + b"}", "too_large"),
        ("health", contract.health_topic(place, board), b"[1, 2]", "not_object"),
        ("health", contract.health_topic(place, "a.b"), b'{"uptime_s": 5}', "bad_id"),
        ("status", contract.status_topic(place, board), b"rebooting", "unknown_status"),
        ("status", contract.status_topic(place, board), b"\xff" * 300, "unknown_status"),
        ("status", contract.status_topic(place, "dev$1"), b"online", "bad_id"),
    ]
    for _kind, topic, payload, _reason in bad:
        publisher.publish_raw(topic, payload)
    expected: dict[str, float] = {}
    for kind, _topic, _payload, reason in bad:
        expected[ignored(kind, reason)] = expected.get(ignored(kind, reason), 0.0) + 1.0

    def counted() -> bool:
        metrics = gateway.metrics()
        return all(metrics.get(name) == n for name, n in expected.items())

    wait_for(counted, 15, f"each bad message counted: {expected}")
    publisher.publish_raw(contract.status_topic(place, board), b"online")
    publisher.publish_raw(contract.health_topic(place, board), b'{"uptime_s": 42}')
    online = f'iot_gateway_device_online{{device="{board}",place="{place}"}}'
    uptime = f'iot_gateway_device_health{{device="{board}",field="uptime_s",place="{place}"}}'
    wait_for(lambda: gateway.metric(online) == 1.0 and gateway.metric(uptime) == 42.0, 10, "good ones")
    assert gateway.metric("iot_gateway_mqtt_connected") == 1.0
    log = gateway.log()
    assert "status_ignored" in log and "health_ignored" in log and "action=" in log


def test_properties_paho_cannot_parse_are_dropped_not_a_reconnect_loop(
    gateways: GatewayFactory,
    publisher: Publisher,
    retained: Retained,
    kafka_readers: Callable[..., KafkaReader],
) -> None:
    # Before: paho refused the PUBLISH as malformed and dropped the connection; the broker redelivered
    # it at every reconnect (readings) or sent it again at every subscribe (retained health): the
    # gateway reconnected once a second for good and bridged nothing.
    place, device = gateways.place, unique("dev")
    reader = kafka_readers(contract.TOPIC_READINGS, f"^{device}$")
    gateway = gateways()
    retained(contract.health_topic(place, device), b'{"uptime_s": 7}', properties=feff_property())
    publisher.publish_raw(
        contract.reading_topic(place, device),
        json.dumps(make_reading(place, device, 0)).encode(),
        properties=feff_property(),
    )
    publisher.publish_readings(make_reading(place, device, seq) for seq in range(1, 21))
    records = reader.wait_until(lambda rs: len(distinct_ids(rs)) == 21, 30, "all 21 readings")
    assert len(records) == 21, "a reading was bridged twice: the connection dropped after all"
    uptime = f'iot_gateway_device_health{{device="{device}",field="uptime_s",place="{place}"}}'
    wait_for(lambda: gateway.metric(uptime) == 7.0, 10, "the health message used without its property")
    assert gateway.metric("iot_gateway_mqtt_properties_dropped_total") == 2.0
    assert "mqtt_disconnected" not in gateway.log()
    assert "mqtt_properties_dropped" in gateway.log()


def test_a_retained_reading_is_bridged_once_and_its_stored_copy_ignored_after_reconnects(
    gateways: GatewayFactory,
    publisher: Publisher,
    retained: Retained,
    kafka_readers: Callable[..., KafkaReader],
) -> None:
    # Mosquitto 2.0.11 sends retained messages to shared subscriptions at every subscribe: before,
    # each restart of the gateway bridged the same reading again.
    place, device = gateways.place, unique("dev")
    topic = contract.reading_topic(place, device)
    reader = kafka_readers(contract.TOPIC_READINGS, f"^{device}$")
    client_id = unique("gw")
    gateway = gateways(client_id=client_id)
    retained(topic, json.dumps(make_reading(place, device, 0)).encode())
    reader.wait_until(lambda rs: len(rs) == 1, 30, "the live copy bridged")
    for round_ in range(2):
        assert gateway.terminate() == 0
        log_start = len(gateway.log())  # one log file per client id
        gateway = gateways(client_id=client_id)
        # A reading published after the restart arrives after the retained copy (sent at subscribe;
        # one device: one partition, in order), so once it is there the copy would be too.
        publisher.publish_readings([make_reading(place, device, 1 + round_)])
        reader.wait_until(lambda rs, n=round_: len(distinct_ids(rs)) == 2 + n, 30, "the next reading")
        assert [r.value["seq"] for r in reader.records].count(0) == 1, "the retained copy was bridged"
        wait_for(lambda g=gateway: g.metric(ignored("reading", "retained")) == 1.0, 15, "the copy ignored")
        wait_for(lambda g=gateway: g.metric("iot_gateway_in_flight") == 0.0, 10, "nothing left in flight")
        assert gateway.log()[log_start:].count("retained_reading_ignored") == 1


def test_an_id_with_a_line_break_is_bad_id_in_the_dlq_not_a_device(
    gateways: GatewayFactory,
    publisher: Publisher,
    kafka_readers: Callable[..., KafkaReader],
) -> None:
    # `$` matched before a trailing newline: `good-1\n` passed once and became a device of its own.
    place, device = gateways.place, unique("good")
    topic = contract.reading_topic(place, device)
    dlq = kafka_readers(contract.TOPIC_DLQ, f"^{re.escape(topic)}$")
    readings = kafka_readers(contract.TOPIC_READINGS, f"^{re.escape(device)}")
    gateway = gateways()
    for bad in ("\n", "\r\n"):
        publisher.publish_raw(topic, json.dumps(make_reading(place, device + bad, 0)).encode())
        publisher.publish_raw(topic, json.dumps(make_reading(place + bad, device, 1)).encode())
    publisher.publish_raw(topic, json.dumps(make_reading(place, "\n" + device, 2)).encode())
    dlq.wait_until(lambda rs: len(rs) == 5, 30, "all five in the DLQ")
    assert [r.value["reason"] for r in dlq.records] == ["bad_id"] * 5
    wait_for(lambda: gateway.metric("iot_gateway_in_flight") == 0.0, 10, "all acked")
    assert readings.drain() == []


# --- a burst of everything a board can publish, beside good boards ------------------------------


class Burst:
    """Messages a hostile board publishes on its own topics, each with the outcome the contract
    gives it: `reading` (valid: bridged once), `dlq` (one dead letter with a reason) or `ignored`."""

    def __init__(self, place: str, rng: random.Random) -> None:
        self.place = place
        self.rng = rng
        self.device = unique("bad")
        self.topic = contract.reading_topic(place, self.device)
        self.seq = 0
        self.messages: list[tuple[str, bytes, str, dict[str, Any]]] = []

    def reading(self, **over: Any) -> dict[str, Any]:
        self.seq += 1
        return {**make_reading(self.place, self.device, self.seq, boot=9), **over}

    def add(
        self, outcome: str, payload: bytes | dict[str, Any], topic: str | None = None, **opts: Any
    ) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.messages.append((topic or self.topic, raw, outcome, opts))

    def build(self) -> list[tuple[str, bytes, str, dict[str, Any]]]:
        r, place, rng = self.reading, self.place, self.rng
        good_text = json.dumps(r())
        kinds: list[Callable[[], None]] = [
            lambda: self.add("dlq", rng.randbytes(rng.randrange(0, 2000))),
            lambda: self.add("dlq", b"[" * rng.randrange(900, 1024)),
            lambda: self.add("dlq", b"{" * rng.randrange(1, 1000)),
            lambda: self.add("dlq", json.dumps(r(fw="X")).replace('"X"', '"\\ud800"').encode()),
            lambda: self.add("dlq", json.dumps(r(fw="X")).replace('"X"', '"a\\udc00"').encode()),
            lambda: self.add("dlq", json.dumps(r()).replace('"seq": ', '"seq": 1' + "0" * 30).encode()),
            lambda: self.add("dlq", json.dumps(r(humidity=12.25)).replace("12.25", "NaN").encode()),
            lambda: self.add("dlq", {k: v for k, v in r().items() if k != "ts"}),
            lambda: self.add("dlq", r(temperature="21.5")),
            lambda: self.add("dlq", r(seq=1.0)),
            lambda: self.add("dlq", r(device=True)),
            lambda: self.add("dlq", r(temperature={"v": 1})),
            lambda: self.add("dlq", r(pressure=5000.0)),
            lambda: self.add("dlq", r(boot=-1)),
            lambda: self.add("dlq", r(ts=-5)),
            lambda: self.add("dlq", r(v=2)),
            lambda: self.add("dlq", r(fw="")),
            lambda: self.add("dlq", r(fw="x" * 2000)),
            lambda: self.add("dlq", r(device=self.device + "\n")),
            lambda: self.add("dlq", r(place=place + "\r\n")),
            lambda: self.add("dlq", r(device=unique("other"))),
            lambda: self.add("dlq", b"\xff\xfe" + good_text.encode("utf-16-le")),
            lambda: self.add("dlq", b"\xef\xbb\xbf" + json.dumps(r()).encode()),
            lambda: self.add("dlq", rng.choice([b"", b"null", b"0", b'"x"', b"[]", b"true"])),
            lambda: self.add("dlq", b"\xed\xa0\x80" + json.dumps(r()).encode()),  # CESU-8 surrogate
            lambda: self.add("dlq", r(), topic=f"sensors/{place}/dev${rng.randrange(9)}/reading"),
            lambda: self.add("dlq", r(), topic=f"sensors/{place}/dev.{rng.randrange(9)}/reading"),
            lambda: self.add("dlq", r(), topic=f"sensors/{place}/d\u00ebv/reading"),
            lambda: self.add("dlq", r(), topic=f"sensors/{place}/\ufeff/reading"),
            lambda: self.add("dlq", r(), topic=f"sensors/{place}/{'x' * 60_000}/reading"),
            lambda: self.add("dlq", rng.randbytes(300), qos=0),
            lambda: self.add("dlq", rng.randbytes(300), qos=2),
            # Valid readings with oddities the contract allows: each is bridged once.
            lambda: self.add("reading", r(), properties=feff_property()),
            lambda: self.add("reading", {**r(), "extra": [1, {"x": None}], "fw": "\u00e9\u4e16\U0001f600"}),
            lambda: self.add("reading", b"  \n" + json.dumps(r(fw="nul\u0000")).encode() + b"\t "),
            lambda: self.add("reading", r(), qos=2),
            # Side topics: counted and ignored.
            lambda: self.add("ignored", b"[" * 3000, topic=contract.health_topic(place, self.device)),
            lambda: self.add("ignored", rng.randbytes(64), topic=contract.status_topic(place, self.device)),
            lambda: self.add(
                "ignored", b'{"rssi": 1' + b"0" * 400 + b"}", topic=contract.health_topic(place, self.device)
            ),
        ]
        for _ in range(4):
            for kind in kinds:
                kind()
        # A reading published retained: bridged once, live; its stored copy comes back at reconnects.
        self.add("reading", r(), retain=True)
        rng.shuffle(self.messages)
        return self.messages


def test_a_burst_of_garbage_beside_good_boards_loses_doubles_and_stops_nothing(
    gateways: GatewayFactory,
    publisher: Publisher,
    retained: Retained,
    kafka_readers: Callable[..., KafkaReader],
) -> None:
    place = gateways.place
    rng = random.Random(19)
    good = [unique("good") for _ in range(2)]
    burst = Burst(place, rng)
    board = Board(place, good[0])
    readings = kafka_readers(contract.TOPIC_READINGS, f"^({'|'.join([*good, burst.device])})$")
    letters = kafka_readers(contract.TOPIC_DLQ, f"^sensors/{re.escape(place)}/")
    client_id = unique("gw")
    gateway = gateways(client_id=client_id)

    hostile = burst.build()
    good_readings = [make_reading(place, d, seq, boot=3) for seq in range(150) for d in good]
    for i, (topic, raw, _outcome, opts) in enumerate(hostile):
        if opts.get("retain"):
            retained(topic, raw)
        else:
            publisher.publish_raw(topic, raw, qos=opts.get("qos", 1), properties=opts.get("properties"))
        publisher.publish_readings(good_readings[i * 2 : i * 2 + 2])
    publisher.publish_readings(good_readings[len(hostile) * 2 :])
    # Beyond the broker's max_packet_size (64 KiB): it refuses the message and drops that publisher;
    # the gateway never sees it.
    big = Publisher()
    big._client.publish(burst.topic, b"x" * 10_000_000, qos=1)
    wait_for(lambda: not big._client.is_connected(), 10, "the broker refusing 10 MB")
    big.close()

    want = {outcome: sum(1 for m in hostile if m[2] == outcome) for outcome in ("reading", "dlq", "ignored")}
    expected = {(d, 3, s) for d in good for s in range(150)}
    hostile_ids = {(burst.device, 9, json.loads(m[1])["seq"]) for m in hostile if m[2] == "reading"}
    records = readings.wait_until(
        lambda rs: len(distinct_ids(rs)) == len(expected) + want["reading"], 60, "every valid reading"
    )
    letters.wait_until(lambda rs: len(rs) >= want["dlq"], 60, f"{want['dlq']} dead letters")
    wait_for(lambda: gateway.metric("iot_gateway_in_flight") == 0.0, 30, "nothing left in flight")
    wait_for(lambda: board.covered(3) == set(range(150)), 30, "end-to-end acks for the good board")

    assert distinct_ids(records) == expected | hostile_ids
    assert len(records) == len(expected) + want["reading"], "a reading was bridged twice"
    assert len(letters.drain()) == want["dlq"]
    reasons = {r.value["reason"] for r in letters.records}
    assert reasons <= set(contract.DLQ_REASONS) - {contract.REASON_UNPROCESSABLE}, reasons
    m = gateway.metrics()
    assert sum(v for k, v in m.items() if k.startswith("iot_gateway_ignored_total{")) == want["ignored"]
    assert not any(k.startswith("iot_gateway_callback_errors_total{") and v for k, v in m.items())
    assert m["iot_gateway_mqtt_properties_dropped_total"] == 4.0
    qos0 = sum(1 for msg in hostile if msg[3].get("qos") == 0)
    assert m["iot_gateway_acked_total"] == m["iot_gateway_received_total"] - qos0
    assert "mqtt_disconnected" not in gateway.log()

    # A restart gets the retained health and reading again: both ignored, nothing bridged twice.
    assert gateway.terminate() == 0
    again = gateways(client_id=client_id)
    wait_for(lambda: again.metric(ignored("reading", "retained")) == 1.0, 15, "the stored copy ignored")
    publisher.publish_readings([make_reading(place, good[0], 150, boot=3)])
    readings.wait_until(lambda rs: (good[0], 3, 150) in distinct_ids(rs), 30, "a reading after the restart")
    assert len(readings.records) == len(expected) + want["reading"] + 1
    board.close()
