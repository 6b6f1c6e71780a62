"""MQTT clients of the tests and the benchmarks, and the one place that knows how they reach the
broker: IOT_MQTT_URL and IOT_MQTT_TLS_CA, logged in as the operator (tests/accounts.py finds the
same login), read once into an `MqttLogin`. A broker that wants a login or TLS is then a matter of the
environment or of the native stack's credentials file.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iot.broker import credentials
from iot.env import EnvReader, parse_mqtt_url
from iot.harness.errors import HarnessError

__all__ = ["MqttLogin"]


@dataclass(frozen=True)
class MqttLogin:
    url: str
    username: str = ""
    password: str = ""
    ca: str = ""  # the CA file that verifies an mqtts:// broker

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MqttLogin:
        """The broker of IOT_MQTT_URL (its CA: IOT_MQTT_TLS_CA), logged in as the operator, who may
        publish any board's topics and read them all, the way a test or a benchmark plays a fleet:
        IOT_MQTT_OPERATOR_USERNAME/PASSWORD, else the native stack's credentials file, else no login
        (a broker without accounts)."""
        reader = EnvReader(env)
        operator = credentials.find(credentials.OPERATOR, env)
        return cls(
            reader.mqtt_url("IOT_MQTT_URL").url,
            operator.username if operator else "",
            operator.password if operator else "",
            reader.path("IOT_MQTT_TLS_CA") or "",
        )

    def at(self, url: str) -> MqttLogin:
        """The same login on the broker at `url` (a test's fixture may name it)."""
        return dataclasses.replace(self, url=url)

    @property
    def host(self) -> str:
        return parse_mqtt_url(self.url).host

    @property
    def port(self) -> int:
        return parse_mqtt_url(self.url).port

    def prepare(self, client: mqtt.Client) -> tuple[str, int]:
        """Give a client made elsewhere (its own class, its own connect flags) this broker's login
        and TLS; returns the host and port to connect it to."""
        endpoint = parse_mqtt_url(self.url)
        if self.username:
            client.username_pw_set(self.username, self.password)
        if endpoint.tls:
            client.tls_set(ca_certs=self.ca or None)
        return endpoint.host, endpoint.port

    def client(
        self, client_id: str = "", session_expiry_s: int = 0, timeout: float = 10.0, max_inflight: int = 20
    ) -> mqtt.Client:
        """An MQTT v5 client, connected (clean start) and its network loop running; `disconnect()`
        then `loop_stop()` when done. `max_inflight` 0: no limit."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(max_inflight)
        host, port = self.prepare(client)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = session_expiry_s
        client.connect(host, port, clean_start=True, properties=props)
        client.loop_start()
        deadline = time.monotonic() + timeout
        while not client.is_connected():
            if time.monotonic() > deadline:
                client.loop_stop()
                who = client_id or "(any id)"
                raise HarnessError(f"no MQTT connection to {self.url} as {who} in {timeout:.0f}s")
            time.sleep(0.02)
        return client

    def publish(self, topic: str, payload: bytes, retain: bool = False, timeout: float = 10.0) -> None:
        """One QoS 1 message from a client of its own, returning once the broker acknowledged it."""
        client = self.client()
        try:
            info = client.publish(topic, payload, qos=1, retain=retain)
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise HarnessError(f"{self.url} did not acknowledge a publish to {topic} in {timeout:.0f}s")
        finally:
            client.disconnect()
            client.loop_stop()

    def forget_session(self, client_id: str) -> None:
        """Drop a client's persistent session (and its subscriptions), so the broker stops queueing
        for it: connect as it with a clean start that expires at once, then leave."""
        client = self.client(client_id)
        client.disconnect()
        client.loop_stop()
