"""The whole chain on the real native stack: virtual boards → Mosquitto → gateway → Kafka → backend →
MongoDB, scraped by Prometheus. The pipeline runs once per module; tests read what it produced."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import pymongo
import pytest
from confluent_kafka import Consumer, TopicPartition

from hil.fleet import BoardPlan, Broker, Fleet, environment
from hil.probe import Probe
from iot import contract, readings_store
from iot.app.stack.config import StackConfig
from iot.harness.children import Children
from iot.harness.kafka import commit_end_offsets
from iot.harness.mqtt import MqttLogin
from iot.harness.ports import free_port
from tests.support import wait_for

CFG = StackConfig.from_env()
BROKER = MqttLogin.from_env()
# The native Prometheus scrapes these two ports (iot/app/stack/services/prometheus.py): the e2e services
# use them.
# The default ports on purpose: the shared native Prometheus scrapes exactly these, and the live
# dashboard test evaluates the panels' queries on what it scraped.
TUMBLING_S, HOPPING_S, STEP_S, GRACE_S = 4, 8, 4, 2
BOARDS_PER_PLACE = 2
READINGS_PER_BOARD = 16
INTERVAL_S = 0.5


@dataclass
class Run:
    """What one end-to-end run did and saw."""

    tag: str
    places: dict[str, str]  # place id -> scripted environment
    devices: list[str]
    db: Any
    probe: Probe
    children: Children
    injected_bad_topic: str = ""
    late_id: str = ""
    dlq: list[dict[str, Any]] = field(default_factory=list)

    def readings(self) -> list[dict[str, Any]]:
        """Every reading the broker delivered for our boards (the test's own record, not the backend's).
        A board measures before its first NTP sync (Wi-Fi associates after boot): such a reading
        (time_valid false, the RTC's 2000) is windowed at the gateway's receive time, which only the
        stored reading knows; its time is taken from there, its values from the record."""
        out = []
        for msg in self.probe.messages("reading"):
            try:
                payload = json.loads(msg.payload)
            except ValueError:
                continue
            if isinstance(payload, dict) and payload.get("device") in self.devices:
                if payload.get("time_valid") is False:
                    rid = contract.reading_id(payload["device"], payload["boot"], payload["seq"])
                    stored = readings_store.find(readings_store.collection(self.db), [rid]).get(rid)
                    if stored is None:
                        continue  # not stored yet: the windows' wait asks again
                    payload["ts"] = int(stored["ts"].replace(tzinfo=UTC).timestamp() * 1000)
                out.append(payload)
        return out


def _plans(tag: str, places: dict[str, str]) -> list[BoardPlan]:
    plans = []
    for p_index, (place, env_name) in enumerate(places.items()):
        for n in range(BOARDS_PER_PLACE):
            device = f"{tag}-{env_name}-{n}"
            config = {
                "device": device,
                "place": place,
                "broker": CFG.mqtt_url,
                "interval_s": INTERVAL_S,
                "health_every_s": 5,
            }
            spec = {"env": environment(env_name), "time_sync": True, "seed": 10 * p_index + n + 1}
            plans.append(BoardPlan(device, place, config, spec))
    return plans


def _dlq_start() -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": CFG.kafka_bootstrap, "group.id": "e2e-dlq-offsets"})
    try:
        meta = consumer.list_topics(contract.TOPIC_DLQ, timeout=10).topics[contract.TOPIC_DLQ]
        return {
            p: consumer.get_watermark_offsets(TopicPartition(contract.TOPIC_DLQ, p), timeout=10)[1]
            for p in meta.partitions
        }
    finally:
        consumer.close()


def read_dlq(start: dict[int, int], keep: Any, want: int, timeout: float) -> list[dict[str, Any]]:
    consumer = Consumer(
        {
            "bootstrap.servers": CFG.kafka_bootstrap,
            "group.id": f"e2e-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(contract.TOPIC_DLQ, p, o) for p, o in start.items()])
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(found) < want:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            record = json.loads(msg.value())
            if keep(record):
                found.append(record)
    finally:
        consumer.close()
    return found


@pytest.fixture(scope="package")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tag = f"e2e{uuid.uuid4().hex[:6]}"
    tmp = tmp_path_factory.mktemp(tag)
    places = {f"{tag}-kitchen": "kitchen", f"{tag}-garage": "garage"}
    plans = _plans(tag, places)
    devices = [p.device for p in plans]
    db_name = tag
    env = {
        "IOT_MQTT_URL": CFG.mqtt_url,
        "IOT_KAFKA_BOOTSTRAP": CFG.kafka_bootstrap,
        "IOT_MONGO_URI": f"mongodb://{CFG.host}:{CFG.mongo_port}/{db_name}",
        "IOT_WINDOW_TUMBLING_S": str(TUMBLING_S),
        "IOT_WINDOW_HOPPING_S": str(HOPPING_S),
        "IOT_WINDOW_HOP_STEP_S": str(STEP_S),
        "IOT_WINDOW_GRACE_S": str(GRACE_S),
        "IOT_GATEWAY_GROUP": tag,
        "IOT_BACKEND_APP_ID": tag,
        "IOT_BACKEND_IDLE_TIMEOUT_S": "3",
        "IOT_BACKEND_DATA_DIR": str(tmp / "backend"),
    }
    children = Children(tmp / "logs")
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(CFG.host, CFG.mongo_port, tz_aware=True)
    dlq_start = _dlq_start()
    probe = Probe(
        CFG.mqtt_url,
        [contract.READING_SUBSCRIPTION, contract.STATUS_SUBSCRIPTION],
        keep=lambda topic: topic.split("/")[2] in devices,
    )
    fleet = Fleet(tmp / "boards", plans, provisioning=Broker.from_env().provisioning())
    try:
        # One gateway per place, each subscribed to its place only: the shared broker carries other
        # runs' traffic, which this run must neither bridge nor wait behind. Prometheus scrapes the first.
        for n, (place, port) in enumerate(
            zip(places, (contract.GATEWAY_METRICS_PORT, free_port()), strict=True)
        ):
            gateway_env = {
                **env,
                "IOT_GATEWAY_CLIENT_ID": f"{tag}-gw{n}",
                "IOT_GATEWAY_TOPIC_FILTER": contract.reading_topic(place, "+"),
            }
            children.start_gateway(f"gateway{n}", gateway_env, port)
        commit_end_offsets(CFG.kafka_bootstrap, tag, contract.TOPIC_READINGS)
        children.start_backend("backend", env, contract.BACKEND_METRICS_PORT)
        probe.start()
        fleet.prepare(fresh=True)
        fleet.start()
        run = Run(tag, places, devices, client[db_name], probe, children)

        # A QoS 1 redelivery, as a broker or a board retransmitting after a lost PUBACK would cause.
        first = wait_for(
            lambda: probe.messages("reading", device=devices[0])[:2], 30, "two readings of board 0"
        )
        BROKER.publish(first[-1].topic, first[-1].payload)
        # Bad input on the way: the gateway must dead-letter it and carry on.
        run.injected_bad_topic = contract.reading_topic(plans[1].place, devices[1])
        BROKER.publish(run.injected_bad_topic, b'{"v": 1, "device": "truncated')

        wait_for(
            lambda: all(len(probe.messages("reading", device=d)) >= READINGS_PER_BOARD for d in devices),
            90,
            f"{READINGS_PER_BOARD} readings from every board",
        )
        fleet.stop()

        # A reading for a window long final must be refused as late, not added.
        # Readings measured before the board's first NTP sync (Wi-Fi associates after boot) carry the
        # RTC's 2000 and are windowed at the gateway's receive time: the board's first window is its
        # first synced reading's.
        synced = [json.loads(m.payload) for m in probe.messages("reading", device=devices[0])]
        oldest = min(r["ts"] for r in synced if r["time_valid"])
        first_start = oldest - oldest % (TUMBLING_S * 1000)
        first_id = contract.window_id(devices[0], "tumbling", TUMBLING_S, first_start)
        wait_for(
            lambda: (run.db[contract.COLL_SENSOR_WINDOWS].find_one({"_id": first_id}) or {}).get("final"),
            60,
            f"window {first_id} to become final",
        )
        # Two days before the board's first window: its windows are final and it lies further behind
        # the watermark than the allowed lateness (IOT_WINDOW_ALLOWED_LATENESS_S, a day): late, not
        # an amendment. (Amendments: tests/e2e/test_time_truth.py.)
        late = {**json.loads(first[0].payload), "seq": 1_000_000, "ts": first_start - 2 * 86_400_000}
        late["time_valid"] = True  # a claim of the board's, to be judged late
        run.late_id = contract.reading_id(devices[0], late["boot"], late["seq"])
        BROKER.publish(first[0].topic, json.dumps(late).encode())
        run.dlq = read_dlq(
            dlq_start,
            lambda r: r.get("topic") in {run.injected_bad_topic, first[0].topic},
            want=2,
            timeout=60,
        )
        yield run
    finally:
        fleet.stop()
        fleet.remove_accounts()
        probe.stop()
        children.stop_all()
        for n in range(len(places)):
            BROKER.forget_session(f"{tag}-gw{n}")
        client.drop_database(db_name)
        client.close()
