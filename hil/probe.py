"""An MQTT probe: subscribes on the real broker and keeps what the boards publish, for the rig."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from hil.errors import BoardError


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


def broker_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise BoardError(f"broker URL {url!r} must look like mqtt://host:port")
    return parts.hostname, parts.port or 1883


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
    ) -> None:
        """`session`: a client id for a persistent session, so a broker restart loses nothing for us."""
        self._host, self._port = broker_address(url)
        self._topics = list(topics)
        self._keep = keep
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=session, clean_session=not session
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        if username:
            self._client.username_pw_set(username, password or None)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        client.subscribe([(t, 1) for t in self._topics])

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, _codes: Any, _p: Any) -> None:
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


def clear_retained(url: str, devices: Iterable[tuple[str, str]]) -> None:
    """Remove the retained status and health of (place, device) pairs, e.g. throwaway test boards."""
    host, port = broker_address(url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(host, port)
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
