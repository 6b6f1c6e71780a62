"""The MQTT side: a persistent MQTT v5 session on the shared subscription, with manual acks.

The client id is stable and the session outlives the connection (clean_start=False plus a session
expiry), so QoS 1 readings the gateway has not acked, and those published while it is away, wait in
the broker and are redelivered. Receive Maximum = the in-flight bound: once acks stop (Kafka away),
the broker sends no more than that many un-acked readings. While acks flow Mosquitto 2.0.11 does
not hold it (each PUBACK refills the window by the acked message's place in it, fixed in 2.0.13), so
the gateway also stops reading PUBLISHes while that many are in flight (`start`'s `may_take`): the
rest waits in the socket and the broker, TCP backpressure.

Every callback runs in paho's network thread, and an exception escaping one ends that thread for
good while the process lives on (issue #19: a retained health message of `[` x 3,000 did so at every
start). So each message is handled on its own: a status or health message the gateway cannot use is
counted and ignored, a reading always ends as a Kafka record (reading or dead letter) or, if retained,
as an ignored stale copy; anything unexpected is caught, logged and counted per callback. The service
watches the thread all the same (`alive`): if it ends anyway the process exits non-zero.
"""

from __future__ import annotations

import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from iot import contract, log

from .devices import health_filter, status_filter
from .errors import MqttConnectError, SettingsError
from .metrics import IGNORED_RETAINED, GatewayMetrics
from .paho_client import BatchingClient
from .ratelimit import LogLimit
from .registry import RegistryWriter
from .settings import GatewaySettings

__all__ = ["MessageHandler", "MqttSource"]

MessageHandler = Callable[[str, bytes, int, int, int], None]
"""handler(topic, payload, mid, qos, session_generation)"""

_log = log.get("gateway.mqtt")
_KEEPALIVE_S = 30
_SESSION_TAKEN_OVER = 142  # MQTT v5 DISCONNECT reason code (Mosquitto 2.0.11 just closes instead)
_FLAP_S = 5.0
# While the broker stays unreachable, a reminder at most this often (every attempt is counted).
_UNREACHABLE_REMINDER_S: Final = 30.0
_RECONNECT_MIN_S: Final = 1
_RECONNECT_MAX_S: Final = 10
_PAYLOAD_HEAD = 48  # bytes of an ignored message quoted in its log line


