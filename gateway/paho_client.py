"""A paho-mqtt 2.x Client with cheaper socket I/O for a high-rate QoS 1 subscriber.

Measured (bench/gateway_throughput.py with --profile): stock paho spends most of a gateway's time in
system calls: 2-3 `recv` per incoming PUBLISH (command byte, length byte, body), one `select` per
packet, and per PUBACK one `send` on the socket plus one wake-up byte to its network thread. This
subclass
  * reads the socket in 64 KiB chunks and parses every whole packet in the chunk in one pass;
  * queues a batch of PUBACKs with a single wake-up (`ack_batch`), and writes consecutive queued
    PUBACKs with one `send`;
  * queues a batch of QoS 0 publishes (the end-to-end acks) with a single wake-up (`publish_batch`).
It overrides paho private methods (`_sock_recv`, `loop_read`, `_packet_queue`, `_packet_write`),
which is why pyproject pins paho-mqtt < 3 and the gateway's tests run on it end to end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as mqtt

from iot import pins

__all__ = ["BatchingClient"]

# The private paho methods this client overrides, and the instance attributes it reads.
pins.require(
    "paho-mqtt",
    "2.2",
    [(mqtt.Client, name) for name in ("_sock_recv", "loop_read", "_packet_queue", "_packet_write")],
    "gateway/paho_client.py (BatchingClient)",
)
_INSTANCE_HOOKS = ("_sock", "_sockpairW", "_out_packet")

_READ_CHUNK = 65536
_PUBACK = 0x40
_PUBLISH = 0x30
_MAX_COALESCED = 2048  # PUBACKs per send: 4 bytes each


class BatchingClient(mqtt.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        missing = [name for name in _INSTANCE_HOOKS if not hasattr(self, name)]
        if missing:
            raise pins.PinError(f"paho-mqtt Client objects lack {missing}: re-check BatchingClient")
        self._rbuf = b""
        self._rpos = 0
        self._rsock: object = None
        self._deferring_wake = False

    # --- reads ----------------------------------------------------------------------------------

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._sock is not self._rsock:
            # A new connection: bytes buffered from the old socket must never be parsed as its own.
            self._rsock, self._rbuf, self._rpos = self._sock, b"", 0
        if self._rpos >= len(self._rbuf):
            data: bytes = super()._sock_recv(_READ_CHUNK)
            if not data:
                return data
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start : self._rpos]

    def _buffered(self) -> bool:
        return self._sock is not None and self._sock is self._rsock and self._rpos < len(self._rbuf)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc: mqtt.MQTTErrorCode = super().loop_read(max_packets)
        # Each pass consumes at least one buffered byte, so this ends with the buffer.
        while rc == mqtt.MQTT_ERR_SUCCESS and self._buffered():
            rc = super().loop_read(1)
        return rc

    # --- writes ---------------------------------------------------------------------------------

    def ack_batch(self, mids: Iterable[int]) -> int:
        """PUBACK every QoS 1 message id in `mids` with one wake-up of the network thread."""
        count = 0
        self._deferring_wake = True
        try:
            for mid in mids:
                if self.ack(mid, 1) == mqtt.MQTT_ERR_SUCCESS:
                    count += 1
        finally:
            self._deferring_wake = False
        if count:
            self._wake()
        return count

    def publish_batch(self, messages: Iterable[tuple[str, bytes]]) -> int:
        """Publish each (topic, payload) at QoS 0 with one wake-up; returns how many were queued
        (none while disconnected: QoS 0 is not kept)."""
        count = 0
        self._deferring_wake = True
        try:
            for topic, payload in messages:
                if self.publish(topic, payload, qos=0).rc == mqtt.MQTT_ERR_SUCCESS:
                    count += 1
        finally:
            self._deferring_wake = False
        if count:
            self._wake()
        return count

    def _wake(self) -> None:
        sock = self._sockpairW
        if sock is not None:
            # A full wake-up pipe already guarantees the loop wakes.
            with contextlib.suppress(BlockingIOError):
                sock.send(b"0")
        elif self._thread is None:
            self.loop_write()

    def _packet_queue(
        self, command: int, packet: bytes | bytearray, mid: int, qos: int, info: Any = None
    ) -> mqtt.MQTTErrorCode:
        if self._deferring_wake and (command & 0xF0 == _PUBACK or (command & 0xF0 == _PUBLISH and qos == 0)):
            self._out_packet.append(
                {
                    "command": command,
                    "mid": mid,
                    "qos": qos,
                    "pos": 0,
                    "to_process": len(packet),
                    "packet": packet,
                    "info": info,
                }
            )
            return mqtt.MQTT_ERR_SUCCESS
        rc: mqtt.MQTTErrorCode = super()._packet_queue(command, packet, mid, qos, info)
        return rc

    def _packet_write(self) -> mqtt.MQTTErrorCode:
        out = self._out_packet
        if len(out) > 1 and _untouched_puback(out[0]) and _untouched_puback(out[1]):
            parts: list[bytes] = []
            while out and len(parts) < _MAX_COALESCED and _untouched_puback(out[0]):
                parts.append(bytes(out.popleft()["packet"]))
            data = b"".join(parts)
            # Written as one packet of PUBACK kind: paho does nothing after a PUBACK is written.
            out.appendleft(
                {
                    "command": _PUBACK,
                    "mid": 0,
                    "qos": 0,
                    "pos": 0,
                    "to_process": len(data),
                    "packet": data,
                    "info": None,
                }
            )
        rc: mqtt.MQTTErrorCode = super()._packet_write()
        return rc


def _untouched_puback(packet: Any) -> bool:
    return bool(packet["command"] & 0xF0 == _PUBACK and packet["pos"] == 0)
