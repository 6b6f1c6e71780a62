"""One firmware-like board of the soak's fleet (bench/soak_fleet.py): it measures payload v1 readings
with (device, boot, seq) ids into its outbox (bench/soak_outbox.py: the firmware's window, ack timeout
and backoff) and publishes them at QoS 1 on its own MQTT 3.1.1 connection (bench/soak_mqtt.py): clean
session as the firmware's, subscribed to its own `sensors/{place}/{device}/ack` (docs/CONTRACT.md).

The connection is watched as the firmware watches its own: a CONNACK+SUBACK within CONNECT_TIMEOUT_S,
a PINGREQ when quiet, the link dropped when nothing came for 1.5 keepalives or a PUBACK is later than
PUBACK_TIMEOUT_S; reconnects back off from BACKOFF_MIN_S to BACKOFF_MAX_S.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import TYPE_CHECKING

import soak_mqtt
from soak_mqtt import CONNACK, PUBACK, PUBLISH, SUBACK, Link
from soak_outbox import Outbox

if TYPE_CHECKING:
    from soak_fleet import Fleet

PUBLISH_WINDOW = 16  # PUBLISHes not yet PUBACKed
KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 10.0
# Like the firmware's puback_timeout_s: a PUBACK this late means the link is bad, so reconnect (and
# re-send the window) instead of waiting on it forever.
PUBACK_TIMEOUT_S = 10.0
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 5.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Board:
    def __init__(self, fleet: Fleet, place: str, device: str, boot: int, index: int) -> None:
        self.fleet = fleet
        self.place, self.device, self.boot, self.index = place, device, boot, index
        self.topic = soak_mqtt.topic_name(f"sensors/{place}/{device}/reading")
        self.ack_topic = f"sensors/{place}/{device}/ack"
        self.outbox = Outbox(fleet.ack_timeout_s, fleet.ack_timeout_max_s)
        self.inflight: dict[int, float] = {}  # packet id -> when sent, not yet PUBACKed
        self.link: Link | None = None
        self.ready = False
        self.connect_started = 0.0
        self.last_tx = 0.0
        self.last_rx = 0.0
        self.next_seq = 0
        self.next_pid = 0
        self.lost = asyncio.Event()
        self.ready_once = False

    # --- readings -----------------------------------------------------------------------------

    def measure(self) -> None:
        seq = self.next_seq
        self.next_seq += 1
        d = self.index
        ts = now_ms()
        reading = {
            "v": 1,
            "device": self.device,
            "place": self.place,
            "boot": self.boot,
            "seq": seq,
            "ts": ts,
            "time_valid": True,
            # Multiples of 1/64: exact in binary, so a window's mean has one right answer.
            "temperature": 15 + ((seq * 7 + d) % 640) / 64,
            "humidity": 40 + ((seq * 3 + d) % 1280) / 64,
            "pressure": 1000 + ((seq + d) % 640) / 64,
            "luminosity": None if seq % 97 == 5 else ((seq * 11 + d) % 64000) / 64,
            "fw": "soak-1.0",
        }
        self.outbox.push(seq, json.dumps(reading, separators=(",", ":")).encode(), ts)
        self.fleet.published += 1
        self.pump()

    def pump(self) -> None:
        """Publish what the outbox lets go now."""
        link = self.link
        if link is None or not self.ready:
            return
        fleet = self.fleet
        now = time.monotonic()
        while len(self.inflight) < PUBLISH_WINDOW:
            entry = self.outbox.next_entry(now)
            if entry is None:
                break
            pid = self._packet_id()
            link.write(soak_mqtt.publish(self.topic, pid, entry.payload))
            if entry.sends > 1:
                fleet.resent += 1
            else:
                # The generator's own part of ts -> Kafka: a reading measured while its board was
                # offline or its window full waits here, like on a board.
                fleet.send_ts.append(entry.ts_ms)
                fleet.send_lag.append(now_ms() - entry.ts_ms)
            self.inflight[pid] = now
            fleet.sent += 1
            self.last_tx = now

    def _packet_id(self) -> int:
        for _ in range(65536):
            self.next_pid = self.next_pid % 65535 + 1
            if self.next_pid not in self.inflight:
                return self.next_pid
        raise RuntimeError("no free packet id")

    def housekeeping(self, now: float) -> None:
        """Once a second: connect timeout, keepalive, PUBACK timeout, ack timeout."""
        link = self.link
        if link is None:
            return
        if not self.ready:
            if now - self.connect_started > CONNECT_TIMEOUT_S:
                link.close()
            return
        if now - self.last_rx > KEEPALIVE_S * 1.5:
            # The broker answers every PINGREQ: this long without a packet is a dead link.
            self.fleet.keepalive_timeouts += 1
            link.close()
            return
        if self.inflight and now - min(self.inflight.values()) > PUBACK_TIMEOUT_S:
            self.fleet.puback_timeouts += 1
            link.close()
            return
        if now - self.last_tx > KEEPALIVE_S / 2:
            link.write(soak_mqtt.PINGREQ)
            self.last_tx = now
        if self.outbox.ack_timed_out(now):
            self.fleet.ack_timeouts += 1
            self.pump()

    # --- MQTT ---------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_MIN_S
        fleet = self.fleet
        while not fleet.quitting:
            wait = fleet.outage_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait + random.uniform(0, 1.0))
                continue
            try:
                _t, link = await asyncio.wait_for(
                    loop.create_connection(lambda: Link(self), fleet.host, fleet.port), CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError, asyncio.CancelledError):
                if fleet.quitting:
                    raise
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                continue
            self.lost.clear()
            self.link = link
            self.connect_started = self.last_tx = self.last_rx = time.monotonic()
            link.write(soak_mqtt.connect(self.device, KEEPALIVE_S, fleet.passwords.get(self.device)))
            await self.lost.wait()
            if self.ready_once:
                backoff = BACKOFF_MIN_S
            self.ready_once = False
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    def on_packet(self, kind: int, body: bytes) -> None:
        self.last_rx = time.monotonic()
        if kind == PUBACK:
            if self.inflight.pop(soak_mqtt.packet_id(body), None) is not None:
                self.pump()
        elif kind == PUBLISH:
            self.on_ack(soak_mqtt.publish_fields(body, qos=0)[2])
        elif kind == CONNACK:
            if len(body) < 2 or body[1] != 0:
                self.fleet.refused += 1
                if self.link is not None:
                    self.link.close()
                return
            assert self.link is not None
            self.link.write(soak_mqtt.subscribe(self._packet_id(), self.ack_topic))
        elif kind == SUBACK:
            self.ready = self.ready_once = True
            self.fleet.connects += 1
            # The window goes again after a (re)connect, oldest first.
            self.outbox.rewind()
            self.pump()

    def on_ack(self, payload: bytes) -> None:
        try:
            ack = json.loads(payload)
            boot, ranges = ack["boot"], [(int(first), int(last)) for first, last in ack["ranges"]]
        except (ValueError, KeyError, TypeError):
            self.fleet.bad_acks += 1
            return
        self.fleet.acks += 1
        if boot != self.boot:
            return
        now = now_ms()
        for entry in self.outbox.ack(ranges):
            self.fleet.latency.append(now - entry.ts_ms)
            self.fleet.released += 1
        self.pump()

    def on_lost(self, link: Link) -> None:
        if link is not self.link:
            return
        self.link = None
        self.ready = False
        self.inflight.clear()
        self.outbox.rewind()
        self.lost.set()
