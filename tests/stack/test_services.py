"""The shared native stack (started by `make test`) answers real clients the way the product uses them."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.request
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pymongo
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from iot import contract
from iot.app.stack.config import StackConfig

pytestmark = pytest.mark.integration
IOT = str(Path(__file__).resolve().parents[2] / ".venv/bin/iot")
CFG = StackConfig.from_env()


def test_status_json_lists_five_healthy_services_and_the_tls_listener() -> None:
    out = subprocess.run([IOT, "stack", "status", "--json"], capture_output=True, text=True, check=False)
    rows = json.loads(out.stdout)
    assert out.returncode == 0, rows
    assert {r["name"] for r in rows} == {
        "mosquitto",
        "mosquitto-tls",
        "kafka",
        "ferretdb",
        "prometheus",
        "node-exporter",
    }
    for row in rows:
        assert row["healthy"] is True, row
        assert isinstance(row["pid"], int) and row["pid"] > 0
        assert isinstance(row["port"], int)


def test_mosquitto_delivers_a_qos1_message_to_a_subscriber() -> None:
    topic = f"test/stack/{uuid.uuid4().hex}"
    received: list[bytes] = []
    done = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        received.append(msg.payload)
        done.set()

    sub.on_message = on_message
    sub.connect(CFG.host, CFG.mqtt_port)
    sub.loop_start()
    try:
        sub.subscribe(topic, qos=1)[1]
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        pub.connect(CFG.host, CFG.mqtt_port)
        pub.loop_start()
        # Retained, so the order of SUBACK and PUBLISH cannot make the test miss the message.
        pub.publish(topic, b"hello", qos=1, retain=True).wait_for_publish(5)
        pub.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        assert done.wait(5), "the subscriber never received the message"
        assert received[0] == b"hello"
    finally:
        sub.disconnect()
        sub.loop_stop()


def test_kafka_has_the_contract_topics_and_round_trips_a_record() -> None:
    admin = AdminClient({"bootstrap.servers": CFG.kafka_bootstrap})
    topics = admin.list_topics(timeout=10).topics
    for name in (
        contract.TOPIC_READINGS,
        contract.TOPIC_DLQ,
        contract.TOPIC_WINDOWS_SENSOR,
        contract.TOPIC_WINDOWS_PLACE,
    ):
        assert name in topics
    key = uuid.uuid4().hex.encode()
    producer = Producer({"bootstrap.servers": CFG.kafka_bootstrap, "acks": "all"})
    producer.produce("iot.stack.test", b"value", key=key)
    assert producer.flush(10) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": CFG.kafka_bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe(["iot.stack.test"])
    try:
        found = False
        for _ in range(200):  # bounded: at most ~20 s of polling
            msg = consumer.poll(0.1)
            if msg is not None and not msg.error() and msg.key() == key:
                found = msg.value() == b"value"
                break
        assert found, "the produced record was not consumed back"
    finally:
        consumer.close()


def test_mongodb_wire_server_inserts_and_finds_documents() -> None:
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        CFG.mongo_uri, serverSelectionTimeoutMS=5000
    )
    db = client[f"test_stack_{uuid.uuid4().hex[:8]}"]
    try:
        assert client.admin.command("ping")["ok"] == 1.0
        db.things.insert_many([{"_id": i, "v": i * 1.5} for i in range(10)])
        assert db.things.count_documents({"v": {"$gte": 6.0}}) == 6
        db.things.update_one({"_id": 3}, {"$set": {"v": 99.0}}, upsert=True)
        assert db.things.find_one({"_id": 3}) == {"_id": 3, "v": 99.0}
    finally:
        client.drop_database(db.name)
        client.close()


def test_prometheus_is_ready_and_scrapes_node_exporter() -> None:
    base = f"http://{CFG.host}:{CFG.prometheus_port}"
    with urllib.request.urlopen(f"{base}/-/ready", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"{base}/api/v1/targets", timeout=5) as resp:
        targets = json.load(resp)["data"]["activeTargets"]
    jobs = {t["labels"]["job"] for t in targets}
    assert {"prometheus", "node", "gateway", "backend"} <= jobs
