"""Wi-Fi + MQTT link: connect when possible, back off exponentially with jitter when not.

The link never blocks the node for long: one connect attempt is bounded by connect_timeout_ms, and
between attempts the node keeps measuring into the outbox.
"""

import random

import log
from mqtt import WIFI_LOST, Client, MQTTError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from board_esp32 import Board

STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"
# config.CONNECT_MS counts it in the watchdog's worst case (a test keeps the two equal). Not imported
# from config: compiling config inside link's import needs more contiguous heap than 110 KB leave.
CONNECT_TIMEOUT_MS = 5000


def backoff_delay_ms(attempt: int, min_ms: int, max_ms: int, rand16: int) -> int:
    """Exponential backoff with 'equal jitter': half the step fixed, half random (rand16 in 0..65535)."""
    step = min_ms << min(attempt, 20)
    if step > max_ms:
        step = max_ms
    half = step // 2
    return half + (half * rand16) // 65536


_LOGIN_ACTION = "check mqtt_user, mqtt_password in config.json (iot devices show); removed boards stay out"


class Link:
    def __init__(self, board: Board, cfg: dict, host: str, port: int, tls: bool,
                 on_ack: Callable[[memoryview, memoryview], None] | None = None,
                 on_fleet: Callable[[bytes, memoryview], None] | None = None) -> None:
        self._board = board
        base = "sensors/" + cfg["place"] + "/" + cfg["device"] + "/"
        # Encoded once: publish copies them into its packet buffer as they are.
        self.reading_topic = (base + "reading").encode()
        self.status_topic = (base + "status").encode()
        self.health_topic = (base + "health").encode()
        self.ack_topic = (base + "ack").encode()
        self._base = base.encode()
        self._on_ack = on_ack
        # The operator's config and updates for this board (remote_config.py, ota.py): QoS 1, so the
        # retained config and offer arrive once per connect even over a lossy link.
        self._on_fleet = on_fleet
        self._fleet_topics = ((base + "config").encode(), (base + "ota/#").encode()) if on_fleet else ()
        self.client = Client(
            board,
            cfg["device"],
            host,
            port,
            int(cfg["keepalive_s"]),
            cfg["mqtt_user"],
            cfg["mqtt_password"],
            tls,
            cfg["tls_verify"],
            cfg["tls_ca_file"],
            base + "status",
            STATUS_OFFLINE,
            self._message if on_ack is not None or on_fleet is not None else None,
        )
        self._cfg = cfg
        self._min_ms = int(cfg["backoff_min_s"] * 1000)
        self._max_ms = int(cfg["backoff_max_s"] * 1000)
        self._puback_ms = int(cfg["puback_timeout_s"] * 1000)
        self._retries = cfg["publish_retries"]
        self._attempt = 0
        self._next_try = board.ticks_ms()
        self.reconnects = 0
        self._was_up = False
        self.just_connected = False
        # mbedTLS checks certificate dates against the RTC: a verified TLS connect waits for NTP.
        self.clock_ok = not (tls and cfg["tls_verify"])
        self._said_waiting = False

    def _message(self, topic: memoryview, payload: memoryview) -> None:
        name = bytes(topic)  # memoryview has no ==
        if self._on_ack is not None and name == self.ack_topic:
            self._on_ack(topic, payload)
        elif self._on_fleet is not None and name.startswith(self._base):
            self._on_fleet(name[len(self._base):], payload)

    @property
    def up(self) -> bool:
        return self.client.connected

    def _schedule_retry(self, why: str) -> None:
        delay = backoff_delay_ms(self._attempt, self._min_ms, self._max_ms, random.getrandbits(16))
        self._attempt += 1
        self._next_try = self._board.ticks_add(self._board.ticks_ms(), delay)
        log.event("link_retry", reason=why, retry_in_ms=delay, attempt=self._attempt)

    def check_wifi(self) -> None:
        """Drop the session at once when Wi-Fi is gone. With lwIP an open socket raises nothing when
        the access point goes: reads wait, writes fill the send buffer, and only PUBACK timeouts
        ((publish_retries + 1) x puback_timeout_s per drain) would tell. The port clears
        isconnected() on the disconnect event (network_wlan.c), so that is asked instead."""
        if self.client.connected and not self._board.wifi_up():
            self.client.close()
            self._wifi_lost()

    def _wifi_lost(self) -> None:
        log.event("link_down", error="wifi lost", action="measuring into the outbox; will reconnect")
        self._schedule_retry("wifi_lost")

    def _lost(self, exc: Exception) -> None:
        self.client.close()
        if isinstance(exc, MQTTError) and exc.kind == WIFI_LOST:  # noticed inside a wait (mqtt.py)
            self._wifi_lost()
            return
        log.event("link_down", error=exc, action="measuring into the outbox; will reconnect")
        self._schedule_retry("lost")

    def service(self, wait_ms: int) -> None:
        """Connect if due, keep the session alive; waits at most wait_ms for incoming packets."""
        board = self._board
        if self.client.connected:
            try:
                # What else already arrived too (update chunks come a window at a time), bounded.
                more = 8 if self.client.service(wait_ms) else 0
                while more and self.client.service(0):
                    more -= 1
            except (MQTTError, OSError) as exc:
                self._lost(exc)
            return
        if board.ticks_diff(board.ticks_ms(), self._next_try) < 0:
            if wait_ms:
                board.sleep_ms(min(wait_ms, max(0, board.ticks_diff(self._next_try, board.ticks_ms()))))
            return
        if not board.wifi_up():
            board.wifi_start(self._cfg["wifi_ssid"], self._cfg["wifi_password"])
            self._schedule_retry("wifi_down")
            return
        if not self.clock_ok:
            if not self._said_waiting:
                self._said_waiting = True
                log.event(
                    "link_waiting_for_ntp", action="TLS verifies certificate dates; connecting after NTP"
                )
            self._next_try = board.ticks_add(board.ticks_ms(), 1000)
            return
        try:
            self.client.connect(CONNECT_TIMEOUT_MS)
            if self._on_ack is not None and not self.client.subscribe(self.ack_topic, self._puback_ms):
                log.event("ack_subscribe_refused", topic=self.ack_topic.decode(),
                          action="re-sent with a growing wait; let the board read its ack topic")
            for topic in self._fleet_topics:  # refused (an ACL without them): no remote config or updates
                if not self.client.subscribe(topic, self._puback_ms, 1):
                    log.event("subscribe_refused", topic=topic.decode())
            self.client.publish(self.status_topic, STATUS_ONLINE, 1, True, self._puback_ms, self._retries)
        except (MQTTError, OSError, ValueError) as exc:
            # ValueError: the TLS CA file is not a certificate (mbedTLS refused it).
            self.client.close()
            # A refused login (CONNACK 4 or 5) is no network trouble: say what to check.
            login = str(exc).endswith(("not authorised", "password"))
            log.event("link_connect_failed", broker=self.client.host, port=self.client.port, error=exc,
                      action=_LOGIN_ACTION if login else "retrying")
            self._schedule_retry("connect_failed")
            return
        if self._was_up:  # not the first session: waiting for Wi-Fi at boot is no reconnect
            self.reconnects += 1
        self._was_up = True
        self._attempt = 0
        self.just_connected = True
        log.event("link_up", broker=self.client.host, port=self.client.port, reconnects=self.reconnects)

    def publish_reading(self, payload: bytes | bytearray | memoryview) -> bool:
        """QoS 1 publish; True once the broker acknowledged it."""
        try:
            self.client.publish(self.reading_topic, payload, 1, False, self._puback_ms, self._retries)
        except (MQTTError, OSError) as exc:
            self._lost(exc)
            return False
        return True

    def publish_health(self, payload: bytes) -> None:
        try:
            self.client.publish(self.health_topic, payload, 0, True)
        except (MQTTError, OSError) as exc:
            self._lost(exc)

    def close(self) -> None:
        """Clean shutdown: say offline ourselves, then disconnect (so the will is not needed)."""
        if self.client.connected:
            try:
                self.client.publish(self.status_topic, STATUS_OFFLINE, 1, True, self._puback_ms, 0)
            except (MQTTError, OSError) as exc:
                log.event("link_close_unclean", error=exc)
        self.client.disconnect()
