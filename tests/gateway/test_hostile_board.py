"""A hostile board beside three good ones, on a broker with accounts and the product's ACL (issue #19).

The hostile board holds real credentials (its own account): it probes the ACL (the gateway's shared
group, the gateway's client id, `$SYS`, another board's topics) and, where the ACL lets it (its own
topics), publishes bad retained health, poison readings and a burst of garbage. The good boards
publish at QoS 1 and keep each reading until the gateway's end-to-end ack covers it, re-sending after
an ack timeout, as the firmware does. At the end every good reading is accounted for in Kafka:
published, in Kafka, missing, doubled (a copy in Kafka beyond the first; the protocol allows one
only for a reading its board re-sent). The same scenario through the backend into MongoDB, on the
anonymous native broker, is bench/soak.py's `hostile` fault (tests/soak/test_short_soak.py).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from iot import contract
from iot.broker import accounts
from iot.broker.credentials import Credentials, new_password
from iot.broker.dynsec import Dynsec
from iot.env import MqttEndpoint
from iot.harness.ports import HOST
from tests.gateway.conftest import GatewayFactory, KafkaReader, PrivateBroker, make_reading
from tests.gateway.test_hostile_input import feff_property
from tests.support import unique, wait_for

pytestmark = pytest.mark.integration

ACK_TIMEOUT_S = 10.0
READINGS_PER_BOARD = 60


def _connect(port: int, login: Credentials, client_id: str, v5: bool = True) -> tuple[mqtt.Client, bool]:
    """A client logged in as `login`; whether the broker accepted it."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    )
    client.username_pw_set(login.username, login.password)
    answered = threading.Event()
    accepted: list[bool] = []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        accepted.append(not reason.is_failure)
        answered.set()

    client.on_connect = on_connect
    client.connect(HOST, port)
    client.loop_start()
    assert answered.wait(10), f"no CONNACK for {client_id}"
    if not accepted[0]:
        client.loop_stop()
    return client, accepted[0]


class GoodBoard:
    """QoS 1, (device, boot, seq) ids, an outbox of every reading until an end-to-end ack covers it,
    re-sent once ACK_TIMEOUT_S passed without one; MQTT 3.1.1 like the firmware."""

    def __init__(self, port: int, place: str, device: str, login: Credentials) -> None:
        self.place, self.device = place, device
        self.boot = 1
        self.topic = contract.reading_topic(place, device)
        self.outbox: dict[int, tuple[bytes, float]] = {}
        self.published = 0
        self.resent: set[int] = set()
        self._lock = threading.Lock()
        self.client, ok = _connect(port, login, device, v5=False)
        assert ok, f"{device} could not log in"
        subscribed = threading.Event()
        self.client.on_message = self._on_ack
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.subscribe(contract.ack_topic(place, device), qos=contract.ACK_QOS)
        assert subscribed.wait(10)

    def _on_ack(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        boot, ranges = contract.decode_ack(bytes(message.payload))
        if boot != self.boot:
            return
        with self._lock:
            for first, last in ranges:
                for seq in range(first, last + 1):
                    self.outbox.pop(seq, None)

    def publish_next(self) -> None:
        seq = self.published
        payload = json.dumps(make_reading(self.place, self.device, seq, boot=self.boot)).encode()
        with self._lock:
            self.outbox[seq] = (payload, time.monotonic())
        self.published += 1
        self.client.publish(self.topic, payload, qos=1)

    def resend_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [(s, p) for s, (p, at) in self.outbox.items() if now - at > ACK_TIMEOUT_S]
            for seq, payload in due:
                self.outbox[seq] = (payload, now)
        for seq, payload in due:
            self.resent.add(seq)
            self.client.publish(self.topic, payload, qos=1)

    def settled(self) -> bool:
        self.resend_due()
        with self._lock:
            return not self.outbox

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Hostile:
    """A board's real account in the hands of someone who wants more than its lane."""

    def __init__(self, broker: PrivateBroker, place: str, device: str, login: Credentials) -> None:
        self.broker, self.place, self.device, self.login = broker, place, device, login
        self.client, ok = _connect(broker.port, login, device)
        assert ok
        self.suback: list[list[ReasonCode]] = []
        self.puback: dict[int, ReasonCode] = {}
        self.received: list[str] = []
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: self.suback.append(list(codes))
        self.client.on_publish = lambda _c, _u, mid, code, _p: self.puback.__setitem__(mid, code)
        self.client.on_message = lambda _c, _u, m: self.received.append(m.topic)

    def refused_subscription(self, topic: str) -> bool:
        before = len(self.suback)
        self.client.subscribe(topic, qos=1)
        wait_for(lambda: len(self.suback) > before, 10, f"SUBACK for {topic}")
        return all(code.is_failure for code in self.suback[before])

    def publish(self, topic: str, payload: bytes, **opts: object) -> ReasonCode:
        mid = self.client.publish(topic, payload, qos=1, **opts).mid  # type: ignore[arg-type]
        return wait_for(lambda: self.puback.get(mid), 10, f"PUBACK for {topic[:60]}")

    def probe_the_acl(self, gateway_client_id: str, other: GoodBoard) -> None:
        assert self.refused_subscription(f"$share/iot-gateway/{contract.READING_SUBSCRIPTION}")
        assert self.refused_subscription(f"$share/iot-gateway/sensors/{self.place}/{other.device}/reading")
        assert self.refused_subscription("$SYS/#")
        assert self.refused_subscription("#")
        assert self.refused_subscription(contract.ack_topic(self.place, other.device))
        _client, accepted = _connect(self.broker.port, self.login, gateway_client_id)
        assert not accepted, "a board connected with the gateway's client id"
        forged = json.dumps(make_reading(self.place, other.device, 10_000, boot=other.boot)).encode()
        for kind in ("reading", "status", "health"):
            topic = other.topic.replace("/reading", f"/{kind}")
            assert self.publish(topic, forged).is_failure, f"it published on {topic}"

    def poison(self, rng: random.Random) -> None:
        own = contract.reading_topic(self.place, self.device)
        health = contract.health_topic(self.place, self.device)
        assert not self.publish(health, b"[" * 3000, retain=True).is_failure
        self.publish(health, b'{"uptime_s": 1' + b"0" * 400 + b"}")
        self.publish(health, b'{"uptime_s": 3}', properties=feff_property())
        self.publish(contract.status_topic(self.place, self.device), rng.randbytes(40))
        good = make_reading(self.place, self.device, 0)
        for raw in (
            json.dumps({**good, "fw": "X"}).replace('"X"', '"\\ud800"').encode(),
            b"[" * 1000,
            json.dumps({**good, "device": self.device + "\n"}).encode(),
            json.dumps(good).replace('"seq": 0', '"seq": 1' + "0" * 30).encode(),
        ):
            self.publish(own, raw)
        self.publish(own, json.dumps(good).encode(), properties=feff_property())

    def burst(self, rng: random.Random, count: int) -> None:
        own = contract.reading_topic(self.place, self.device)
        mids = [self.client.publish(own, rng.randbytes(rng.randrange(1500)), qos=1).mid for _ in range(count)]
        wait_for(lambda: all(m in self.puback for m in mids), 30, "the burst acknowledged")

    def close(self) -> None:
        self.client.publish(contract.health_topic(self.place, self.device), b"", qos=1, retain=True)
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def accounts_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path / "mosquitto", accounts=True)
    broker.start()
    yield broker
    broker.kill()


