"""The MQTT side: a persistent MQTT v5 session on the shared subscription, with manual acks.

The client id is stable and the session outlives the connection (clean_start=False plus a session
expiry), so QoS 1 readings the gateway has not acked, and those published while it is away, wait in
the broker and are redelivered. Receive Maximum = the in-flight bound: once acks stop (Kafka away),
the broker sends no more than that many un-acked readings, which is the gateway's backpressure
(Mosquitto 2.0.11 overshoots it while acks flow; measured, harmless).
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from iot import contract, log

from .devices import health_filter, status_filter
from .errors import MqttConnectError
from .metrics import GatewayMetrics
from .paho_client import BatchingClient
from .settings import GatewaySettings

__all__ = ["MessageHandler", "MqttSource"]

MessageHandler = Callable[[str, bytes, int, int, int], None]
"""handler(topic, payload, mid, qos, session_generation)"""

_log = log.get("gateway.mqtt")
_KEEPALIVE_S = 30
_SESSION_TAKEN_OVER = 142  # MQTT v5 DISCONNECT reason code (Mosquitto 2.0.11 just closes instead)
_FLAP_S = 5.0


class MqttSource:
    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self._settings = settings
        self._handler: MessageHandler | None = None
        self._metrics = metrics
        # Bumped on every (re)connect: an ack computed for a message of an earlier connection is
        # dropped, because its packet id may be reused by a different message in the new one.
        self._generation = 0
        self.subscribed = threading.Event()
        self._connected_at = 0.0
        self._short_lived = 0
        client = BatchingClient(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if settings.mqtt_username is not None:
            password = settings.mqtt_password.reveal() if settings.mqtt_password is not None else None
            client.username_pw_set(settings.mqtt_username, password)
        if settings.mqtt_tls:
            client.tls_set(
                ca_certs=settings.mqtt_tls_ca,
                certfile=settings.mqtt_tls_cert,
                keyfile=settings.mqtt_tls_key,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client

    def start(self, handler: MessageHandler) -> None:
        """Connect and hand every reading message to `handler` (in the network thread)."""
        self._handler = handler
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._settings.session_expiry_s
        props.ReceiveMaximum = self._settings.max_in_flight
        try:
            self._client.connect_async(
                self._settings.mqtt_host,
                self._settings.mqtt_port,
                keepalive=_KEEPALIVE_S,
                clean_start=False,
                properties=props,
            )
        except (OSError, ValueError) as exc:
            raise MqttConnectError(f"cannot connect to {self._broker()}: {exc}") from None
        # The network thread retries the first connection too, so a broker that starts later is fine.
        self._client.loop_start()

    def ack(self, done: list[tuple[int, int, int]]) -> int:
        """PUBACK each (mid, qos, generation) of the current connection; returns how many were sent."""
        current = self._generation
        return self._client.ack_batch(
            mid for mid, qos, generation in done if qos == 1 and generation == current
        )

    def notify(self, messages: list[tuple[str, bytes]]) -> int:
        """Publish end-to-end acks at QoS 0; returns how many were sent (none while disconnected)."""
        return self._client.publish_batch(messages)

    def stop(self) -> None:
        """Disconnect cleanly; the session (and anything un-acked) stays with the broker."""
        if not self._client.stop():
            _log.warning(
                "mqtt_disconnect_incomplete",
                action="none: the broker redelivers what was not acknowledged; downstream drops the copies",
            )
        self._metrics.mqtt_connected.set(0)

    def _flapping(self) -> bool:
        """True on the third connection in a row that lived under _FLAP_S; logged once per streak."""
        if time.monotonic() - self._connected_at < _FLAP_S:
            self._short_lived += 1
        else:
            self._short_lived = 0
        return self._short_lived == 3

    def _broker(self) -> str:
        scheme = "mqtts" if self._settings.mqtt_tls else "mqtt"
        return f"{scheme}://{self._settings.mqtt_host}:{self._settings.mqtt_port}"

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            _log.error(
                "mqtt_connect_refused",
                broker=self._broker(),
                reason=str(reason),
                action="check IOT_MQTT_USERNAME/IOT_MQTT_PASSWORD/TLS and broker ACLs; retrying",
            )
            return
        self._generation += 1
        self._connected_at = time.monotonic()
        _log.info(
            "mqtt_connected",
            broker=self._broker(),
            client_id=self._settings.client_id,
            session_present=bool(getattr(flags, "session_present", False)),
        )
        # Subscribing again on a resumed session is harmless and covers a session the broker expired.
        # Status and health topics: not shared (every gateway tracks every board it serves, and
        # shared subscriptions get no retained messages), QoS 0 (the retained value is the state).
        client.subscribe(
            [
                (self._settings.subscription, SubscribeOptions(qos=contract.READING_QOS)),
                (status_filter(self._settings.topic_filter), SubscribeOptions(qos=0)),
                (health_filter(self._settings.topic_filter), SubscribeOptions(qos=0)),
            ]
        )

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: Any, _props: Any
    ) -> None:
        readings, *side = [*reasons, None, None, None][:3]
        for code, kind in zip(side, ("status", "health"), strict=True):
            if code is not None and code.is_failure:
                _log.warning(
                    "mqtt_side_subscribe_refused",
                    topics=kind,
                    reason=str(code),
                    action=f"device {kind} metrics stay empty; allow the gateway user to read {kind} topics",
                )
        if readings is None or readings.is_failure:
            _log.error(
                "mqtt_subscribe_refused",
                subscription=self._settings.subscription,
                reason=str(readings),
                action="check broker ACLs for the gateway user",
            )
            return
        self._metrics.mqtt_connected.set(1)
        self.subscribed.set()
        _log.info("mqtt_subscribed", subscription=self._settings.subscription)

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _p: Any
    ) -> None:
        self._metrics.mqtt_connected.set(0)
        self.subscribed.clear()
        if reason.value == _SESSION_TAKEN_OVER:
            _log.error(
                "mqtt_session_taken_over",
                client_id=self._settings.client_id,
                action="another process connected with this client id; give each gateway process its own "
                "IOT_GATEWAY_CLIENT_ID (same IOT_GATEWAY_GROUP)",
            )
        elif self._flapping():
            _log.error(
                "mqtt_flapping",
                client_id=self._settings.client_id,
                reason=str(reason),
                action="the broker keeps dropping this connection right after connect: check that no other "
                "process uses this IOT_GATEWAY_CLIENT_ID, and the broker log and ACLs",
            )
        elif reason.is_failure:
            _log.warning(
                "mqtt_disconnected",
                broker=self._broker(),
                reason=str(reason),
                action="reconnecting; un-acked readings are redelivered by the broker",
            )
        else:
            _log.info("mqtt_disconnected", broker=self._broker(), reason=str(reason))

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            # The broker should never deliver this; keep the bytes readable for the DLQ all the same.
            topic = bytes(message._topic).decode("utf-8", errors="replace")
        if topic.endswith("/status"):
            self._metrics.devices.status(topic, bytes(message.payload))
            return
        if topic.endswith("/health"):
            self._metrics.devices.health(topic, bytes(message.payload))
            return
        assert self._handler is not None, "messages arrive only after start()"
        self._handler(topic, bytes(message.payload), message.mid, message.qos, self._generation)
