"""Gateway settings: one frozen object built once from the environment, validated at start.

The variables and their defaults are declared once (`VARIABLES`: the shared MQTT and Kafka groups plus
the gateway's own), which `iot gateway --help` lists. Every problem raises SettingsError naming the
variable. Secrets are held as `Secret`, whose repr and str never show the value, so a settings object
can be logged whole.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Final

from iot import contract
from iot import kafka as kafka_conn
from iot import mqtt as mqtt_conn
from iot.broker import credentials
from iot.env import CONTRACT, LOG, Secret, Var, Variables
from iot.kafka import KafkaConnection

from .errors import SettingsError

__all__ = ["VARIABLES", "GatewaySettings", "Secret"]

_COMPRESSIONS: Final = ("none", "gzip", "snappy", "lz4", "zstd")
# MQTT v5 Receive Maximum is a two-byte integer.
_MAX_RECEIVE_MAXIMUM: Final = 65535
_GROUP_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

VARIABLES: Final = Variables(
    mqtt_conn.VARIABLES,
    kafka_conn.VARIABLES,
    Var(
        "IOT_GATEWAY_GROUP",
        "iot-gateway",
        "shared-subscription group: gateways of one group share the readings",
    ),
    Var(
        "IOT_GATEWAY_CLIENT_ID",
        None,
        "MQTT client id, stable per instance: the broker keeps this gateway's session under it",
        shown="iot-gateway-<hostname>",
    ),
    Var(
        "IOT_GATEWAY_TOPIC_FILTER",
        contract.READING_SUBSCRIPTION,
        "the readings it bridges: a filter under sensors/",
    ),
    Var(
        "IOT_GATEWAY_SESSION_EXPIRY_S",
        "86400",
        "how long the broker keeps the session while the gateway is away",
    ),
    Var(
        "IOT_GATEWAY_MAX_IN_FLIGHT",
        "2000",
        "readings taken and not yet confirmed by Kafka (MQTT Receive Maximum): the backpressure bound",
    ),
    Var("IOT_GATEWAY_METRICS_HOST", "127.0.0.1", "address of the Prometheus endpoint"),
    Var("IOT_GATEWAY_METRICS_PORT", str(contract.GATEWAY_METRICS_PORT), "port of /metrics; 0: none"),
    # 25 rather than 5: at a fleet's pace (1,000 readings/s a gateway) every produce batch costs a
    # request, a delivery wake-up of the main loop, a batch of PUBACKs and a wake-up of paho's
    # thread; 5x fewer of them cut the gateway's CPU per reading by ~17 % (bench/gateway_cpu.py), for
    # 20 ms more latency on readings whose windows are a minute long.
    Var("IOT_GATEWAY_KAFKA_LINGER_MS", "25", "how long the producer gathers a batch, ms"),
    Var("IOT_GATEWAY_KAFKA_COMPRESSION", "lz4", ", ".join(_COMPRESSIONS)),
    Var(
        "IOT_GATEWAY_DRAIN_TIMEOUT_S",
        "15",
        "at SIGTERM, how long to wait for Kafka to confirm what is in flight",
    ),
    Var(
        "IOT_GATEWAY_E2E_ACK", "true", "tell boards which readings Kafka holds (sensors/{place}/{device}/ack)"
    ),
    Var(
        "IOT_GATEWAY_REGISTRY",
        "true",
        "keep the device registry in MongoDB current from the boards' status and health",
    ),
    CONTRACT.pick("IOT_MONGO_URI", "IOT_MAX_CLOCK_AHEAD_S"),
    LOG,
)


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    mqtt_host: str
    mqtt_port: int
    mqtt_tls: bool
    mqtt_tls_ca: str | None
    mqtt_tls_cert: str | None
    mqtt_tls_key: str | None
    mqtt_username: str | None
    mqtt_password: Secret | None
    # Where the login came from: IOT_MQTT_USERNAME, the native stack's credentials file, or "none".
    mqtt_login: str
    group: str
    topic_filter: str
    client_id: str
    session_expiry_s: int
    max_in_flight: int
    metrics_host: str
    metrics_port: int
    kafka: KafkaConnection
    kafka_linger_ms: int
    kafka_compression: str
    drain_timeout_s: float
    e2e_ack: bool
    max_clock_ahead_s: int
    # The device registry the gateway keeps current from status and health (gateway/registry.py).
    registry: bool
    mongo_uri: str

    @property
    def subscription(self) -> str:
        return f"$share/{self.group}/{self.topic_filter}"

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka.bootstrap

    def kafka_config(self) -> dict[str, str | int | bool]:
        """The confluent-kafka producer configuration, secrets revealed (never log the result)."""
        config: dict[str, str | int | bool] = {
            **self.kafka.librdkafka(),
            "client.id": self.client_id,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": self.kafka_compression,
            "linger.ms": self.kafka_linger_ms,
            # 0 = never give up on a reading: while Kafka is away readings wait in the producer and,
            # beyond the in-flight bound, in the MQTT broker; a timeout would only force a re-send.
            "message.timeout.ms": 0,
            # Far above the in-flight bound (which the gateway holds itself, bridge.may_take), so
            # produce() does not raise BufferError; if it ever does, the record is retried.
            "queue.buffering.max.messages": max(100_000, 4 * self.max_in_flight),
        }
        return config

    def describe(self) -> dict[str, object]:
        """Every setting for the start-up log; secrets stay masked."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, KafkaConnection):
                value = value.describe()
            if f.name == "mongo_uri":
                value = re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", value)
            out[f.name] = "***" if isinstance(value, Secret) else value
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        reader = VARIABLES.reader(env, SettingsError)
        mqtt = mqtt_conn.MqttConnection.read(reader)
        username, password = mqtt.username, mqtt.password
        login = "IOT_MQTT_USERNAME" if username is not None else "none"
        if username is None:
            # The native stack's gateway account (`iot stack up` writes it), so `iot gateway` logs in
            # to that broker without any variable.
            stored = credentials.read_stack_file(credentials.stack_file(env)).get(credentials.GATEWAY)
            if stored is not None:
                username, password, login = stored.username, Secret(stored.password), stored.source
        group = reader.text("IOT_GATEWAY_GROUP")
        if not _GROUP_PATTERN.match(group):
            raise SettingsError("IOT_GATEWAY_GROUP", f"{group!r} must match {_GROUP_PATTERN.pattern}")
        topic_filter = reader.mqtt_filter("IOT_GATEWAY_TOPIC_FILTER")
        if not topic_filter.startswith("sensors/"):
            raise SettingsError(
                "IOT_GATEWAY_TOPIC_FILTER", f"{topic_filter!r} must be a filter under sensors/"
            )
        client_id = reader.text("IOT_GATEWAY_CLIENT_ID", _default_client_id())
        if len(client_id.encode("utf-8")) > 128:
            raise SettingsError("IOT_GATEWAY_CLIENT_ID", "at most 128 bytes")
        return cls(
            mqtt_host=mqtt.endpoint.host,
            mqtt_port=mqtt.endpoint.port,
            mqtt_tls=mqtt.tls,
            mqtt_tls_ca=mqtt.tls_ca,
            mqtt_tls_cert=mqtt.tls_cert,
            mqtt_tls_key=mqtt.tls_key,
            mqtt_username=username,
            mqtt_password=password,
            mqtt_login=login,
            group=group,
            topic_filter=topic_filter,
            client_id=client_id,
            session_expiry_s=reader.integer("IOT_GATEWAY_SESSION_EXPIRY_S", None, 0, 2**32 - 1),
            max_in_flight=reader.integer("IOT_GATEWAY_MAX_IN_FLIGHT", None, 1, _MAX_RECEIVE_MAXIMUM),
            metrics_host=reader.listen_host("IOT_GATEWAY_METRICS_HOST"),
            metrics_port=reader.port("IOT_GATEWAY_METRICS_PORT"),
            kafka=KafkaConnection.read(reader),
            kafka_linger_ms=reader.integer("IOT_GATEWAY_KAFKA_LINGER_MS", None, 0, 10_000),
            kafka_compression=reader.choice("IOT_GATEWAY_KAFKA_COMPRESSION", _COMPRESSIONS),
            drain_timeout_s=float(reader.integer("IOT_GATEWAY_DRAIN_TIMEOUT_S", None, 0, 3600)),
            e2e_ack=reader.boolean("IOT_GATEWAY_E2E_ACK"),
            max_clock_ahead_s=reader.integer("IOT_MAX_CLOCK_AHEAD_S", None, 0, 2**31 - 1),
            registry=reader.boolean("IOT_GATEWAY_REGISTRY"),
            mongo_uri=reader.mongo_uri("IOT_MONGO_URI"),
        )


def _default_client_id() -> str:
    # Stable across restarts on one host, so the broker resumes this gateway's persistent session.
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:48] or "host"
    return f"iot-gateway-{host}"