def provision(broker: PrivateBroker, place: str, devices: list[str]) -> dict[str, Credentials]:
    logins = {d: Credentials(d, new_password()) for d in devices}
    with Dynsec(MqttEndpoint(HOST, broker.port, False), broker.operator) as dynsec:
        for device, login in logins.items():
            accounts.create_device(dynsec, place, device, login.password)
    return logins


def test_a_hostile_board_costs_the_good_boards_nothing(
    gateways: GatewayFactory,
    accounts_broker: PrivateBroker,
    kafka_readers: Callable[..., KafkaReader],
) -> None:
    place = gateways.place
    good_ids = [unique("good") for _ in range(3)]
    bad_id = unique("bad")
    logins = provision(accounts_broker, place, [*good_ids, bad_id])
    readings = kafka_readers(contract.TOPIC_READINGS, f"^({'|'.join(good_ids)})$")
    gateway = gateways(
        IOT_MQTT_URL=accounts_broker.url,
        IOT_GATEWAY_GROUP="iot-gateway",
        **accounts_broker.gateway.as_env("gateway"),
    )
    boards = [GoodBoard(accounts_broker.port, place, d, logins[d]) for d in good_ids]
    hostile = Hostile(accounts_broker, place, bad_id, logins[bad_id])
    rng = random.Random(19)
    try:
        for step in range(READINGS_PER_BOARD):
            for board in boards:
                board.publish_next()
            if step == 5:
                hostile.probe_the_acl(gateway.client_id, boards[0])
            elif step == 10:
                hostile.poison(rng)
            elif step % 10 == 0:
                hostile.burst(rng, 200)
            time.sleep(0.02)  # a board's pace, not synchronisation: the loop is the load
        wait_for(lambda: all(b.settled() for b in boards), 90, "every good board's outbox acked empty")
        expected = {(b.device, b.boot, s) for b in boards for s in range(b.published)}
        records = readings.wait_until(
            lambda rs: {(r.value["device"], r.value["boot"], r.value["seq"]) for r in rs} >= expected,
            30,
            "every good reading in Kafka",
        )
    finally:
        for board in boards:
            board.close()
        hostile.close()

    copies: dict[tuple[str, int, int], int] = {}
    for r in records:
        key = (r.value["device"], r.value["boot"], r.value["seq"])
        copies[key] = copies.get(key, 0) + 1
    published = sum(b.published for b in boards)
    resent = {(b.device, b.boot, s) for b in boards for s in b.resent}
    doubled = {k for k, n in copies.items() if n > 1}
    missing = expected - set(copies)
    print(
        f"\ngood boards: published {published}, in Kafka {len(copies)}, missing {len(missing)}, "
        f"doubled {len(doubled)} (re-sent by their board {len(resent)})"
    )
    assert not missing
    assert set(copies) == expected, "a forged reading reached Kafka"
    assert doubled <= resent, f"copies the boards never re-sent: {sorted(doubled - resent)[:5]}"
    assert hostile.received == [], "the hostile board read something"
    m = gateway.metrics()
    assert m["iot_gateway_mqtt_connected"] == 1.0
    assert not any(k.startswith("iot_gateway_callback_errors_total{") and v for k, v in m.items())
    assert m['iot_gateway_ignored_total{kind="health",reason="malformed_json"}'] == 1.0
    assert "mqtt_disconnected" not in gateway.log() and "session_taken_over" not in gateway.log()
