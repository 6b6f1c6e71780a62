"""The operator's MQTT session for fleet commands: which boards a command means, publishing to their
config and ota topics, and their health messages as they arrive.

One paho client as the broker's operator account (the only one that may write `config` and `ota`,
docs/CONTRACT.md "Accounts, ACL and provisioning"), subscribed to every board's health and status.
The network thread only stores the newest message per board and wakes the waiter; commands read them
with a deadline.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from fleetops.errors import RolloutError
from iot import contract, log
from iot.broker.dynsec import connect
from iot.devices.provision import DevicesSettings
from iot.devices.registry import Registry

__all__ = ["Board", "Heard", "Session", "Target", "select"]

_log = log.get("fleetops")
_HEALTH_MAX_BYTES = 4096


@dataclass(frozen=True)
class Target:
    device: str
    place: str


def select(
    registry: Registry, device: str | None = None, place: str | None = None, every: bool = False
) -> list[Target]:
    """The provisioned boards a command names: one device, a place's, or all; sorted by device."""
    docs = registry.all()
    if device is not None:
        docs = [d for d in docs if d["_id"] == device]
        if not docs:
            raise RolloutError(f"no device {device!r} in the registry (`iot devices list`)")
    elif place is not None:
        docs = [d for d in docs if d.get("place") == place]
        if not docs:
            raise RolloutError(f"no device in place {place!r} in the registry (`iot devices list`)")
    elif not every:
        raise RolloutError("name the boards: DEVICE, --place PLACE or --all")
    return sorted((Target(str(d["_id"]), str(d["place"])) for d in docs), key=lambda t: t.device)


@dataclass
class Heard:
    """The newest health and status of one board, with when they arrived (monotonic)."""

    health: dict[str, Any] | None = None
    health_at: float = 0.0
    health_retained: bool = True
    healths: int = 0  # live health messages so far
    status: str = ""
    status_at: float = 0.0


@dataclass
class Board:
    target: Target
    heard: Heard = field(default_factory=Heard)


class Session:
    """Use as a context manager: connects as the operator and listens to every board's health."""

    def __init__(self, settings: DevicesSettings, targets: list[Target]) -> None:
        self._settings = settings
        self.boards = {t.device: Board(t) for t in targets}
        self._lock = threading.Condition()
        self._client: mqtt.Client | None = None

    def __enter__(self) -> Session:
        s = self._settings
        client = connect(s.endpoint, s.operator, s.tls_ca, client_id=f"iot-fleet-{time.time_ns() % 10**9}")
        client.on_message = self._on_message
        for kind in ("health", "status"):
            client.subscribe(f"sensors/+/+/{kind}", qos=1)
        self._client = client
        return self

    def __exit__(self, *_exc: object) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    # --- the network thread ------------------------------------------------------------------
    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 4:
            return
        board = self.boards.get(parts[2])
        if board is None or board.target.place != parts[1]:
            return
        now = time.monotonic()
        with self._lock:
            heard = board.heard
            if parts[3] == "status":
                heard.status = msg.payload[:32].decode("utf-8", "replace")
                heard.status_at = now
            elif parts[3] == "health" and len(msg.payload) <= _HEALTH_MAX_BYTES:
                try:
                    obj = json.loads(msg.payload) if msg.payload else None
                except (ValueError, RecursionError):
                    return  # not a health message we can read: a hostile board's, ignored
                if obj is not None and not isinstance(obj, dict):
                    return
                heard.health, heard.health_at, heard.health_retained = obj, now, bool(msg.retain)
                if not msg.retain:
                    heard.healths += 1
            self._lock.notify_all()

    # --- for commands ------------------------------------------------------------------------
    def heard(self, device: str) -> Heard:
        with self._lock:
            h = self.boards[device].heard
            return Heard(
                dict(h.health) if h.health else None,
                h.health_at,
                h.health_retained,
                h.healths,
                h.status,
                h.status_at,
            )

    def wait(self, timeout: float) -> None:
        """Until a message arrives or `timeout` (a wake-up, not a synchronisation)."""
        with self._lock:
            self._lock.wait(timeout)

    def settle(self, seconds: float = 2.0) -> None:
        """Let the retained health and status of every board arrive after subscribing: until each
        target was heard with both, or `seconds` (a board that never connected has neither, and a
        large fleet's retained messages take a while: the broker sends them after the subscription's
        acknowledgement, a thousand in flight at a time)."""
        deadline = time.monotonic() + seconds
        with self._lock:
            while not all(b.heard.health_at and b.heard.status_at for b in self.boards.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._lock.wait(left)

    def publish(self, topic: str, payload: bytes, retain: bool, qos: int = 1, timeout: float = 10.0) -> None:
        """Publish and, for QoS 1, wait until the broker has it."""
        client = self._client
        if client is None:
            raise RolloutError("the operator's session is closed")
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            return
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            raise RolloutError(f"publishing to {topic} failed: {exc}") from None
        if not info.is_published():
            raise RolloutError(f"the broker did not take the message for {topic} within {timeout:.0f}s")

    def send(self, topic: str, payload: bytes) -> None:
        """QoS 0, no wait: chunks, whose loss the board's reported progress reveals."""
        client = self._client
        if client is None:
            raise RolloutError("the operator's session is closed")
        info = client.publish(topic, payload, qos=0)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RolloutError(f"publishing to {topic} failed: {mqtt.error_string(info.rc)}")


def config_topic(t: Target) -> str:
    return contract.config_topic(t.place, t.device)


def ota_topic(t: Target) -> str:
    return contract.ota_topic(t.place, t.device)


def chunk_topic(t: Target) -> str:
    return contract.ota_chunk_topic(t.place, t.device)
