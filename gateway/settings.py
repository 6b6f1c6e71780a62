"""Gateway settings: one frozen object built once from the environment, validated at start.

Every problem raises SettingsError naming the variable. Secrets are held as `Secret`, whose repr and
str never show the value, so a settings object can be logged whole.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Final

from iot import contract
from iot.env import EnvReader

from .errors import SettingsError

__all__ = ["KAFKA_PASSTHROUGH", "GatewaySettings", "Secret"]

# Kafka client settings passed through verbatim (librdkafka names) for SASL/SSL deployments.
KAFKA_PASSTHROUGH: Final[Mapping[str, str]] = {
    "IOT_KAFKA_SECURITY_PROTOCOL": "security.protocol",
    "IOT_KAFKA_SASL_MECHANISM": "sasl.mechanism",
    "IOT_KAFKA_SASL_USERNAME": "sasl.username",
    "IOT_KAFKA_SASL_PASSWORD": "sasl.password",
    "IOT_KAFKA_SSL_CA_LOCATION": "ssl.ca.location",
    "IOT_KAFKA_SSL_CERTIFICATE_LOCATION": "ssl.certificate.location",
    "IOT_KAFKA_SSL_KEY_LOCATION": "ssl.key.location",
    "IOT_KAFKA_SSL_KEY_PASSWORD": "ssl.key.password",
}
_SECRET_PASSTHROUGH: Final = frozenset({"IOT_KAFKA_SASL_PASSWORD", "IOT_KAFKA_SSL_KEY_PASSWORD"})
_SECURITY_PROTOCOLS: Final = frozenset({"plaintext", "ssl", "sasl_plaintext", "sasl_ssl"})
_COMPRESSIONS: Final = frozenset({"none", "gzip", "snappy", "lz4", "zstd"})
# MQTT v5 Receive Maximum is a two-byte integer.
_MAX_RECEIVE_MAXIMUM: Final = 65535
_MAX_CLOCK_AHEAD_S: Final = int(contract.ENV_DEFAULTS["IOT_MAX_CLOCK_AHEAD_S"])
_GROUP_PATTERN: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_tls: bool = False
    mqtt_tls_ca: str | None = None
    mqtt_tls_cert: str | None = None
    mqtt_tls_key: str | None = None
    mqtt_username: str | None = None
    mqtt_password: Secret | None = None
    group: str = "iot-gateway"
    topic_filter: str = contract.READING_SUBSCRIPTION
    client_id: str = "iot-gateway"
    session_expiry_s: int = 86400
    max_in_flight: int = 2000
    metrics_host: str = "127.0.0.1"
    metrics_port: int = contract.GATEWAY_METRICS_PORT
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_linger_ms: int = 5
    kafka_compression: str = "lz4"
    kafka_extra: Mapping[str, str | Secret] = field(default_factory=dict)
    drain_timeout_s: float = 15.0
    e2e_ack: bool = True
    max_clock_ahead_s: int = _MAX_CLOCK_AHEAD_S
    # The device registry the gateway keeps current from status and health (gateway/registry.py).
    registry: bool = True
    mongo_uri: str = contract.ENV_DEFAULTS["IOT_MONGO_URI"]

    @property
    def subscription(self) -> str:
        return f"$share/{self.group}/{self.topic_filter}"

    def kafka_config(self) -> dict[str, str | int | bool]:
        """The confluent-kafka producer configuration, secrets revealed (never log the result)."""
        config: dict[str, str | int | bool] = {
            "bootstrap.servers": self.kafka_bootstrap,
            "client.id": self.client_id,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": self.kafka_compression,
            "linger.ms": self.kafka_linger_ms,
            # 0 = never give up on a reading: while Kafka is away readings wait in the producer and,
            # beyond the in-flight bound, in the MQTT broker; a timeout would only force a re-send.
            "message.timeout.ms": 0,
            # Far above the in-flight bound (and Mosquitto's overshoot of it, at most its own
            # max_inflight_messages), so produce() does not raise BufferError; if it ever does, the
            # record is retried.
            "queue.buffering.max.messages": max(100_000, 4 * self.max_in_flight),
        }
        for name, value in self.kafka_extra.items():
            config[name] = value.reveal() if isinstance(value, Secret) else value
        return config

    def describe(self) -> dict[str, object]:
        """Every setting for the start-up log; secrets stay masked."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "kafka_extra":
                value = ",".join(sorted(value)) or "-"
            if f.name == "mongo_uri":
                value = re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", value)
            out[f.name] = "***" if isinstance(value, Secret) else value
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        env = os.environ if env is None else env
        reader = EnvReader(env, SettingsError)
        broker = reader.mqtt_url("IOT_MQTT_URL")
        tls_ca = reader.path("IOT_MQTT_TLS_CA")
        tls_cert = reader.path("IOT_MQTT_TLS_CERT")
        tls_key = reader.path("IOT_MQTT_TLS_KEY")
        if (tls_cert is None) != (tls_key is None):
            raise SettingsError("IOT_MQTT_TLS_KEY", "IOT_MQTT_TLS_CERT and IOT_MQTT_TLS_KEY go together")
        username = reader.optional("IOT_MQTT_USERNAME")
        password = reader.optional("IOT_MQTT_PASSWORD")
        if password is not None and username is None:
            raise SettingsError("IOT_MQTT_USERNAME", "required when IOT_MQTT_PASSWORD is set")
        group = reader.text("IOT_GATEWAY_GROUP", "iot-gateway")
        if not _GROUP_PATTERN.match(group):
            raise SettingsError("IOT_GATEWAY_GROUP", f"{group!r} must match {_GROUP_PATTERN.pattern}")
        topic_filter = reader.text("IOT_GATEWAY_TOPIC_FILTER", contract.READING_SUBSCRIPTION)
        if not topic_filter.startswith("sensors/"):
            raise SettingsError(
                "IOT_GATEWAY_TOPIC_FILTER", f"{topic_filter!r} must be a filter under sensors/"
            )
        client_id = reader.text("IOT_GATEWAY_CLIENT_ID", _default_client_id())
        if len(client_id.encode("utf-8")) > 128:
            raise SettingsError("IOT_GATEWAY_CLIENT_ID", "at most 128 bytes")
        compression = reader.text("IOT_GATEWAY_KAFKA_COMPRESSION", "lz4").lower()
        if compression not in _COMPRESSIONS:
            raise SettingsError("IOT_GATEWAY_KAFKA_COMPRESSION", f"one of {', '.join(sorted(_COMPRESSIONS))}")
        bootstrap = reader.text("IOT_KAFKA_BOOTSTRAP")
        return cls(
            mqtt_host=broker.host,
            mqtt_port=broker.port,
            mqtt_tls=broker.tls or tls_ca is not None,
            mqtt_tls_ca=tls_ca,
            mqtt_tls_cert=tls_cert,
            mqtt_tls_key=tls_key,
            mqtt_username=username,
            mqtt_password=None if password is None else Secret(password),
            group=group,
            topic_filter=topic_filter,
            client_id=client_id,
            session_expiry_s=reader.integer("IOT_GATEWAY_SESSION_EXPIRY_S", 86400, 0, 2**32 - 1),
            max_in_flight=reader.integer("IOT_GATEWAY_MAX_IN_FLIGHT", 2000, 1, _MAX_RECEIVE_MAXIMUM),
            metrics_host=reader.text("IOT_GATEWAY_METRICS_HOST", "127.0.0.1"),
            metrics_port=reader.port("IOT_GATEWAY_METRICS_PORT", contract.GATEWAY_METRICS_PORT),
            kafka_bootstrap=bootstrap,
            kafka_linger_ms=reader.integer("IOT_GATEWAY_KAFKA_LINGER_MS", 5, 0, 10_000),
            kafka_compression=compression,
            kafka_extra=_kafka_passthrough(reader),
            drain_timeout_s=float(reader.integer("IOT_GATEWAY_DRAIN_TIMEOUT_S", 15, 0, 3600)),
            e2e_ack=reader.boolean("IOT_GATEWAY_E2E_ACK", True),
            max_clock_ahead_s=reader.integer("IOT_MAX_CLOCK_AHEAD_S", _MAX_CLOCK_AHEAD_S, 0, 2**31 - 1),
            registry=reader.boolean("IOT_GATEWAY_REGISTRY", True),
            mongo_uri=reader.text("IOT_MONGO_URI"),
        )


def _kafka_passthrough(reader: EnvReader) -> dict[str, str | Secret]:
    extra: dict[str, str | Secret] = {}
    for variable, name in KAFKA_PASSTHROUGH.items():
        value = reader.optional(variable)
        if value is None:
            continue
        if variable == "IOT_KAFKA_SECURITY_PROTOCOL" and value.lower() not in _SECURITY_PROTOCOLS:
            raise SettingsError(variable, f"one of {', '.join(sorted(_SECURITY_PROTOCOLS))}")
        if variable.startswith("IOT_KAFKA_SSL_") and variable.endswith("_LOCATION"):
            reader.path(variable)
        extra[name] = Secret(value) if variable in _SECRET_PASSTHROUGH else value
    return extra


def _default_client_id() -> str:
    # Stable across restarts on one host, so the broker resumes this gateway's persistent session.
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:48] or "host"
    return f"iot-gateway-{host}"
