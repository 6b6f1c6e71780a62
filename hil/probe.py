"""An MQTT probe: subscribes on the real broker and keeps what the boards publish, for the rig."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from hil.errors import BoardError
from iot.broker import credentials
from iot.env import MqttEndpoint, parse_mqtt_url
from iot.errors import ConfigError


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


def broker_endpoint(url: str) -> MqttEndpoint:
    try:
        return parse_mqtt_url(url, "broker URL")
    except ConfigError as exc:
        raise BoardError(f"{exc} (mqtt://host:port, or mqtts://host:port for TLS)") from None


def broker_address(url: str) -> tuple[str, int]:
    endpoint = broker_endpoint(url)
    return endpoint.host, endpoint.port


def _client(endpoint: MqttEndpoint, tls_ca: str | None, **kwargs: Any) -> mqtt.Client:
    """A paho client for the broker; over TLS it verifies the broker with `tls_ca` (None: the
    system's CAs), as the boards do with theirs."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
    if endpoint.tls or tls_ca:
        client.tls_set(ca_certs=tls_ca)
    return client


class Probe:
    """Subscribe to topic filters; messages are kept in arrival order (thread-safe)."""

    def __init__(
        self,
        url: str,
        topics: Iterable[str],
        keep: Callable[[str], bool] | None = None,
        session: str = "",
        username: str = "",
        password: str = "",
        tls_ca: str | None = None,
    ) -> None:
        """`session`: a client id for a persistent session, so a broker restart loses nothing for us.
        `tls_ca`: the CA to verify an mqtts:// broker with (the boards' IOT_MQTT_TLS_CA). Without a
        `username` it logs in as the operator when there is one (IOT_MQTT_OPERATOR_*, else the native
        stack's credentials file); a broker without authentication takes any login."""
        if not username:
            username, password = _operator()
        endpoint = broker_endpoint(url)
        self._host, self._port = endpoint.host, endpoint.port
        self._topics = list(topics)
        self._keep = keep
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self._subscribed = threading.Event()
        self._username = username
        self._refused: str | None = None  # why the broker refused the login or the subscription
        self._client = _client(endpoint, tls_ca, client_id=session, clean_session=not session)
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        if username:
            self._client.username_pw_set(username, password or None)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            who = f"as {self._username!r}" if self._username else "without credentials"
            self._refused = f"the broker at {self._host}:{self._port} refused the login {who} ({reason})"
            client.disconnect()
            self._subscribed.set()
            return
        client.subscribe([(t, 1) for t in self._topics])

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, codes: Any, _p: Any) -> None:
        refused = [t for t, code in zip(self._topics, codes, strict=False) if code.is_failure]
        if refused:
            self._refused = f"the broker refused the subscription to {', '.join(refused)} ({codes[0]})"
        self._subscribed.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if self._keep is not None and not self._keep(msg.topic):
            return
        with self._lock:
            self._messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain), time.time()))

    def start(self, timeout: float = 10.0) -> Probe:
        try:
            self._client.connect(self._host, self._port, keepalive=30)
        except OSError as exc:
            raise BoardError(f"cannot reach the broker at {self._host}:{self._port}: {exc}") from exc
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise BoardError(f"no SUBACK from {self._host}:{self._port} within {timeout:.0f}s")
        if self._refused is not None:
            self.stop()
            raise BoardError(
                f"{self._refused}: an authenticated broker needs the operator's account, from "
                "IOT_MQTT_OPERATOR_USERNAME/IOT_MQTT_OPERATOR_PASSWORD or the native stack's "
                ".stack/credentials.json (compose: MQTT_OPERATOR_PASSWORD in compose/.env)"
            )
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Probe:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def messages(self, suffix: str = "", device: str | None = None) -> list[Message]:
        with self._lock:
            out = list(self._messages)
        if suffix:
            out = [m for m in out if m.topic.endswith("/" + suffix)]
        if device is not None:
            out = [m for m in out if m.topic.split("/")[2:3] == [device]]
        return out

    def readings(self, device: str) -> list[dict[str, Any]]:
        return [m.json() for m in self.messages("reading", device)]

    def count(self, suffix: str = "reading") -> int:
        return len(self.messages(suffix))


def _operator() -> tuple[str, str]:
    found = credentials.find(credentials.OPERATOR)
    return (found.username, found.password) if found is not None else ("", "")


def clear_retained(url: str, devices: Iterable[tuple[str, str]], tls_ca: str | None = None) -> None:
    """Remove the retained status and health of (place, device) pairs, e.g. throwaway test boards
    (as the operator, the account that may)."""
    endpoint = broker_endpoint(url)
    client = _client(endpoint, tls_ca)
    username, password = _operator()
    if username:
        client.username_pw_set(username, password)
    client.connect(endpoint.host, endpoint.port)
    client.loop_start()
    try:
        infos = [
            client.publish(f"sensors/{place}/{device}/{kind}", b"", qos=1, retain=True)
            for place, device in devices
            for kind in ("status", "health")
        ]
        for info in infos:
            info.wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()
