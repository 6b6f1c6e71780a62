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
from paho.mqtt.reasoncodes import ReasonCode

from iot import contract
from iot.app.stack.config import StackConfig
from iot.broker import credentials
from tests.accounts import log_in
from tests.support import wait_for

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
    # Five levels under sensors/ (the operator may write there): no gateway's subscription matches.
    topic = f"sensors/stack-test/{uuid.uuid4().hex}/x/y"
    received: list[bytes] = []
    done = threading.Event()
    sub = log_in(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5))

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        received.append(msg.payload)
        done.set()

    sub.on_message = on_message
    sub.connect(CFG.host, CFG.mqtt_port)
    sub.loop_start()
    try:
        sub.subscribe(topic, qos=1)[1]
        pub = log_in(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5))
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


def test_mosquitto_refuses_anonymous_clients_and_keeps_its_credentials_to_its_owner() -> None:
    """The native broker logs in every client (docs/STACK.md, "Accounts"); the passwords `iot stack up`
    made are in a file only its owner may read, and in none of the stack's logs."""
    path = credentials.stack_file()
    assert path.stat().st_mode & 0o077 == 0
    stored = credentials.read_stack_file(path)
    assert set(stored) >= {credentials.OPERATOR, credentials.GATEWAY}
    anonymous = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    answer: list[ReasonCode] = []
    anonymous.on_connect = lambda c, _u, _f, rc, _p: (answer.append(rc), c.disconnect())
    anonymous.connect(CFG.host, CFG.mqtt_port)
    anonymous.loop_start()
    try:
        wait_for(lambda: answer, 5, "CONNACK")
    finally:
        anonymous.loop_stop()
    assert answer[0].is_failure, "the native broker let an anonymous client in"
    logs = "".join(p.read_text(errors="replace") for p in CFG.state_dir.glob("*/log"))
    for login in stored.values():
        assert login.password not in logs


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
