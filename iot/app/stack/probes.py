"""Health probes that use each service the way the product does: a real client round trip."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import urllib.request
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pymongo
from confluent_kafka import Consumer, Producer, TopicPartition

from iot.broker.credentials import Credentials
from iot.broker.dynsec import CONTROL_TOPIC, RESPONSE_TOPIC
from iot.errors import IotError
from iot.kafka import KafkaAuthError, KafkaConnection
from iot.topics import TopicAdmin, TopicError, TopicSpec

PROBE_TOPIC = "iot.stack.probe"


class ProbeFailed(IotError):
    """The service answered, but not correctly, or did not answer in time."""


def tcp_open(host: str, port: int, timeout: float = 1.0) -> None:
    """The cheap first check: something accepts connections on the port."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ProbeFailed(f"nothing accepts connections on {host}:{port} ({exc.strerror or exc})") from exc


def mqtt_round_trip(
    host: str, port: int, timeout: float = 5.0, tls_ca: Path | None = None, login: Credentials | None = None
) -> None:
    """Subscribe, publish QoS 1, and receive the answer back through the broker. With `tls_ca`, over
    TLS: the handshake must verify the broker's certificate against that CA and host name.

    With `login` (a broker with accounts: the operator's), the message is a command to the
    dynamic-security plugin that changes nothing, and the answer is the plugin's: the login, the
    plugin and a publish -> subscribe round trip in one. Without, an anonymous client's own message."""
    got = threading.Event()
    subscribed = threading.Event()
    refused: list[str] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if login is None:
        topic, reply_topic = (f"iot/stack/probe/{uuid.uuid4().hex}",) * 2
        token = uuid.uuid4().bytes
        message = token
        client.on_message = lambda _c, _u, msg: got.set() if msg.payload == token else None
    else:
        topic, reply_topic = CONTROL_TOPIC, RESPONSE_TOPIC
        tag = uuid.uuid4().hex
        message = json.dumps(
            {"commands": [{"command": "getDefaultACLAccess", "correlationData": tag}]}
        ).encode()
        client.on_message = lambda _c, _u, msg: got.set() if tag.encode() in msg.payload else None
        client.username_pw_set(login.username, login.password)

    def on_connect(c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            refused.append(str(reason))
            c.disconnect()
            subscribed.set()

    client.on_connect = on_connect
    client.on_subscribe = lambda *_a: subscribed.set()
    if tls_ca is not None:
        if not tls_ca.is_file():
            raise ProbeFailed(f"no CA file {tls_ca}")
        try:
            client.tls_set_context(ssl.create_default_context(cafile=str(tls_ca)))
        except (OSError, ssl.SSLError) as exc:
            raise ProbeFailed(f"CA file {tls_ca}: {exc}") from exc
    try:
        client.connect(host, port, keepalive=10)
    except (OSError, ssl.SSLError) as exc:
        raise ProbeFailed(f"connect {'mqtts' if tls_ca else 'mqtt'}://{host}:{port}: {exc}") from exc
    client.loop_start()
    try:
        client.subscribe(reply_topic, qos=1)
        if not subscribed.wait(timeout):
            raise ProbeFailed("no SUBACK")
        if refused:
            who = f"as {login.username!r} ({login.source})" if login else "without credentials"
            raise ProbeFailed(f"the broker refused the login {who}: {refused[0]}")
        client.publish(topic, message, qos=1)
        if not got.wait(timeout):
            raise ProbeFailed(
                "published message did not come back"
                + (" (no answer from the dynamic-security plugin)" if login else "")
            )
    finally:
        client.disconnect()
        client.loop_stop()


def kafka_round_trip(conn: KafkaConnection, timeout: float = 10.0) -> None:
    """Create the probe topic, produce one record with acks=all, and consume exactly that record,
    over `conn` (the plain listener, or the SASL_SSL one with its user)."""
    try:
        TopicAdmin(conn, timeout).ensure([TopicSpec(PROBE_TOPIC, 1)])
    except TopicError as exc:
        raise ProbeFailed(str(exc)) from exc
    except KafkaAuthError as exc:
        raise ProbeFailed(f"{exc.field}: {exc.problem}") from exc
    # log_level 0: a broker still starting is an expected answer here, not something to print.
    common: dict[str, str | int | float] = {**conn.librdkafka(), "log_level": 0}
    token = uuid.uuid4().bytes
    offsets: list[int] = []

    def delivered(err: object, msg: object) -> None:
        if err is None:
            offsets.append(msg.offset())  # type: ignore[attr-defined]

    producer = Producer({**common, "acks": "all", "message.timeout.ms": int(timeout * 1000)})
    producer.produce(PROBE_TOPIC, token, on_delivery=delivered)
    producer.flush(timeout)
    if not offsets:
        raise ProbeFailed("produce was not acknowledged")
    consumer = Consumer({**common, "group.id": "iot-stack-probe", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(PROBE_TOPIC, 0, offsets[0])])
        msg = consumer.poll(timeout)
        if msg is None or msg.error() or msg.value() != token:
            raise ProbeFailed(f"consume did not return the produced record ({msg and msg.error()})")
    finally:
        consumer.close()


def mongo_round_trip(host: str, port: int, timeout: float = 5.0) -> None:
    """Ping, insert a document, find it, delete it."""
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        host,
        port,
        serverSelectionTimeoutMS=int(timeout * 1000),
        connectTimeoutMS=int(timeout * 1000),
        # A wedged server accepts connections but never answers: bound every reply too.
        socketTimeoutMS=int(timeout * 1000),
    )
    try:
        client.admin.command("ping")
        coll = client["iot_stack_probe"]["probe"]
        doc_id = uuid.uuid4().hex
        coll.insert_one({"_id": doc_id, "ok": True})
        if coll.find_one({"_id": doc_id}) is None:
            raise ProbeFailed("inserted document not found")
        coll.delete_one({"_id": doc_id})
    except pymongo.errors.PyMongoError as exc:
        raise ProbeFailed(str(exc).splitlines()[0]) from exc
    finally:
        client.close()


def http_ok(url: str, timeout: float = 3.0, expect: bytes | None = None) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read()
            if resp.status != 200:
                raise ProbeFailed(f"GET {url} -> {resp.status}")
    except OSError as exc:
        raise ProbeFailed(f"GET {url}: {exc}") from exc
    if expect is not None and expect not in body:
        raise ProbeFailed(f"GET {url}: body lacks {expect!r}")
