"""The take gate: the gateway client reads no further PUBLISH while the gateway holds
IOT_GATEWAY_MAX_IN_FLIGHT readings Kafka has not confirmed.

The broker should stop at the Receive Maximum by itself, but Mosquitto 2.0.11 does not hold it while
acks flow (each PUBACK refills the window by the acked message's place in it; fixed in 2.0.13):
draining a backlog it sent 925-1,191 readings at once against a bound of 50 (gateway/README.md,
tests/gateway/test_in_flight_bound.py). While the gate says no, the PUBLISH at the head of the read
buffer and everything behind it stay unread, so the broker meets TCP backpressure, and writes,
wake-ups and keep-alive go on. A layer of gateway/paho_client.py's client, whose `_packet_read` asks
the gate before each packet.
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from .mqtt_packets import PUBLISH, require_paho
from .read_buffer import BufferedReadClient

__all__ = ["TakeGateClient"]

require_paho(("_loop", "loop_misc", "want_write"), "gateway/take_gate.py (TakeGateClient)")


class TakeGateClient(BufferedReadClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._holding = False  # a PUBLISH waits unread in the buffer: the take gate said no
        self.take_gate: Callable[[], bool] | None = None
        """Asked (in the network thread) before each PUBLISH is taken from the stream; while it says no,
        the PUBLISH and everything behind it stay unread (the broker then meets TCP backpressure) and
        `wake()` makes the network thread ask again."""

    def wake(self) -> None:
        """Make the network thread ask the take gate again (call it when the gate may have opened)."""
        self._wake()

    def _hold(self) -> mqtt.MQTTErrorCode | None:
        """The gate said no before a packet: MQTT_ERR_AGAIN if that packet is a PUBLISH (now held),
        the failure of reading its first byte, or None to read it (a PINGRESP or SUBACK at the head
        still goes through)."""
        if not self._buffered():
            # The next packet's kind is known only once its first byte is read: one chunk into the
            # buffer, nothing parsed.
            failed = self._fill()
            if failed is not None:
                return failed
        if self._rbuf[self._rpos] & 0xF0 == PUBLISH:
            self._holding = True
            return mqtt.MQTT_ERR_AGAIN
        return None

    def _loop(self, timeout: float = 1.0) -> mqtt.MQTTErrorCode:
        """paho's loop step, except while a PUBLISH is held: then the socket is not selected for
        reading (it stays readable: selecting it would spin), and writes, wake-ups and keep-alive go
        on. A held PUBLISH is taken, with the rest of the buffer, as soon as the gate opens."""
        if self._holding and (self._sock is None or self._sock is not self._rsock):
            # Held bytes of a connection that is gone: never parsed (the broker redelivers them).
            self._holding = False
        if self._holding:
            gate = self.take_gate
            if gate is None or gate():
                rc = self.loop_read()
                if rc != mqtt.MQTT_ERR_SUCCESS or self._sock is None:
                    return rc
            if self._holding and self._sock is not None:
                return self._loop_holding(timeout)
        rc2: mqtt.MQTTErrorCode = super()._loop(timeout)
        return rc2

    def _loop_holding(self, timeout: float) -> mqtt.MQTTErrorCode:
        sock, wakeup = self._sock, self._sockpairR
        assert sock is not None
        try:
            readable, writable, _ = select.select(
                [wakeup] if wakeup is not None else [], [sock] if self.want_write() else [], [], timeout
            )
        except (OSError, TypeError, ValueError):
            # The socket went away under select: paho's own step meets the same and handles it.
            rc: mqtt.MQTTErrorCode = super()._loop(0.0)
            return rc
        if wakeup is not None and wakeup in readable:
            with contextlib.suppress(BlockingIOError):
                wakeup.recv(10000)
            writable = [sock]  # a wake-up usually means packets were queued: write them now
        if sock in writable:
            rc = self.loop_write()
            if rc != mqtt.MQTT_ERR_SUCCESS or self._sock is None:
                return rc
        # Keep-alive: the PINGRESP to our PINGREQ is behind the held PUBLISH, so paho, which counts
        # only bytes it has read, would call the connection dead after 2 x keepalive. Unread bytes
        # from the broker are waiting, so it lives; paho still sends a PINGREQ every keepalive, which
        # keeps the broker's side of keep-alive, and a dead broker fails those writes.
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        rc = self.loop_misc()
        return rc
