"""Helpers for gateway tests on the real stack: spawn `iot gateway` processes, publish readings over
MQTT, and read back what reached Kafka — only records of this test's own ids.

Isolation from other engineers' concurrent tests: every gateway gets a unique client id, shared
subscription group and a topic filter on a unique place, so it never bridges anyone else's readings;
its persistent session is discarded at teardown so the broker does not keep queuing for it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition
from paho.mqtt.properties import Properties

from gateway.kafka_sink import GATEWAY_HEADER
from iot import contract
from iot.harness.broker import PrivateBroker
from iot.harness.mqtt import MqttLogin
from iot.harness.payloads import reading
from iot.harness.ports import free_port
from iot.harness.stack import PrivateStack
from iot.harness.stack import private_kafka as kafka_of_its_own
from tests.services import ServiceProcess
from tests.support import failed, unique, wait_for

SHARED = MqttLogin.from_env()  # the native stack's broker, as the environment reaches it
KAFKA = contract.ENV_DEFAULTS["IOT_KAFKA_BOOTSTRAP"]


def make_reading(place: str, device: str, seq: int, boot: int = 0, **over: Any) -> dict[str, Any]:
    return reading(place, device, seq, boot=boot, **over)


# --- gateway processes --------------------------------------------------------------------------


class GatewayProcess(ServiceProcess):
    """One `iot gateway`; ready once it reports its MQTT connection up."""

    command = "gateway"
    port_variable = "IOT_GATEWAY_METRICS_PORT"

    @property
    def client_id(self) -> str:
        return self.env["IOT_GATEWAY_CLIENT_ID"]

    def start(self, timeout: float = 30.0, wait_ready: bool = True) -> GatewayProcess:
        super().start()
        if wait_ready:
            self.wait_ready(
                lambda: self.metric("iot_gateway_mqtt_connected") == 1.0,
                timeout,
                f"gateway {self.client_id} to report iot_gateway_mqtt_connected 1",
            )
        return self


@dataclass
class GatewayFactory:
    tmp: Path
    place: str = field(default_factory=lambda: unique("gwp"))
    group: str = field(default_factory=lambda: unique("gwg"))
    made: list[GatewayProcess] = field(default_factory=list)

    def __call__(self, client_id: str | None = None, start: bool = True, **env: str) -> GatewayProcess:
        client_id = client_id or unique("gw")
        full = {
            **os.environ,
            "IOT_MQTT_URL": SHARED.url,
            "IOT_KAFKA_BOOTSTRAP": KAFKA,
            "IOT_GATEWAY_CLIENT_ID": client_id,
            "IOT_GATEWAY_GROUP": self.group,
            "IOT_GATEWAY_TOPIC_FILTER": f"sensors/{self.place}/+/reading",
            "IOT_GATEWAY_METRICS_PORT": str(free_port()),
            "IOT_GATEWAY_SESSION_EXPIRY_S": "600",
            **env,
        }
        gateway = GatewayProcess(full, self.tmp / f"{client_id}.log")
        self.made.append(gateway)
        return gateway.start() if start else gateway

    def client_ids(self) -> set[str]:
        return {g.client_id for g in self.made}

    def close(self) -> None:
        for gateway in self.made:
            gateway.kill()
        # Only the shared broker keeps a session after the test: a private one dies with its test
        # (and may need TLS or a login the shared one does not).
        for client_id in {g.client_id for g in self.made if g.env["IOT_MQTT_URL"] == SHARED.url}:
            SHARED.forget_session(client_id)


@pytest.fixture
def gateways(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[GatewayFactory]:
    factory = GatewayFactory(tmp_path)
    yield factory
    if failed(request):
        for gateway in factory.made:
            sys.stderr.write(f"\n--- log of {gateway.client_id} ---\n{gateway.log()[-5000:]}\n")
    factory.close()


# --- MQTT publisher -----------------------------------------------------------------------------


class Publisher:
    """A device-side MQTT v5 client publishing QoS 1; `publish_*` return once the broker acked."""

    def __init__(self, broker: MqttLogin = SHARED) -> None:
        self._client = broker.client(unique("pub"), max_inflight=500)

    def publish_raw(
        self,
        topic: str,
        payload: bytes,
        timeout: float = 30.0,
        retain: bool = False,
        qos: int = 1,
        properties: Properties | None = None,
    ) -> None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(timeout)
        assert info.is_published(), f"broker did not acknowledge a publish to {topic[:80]!r} in {timeout}s"

    def publish_readings(self, readings: Iterable[dict[str, Any]], timeout: float = 60.0) -> int:
        infos = []
        for r in readings:
            topic = contract.reading_topic(r["place"], r["device"])
            infos.append(self._client.publish(topic, json.dumps(r), qos=1))
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert info.is_published(), "broker did not acknowledge a publish in time"
        return len(infos)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def publisher() -> Iterator[Publisher]:
    pub = Publisher()
    yield pub
    pub.close()


# --- a private Kafka, for tests that must stop it ------------------------------------------------


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[PrivateStack]:
    """A single-node Kafka of the test's own (free ports, own state dir) that it may stop and start."""
    with kafka_of_its_own(tmp_path / "stack") as stack:
        yield stack