class MqttSource:
    def __init__(
        self, settings: GatewaySettings, metrics: GatewayMetrics, registry: RegistryWriter | None = None
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._handler: MessageHandler | None = None
        self._metrics = metrics
        # Bumped on every (re)connect: an ack computed for a message of an earlier connection is
        # dropped, because its packet id may be reused by a different message in the new one.
        self._generation = 0
        self.subscribed = threading.Event()
        self._connected_at = 0.0
        self._short_lived = 0
        self._unreachable_since: float | None = None
        self._unreachable_attempts = 0
        self._next_reminder = 0.0
        self._log_limit = LogLimit()
        self.fatal: SettingsError | None = None
        """Set (from the network thread) when the gateway cannot work with its configuration; the
        service raises it."""
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
        client.reconnect_delay_set(min_delay=_RECONNECT_MIN_S, max_delay=_RECONNECT_MAX_S)
        client.on_connect = self._guarded("on_connect", self._on_connect)
        client.on_connect_fail = self._guarded("on_connect_fail", self._on_connect_fail)
        client.on_disconnect = self._guarded("on_disconnect", self._on_disconnect)
        client.on_subscribe = self._guarded("on_subscribe", self._on_subscribe)
        client.on_message = self._on_message  # guarded per message, finer than _guarded
        client.on_bad_properties = self._guarded("on_bad_properties", self._on_bad_properties)
        self._client = client

    def alive(self) -> bool:
        """True while the network thread runs (from start() until stop())."""
        return self._client.network_alive()

    def _guarded(self, name: str, callback: Callable[..., None]) -> Callable[..., None]:
        """`callback`, with any exception caught, logged and counted: escaping, it would end paho's
        network thread."""

        def guarded(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as exc:
                self._callback_failed(name, exc)

        return guarded

    def _callback_failed(self, name: str, exc: BaseException) -> None:
        self._metrics.callback_errors.labels(callback=name).inc()
        left_out = self._log_limit.check(("callback", name, type(exc)))
        if left_out is not None:
            _log.error(
                "mqtt_callback_failed",
                callback=name,
                error=repr(exc)[:300],
                not_logged_since=left_out,
                action="the gateway's own bug: please report with this line; it goes on with the next "
                "message",
            )

    def start(self, handler: MessageHandler, may_take: Callable[[], bool] | None = None) -> None:
        """Connect and hand every reading message to `handler` (in the network thread); while
        `may_take()` says no, read no further PUBLISH (call `resume` when it may say yes again)."""
        self._handler = handler
        self._client.take_gate = may_take
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

    def resume(self) -> None:
        """The in-flight bound may have room again: the network thread asks `may_take` anew."""
        self._client.wake()

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

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        # paho calls this inside its `except OSError:` around the connection attempt.
        error = sys.exception()
        self._metrics.mqtt_connect_failures.inc()
        now = time.monotonic()
        self._unreachable_attempts += 1
        if self._unreachable_since is None:
            self._unreachable_since = now
            self._next_reminder = now + _UNREACHABLE_REMINDER_S
            _log.error(
                "mqtt_unreachable",
                broker=self._broker(),
                error=_describe(error),
                action="check that the broker runs and that IOT_MQTT_URL (mqtt:// or mqtts://, host, port) "
                f"points at it; retrying every {_RECONNECT_MIN_S}-{_RECONNECT_MAX_S} s",
            )
        elif now >= self._next_reminder:
            self._next_reminder = now + _UNREACHABLE_REMINDER_S
            _log.error(
                "mqtt_still_unreachable",
                broker=self._broker(),
                error=_describe(error),
                attempts=self._unreachable_attempts,
                since_s=round(now - self._unreachable_since),
                action="check the broker and IOT_MQTT_URL; still retrying",
            )

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if self._unreachable_since is not None:
            _log.info(
                "mqtt_reachable",
                broker=self._broker(),
                attempts=self._unreachable_attempts,
                after_s=round(time.monotonic() - self._unreachable_since, 1),
            )
            self._unreachable_since = None
            self._unreachable_attempts = 0
        if reason.is_failure:
            _log.error(
                "mqtt_connect_refused",
                broker=self._broker(),
                reason=str(reason),
                user=self._settings.mqtt_username or "-",
                login_from=self._settings.mqtt_login,
                action="check IOT_MQTT_USERNAME/IOT_MQTT_PASSWORD (or the stack's credentials file), TLS "
                "and the broker's accounts (`iot devices setup` makes the gateway's); retrying",
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
        try:
            client.subscribe(
                [
                    (self._settings.subscription, SubscribeOptions(qos=contract.READING_QOS)),
                    (status_filter(self._settings.topic_filter), SubscribeOptions(qos=0)),
                    (health_filter(self._settings.topic_filter), SubscribeOptions(qos=0)),
                ]
            )
        except ValueError as exc:
            # paho refuses an invalid filter before it reaches the broker (e.g. sensors/#/reading).
            self.fatal = SettingsError(
                "IOT_GATEWAY_TOPIC_FILTER",
                f"cannot subscribe to {self._settings.subscription!r} ({exc}); give an MQTT topic filter "
                "under sensors/ such as sensors/+/+/reading (# only at the end)",
            )
            _log.error("mqtt_subscribe_invalid", subscription=self._settings.subscription, error=str(exc))

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
        try:
            self._dispatch(topic, message)
        except Exception as exc:
            # The bridge and the device board never raise on input; this is a bug of ours. A reading
            # stays un-acked: the broker redelivers it after the next reconnect.
            self._callback_failed("on_message", exc)

    def _dispatch(self, topic: str, message: mqtt.MQTTMessage) -> None:
        if topic.endswith("/status"):
            self._side_message("status", topic, message, self._metrics.devices.status)
            if self._registry is not None:
                self._registry.status(topic, bytes(message.payload), bool(message.retain))
            return
        if topic.endswith("/health"):
            self._side_message("health", topic, message, self._metrics.devices.health)
            if self._registry is not None:
                self._registry.health(topic, bytes(message.payload), bool(message.retain))
            return
        if message.retain:
            self._ignore_retained_reading(topic, message)
            return
        assert self._handler is not None, "messages arrive only after start()"
        self._handler(topic, bytes(message.payload), message.mid, message.qos, self._generation)

    def _side_message(
        self, kind: str, topic: str, message: mqtt.MQTTMessage, take: Callable[[str, bytes], str | None]
    ) -> None:
        payload = bytes(message.payload)
        reason = take(topic, payload)
        if reason is None:
            return
        self._metrics.ignored.labels(kind=kind, reason=reason).inc()
        left_out = self._log_limit.check((kind, topic, reason))
        if left_out is not None:
            _log.warning(
                f"{kind}_ignored",
                topic=topic,
                reason=reason,
                retained=bool(message.retain),
                payload_head=payload[:_PAYLOAD_HEAD],
                size=len(payload),
                not_logged_since=left_out,
                action=f"the board's {kind} message is not what docs/CONTRACT.md describes: check its "
                "firmware; a retained one stays until the board publishes a good one or it is cleared "
                f"(an empty retained message on {topic})",
            )

    def _ignore_retained_reading(self, topic: str, message: mqtt.MQTTMessage) -> None:
        # Readings are not retained (docs/CONTRACT.md). The broker delivered a retained reading live
        # (without the flag) when it was published; with the flag it is the stored copy, which
        # Mosquitto 2.0.11 sends to shared subscriptions again at every subscribe, i.e. every
        # reconnect. Acked here, or it would wait in the session and come back at each reconnect.
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)
        self._metrics.ignored.labels(kind="reading", reason=IGNORED_RETAINED).inc()
        parts = topic.split("/")
        board = "/".join(parts[1:3]) if len(parts) == 4 else topic
        left_out = self._log_limit.check(("retained", board))
        if left_out is not None:
            _log.warning(
                "retained_reading_ignored",
                topic=topic,
                not_logged_since=left_out,
                action="the live copy was bridged when it was published; this stored copy is not. "
                f"The board must publish readings without the retain flag; clear it with an empty "
                f"retained message on {topic}",
            )

    def _on_bad_properties(self, topic: bytes, complaint: str) -> None:
        self._metrics.mqtt_properties_dropped.inc()
        name = topic.decode("utf-8", errors="replace")
        left_out = self._log_limit.check(("properties", name))
        if left_out is not None:
            _log.warning(
                "mqtt_properties_dropped",
                topic=name,
                error=complaint[:200],
                not_logged_since=left_out,
                action="handled without its MQTT v5 properties (the gateway uses none); the publisher "
                "sends properties paho cannot parse: check that client",
            )


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "unknown"
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:200]