# --- a private broker, for tests that must stop one -------------------------------------------


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.kill()


# --- Kafka reader -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    key: str
    value: dict[str, Any]
    partition: int
    offset: int


class KafkaReader:
    """Reads one topic from the offsets it had when created, keeping records whose key matches and
    that one of `via`'s gateways produced: other engineers' gateways on the shared stack subscribe to
    every reading topic and bridge this test's messages too."""

    def __init__(self, topic: str, key_pattern: str, via: GatewayFactory, bootstrap: str = KAFKA) -> None:
        self._key = re.compile(key_pattern)
        self._via = via
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": unique("gwtest"),
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        # A topic created a moment ago (a private Kafka's `up`) can be missing from the metadata for a
        # while: assigned then, the reader would read no partition at all and see nothing.
        numbers = wait_for(lambda: self._partitions(topic), 30, f"{topic}'s partitions in the metadata", 0.2)
        partitions = []
        for p in numbers:
            (high,) = wait_for(lambda p=p: self._high(topic, p), 30, f"a leader of {topic}[{p}]", 0.2)
            partitions.append(TopicPartition(topic, p, high if high >= 0 else OFFSET_END))
        self._consumer.assign(partitions)
        self.records: list[Record] = []

    def _partitions(self, topic: str) -> list[int] | None:
        meta = self._consumer.list_topics(topic, timeout=15).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return None
        return sorted(meta.partitions)

    def _high(self, topic: str, partition: int) -> tuple[int] | None:
        """The partition's end offset; None while it has no leader yet (a Kafka that just started
        answers NOT_LEADER_FOR_PARTITION for a moment after creating its topics)."""
        try:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.NOT_LEADER_FOR_PARTITION:
                raise
            return None
        return (int(high),)

    def drain(self, max_wait: float = 0.2) -> list[Record]:
        for message in self._consumer.consume(num_messages=5000, timeout=max_wait):
            if message.error() is not None:
                continue
            key = (message.key() or b"").decode()
            headers = dict(message.headers() or [])
            raw = headers.get(GATEWAY_HEADER) or b""
            bridged_by = raw.decode() if isinstance(raw, bytes) else raw
            if self._key.search(key) and bridged_by in self._via.client_ids():
                value = json.loads(message.value() or b"null")
                self.records.append(Record(key, value, message.partition() or 0, message.offset() or 0))
        return self.records

    def wait_until(
        self, condition: Callable[[list[Record]], bool], timeout: float, what: str
    ) -> list[Record]:
        wait_for(lambda: condition(self.drain()), timeout, what, interval=0.0)
        return self.records

    def close(self) -> None:
        self._consumer.close()


@pytest.fixture
def kafka_readers(gateways: GatewayFactory) -> Iterator[Callable[..., KafkaReader]]:
    made: list[KafkaReader] = []

    def make(topic: str, key_pattern: str, bootstrap: str = KAFKA) -> KafkaReader:
        reader = KafkaReader(topic, key_pattern, gateways, bootstrap)
        made.append(reader)
        return reader

    yield make
    for reader in made:
        reader.close()


def distinct_ids(records: Iterable[Record]) -> set[tuple[str, int, int]]:
    return {(r.value["device"], r.value["boot"], r.value["seq"]) for r in records}
