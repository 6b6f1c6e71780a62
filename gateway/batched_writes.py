"""The gateway's writes to the broker: batches of PUBACKs and end-to-end acks built as bytes, queued
with one wake-up of paho's network thread and written together.

Stock paho sends per PUBACK one `send` on the socket plus one wake-up byte to its network thread, and
its `publish` makes a `MQTTMessageInfo` (with a `threading.Condition`) per message and
`_packet_write` sends each packet on its own. Measured in a 2,000-board soak (bench/soak.py
--tracemalloc): with paho's `publish`, the ack packets queued for the network thread were the
gateway's largest allocation (30-85 MB traced, swinging: Conditions, packet dicts, message infos), and
PUBACKs to the broker waited behind them. The lowest layer of gateway/paho_client.py's client.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as mqtt

from .mqtt_packets import PUBACK, PUBACK_PACKET, PUBLISH, SHORT_PUBLISH, remaining_length, require_paho

__all__ = ["BatchedWritesClient"]

# The private paho methods this layer overrides (the instance attributes it reads: BatchingClient).
require_paho(("_packet_queue", "_packet_write"), "gateway/batched_writes.py (BatchedWritesClient)")

_MAX_COALESCED_BYTES = 65536  # per send
_PUBACKS_PER_WRITE = _MAX_COALESCED_BYTES // 4
# Topics whose encoded name (length prefix, name, empty properties) publish_batch keeps.
_MAX_TOPIC_HEADS = 16_384
# Queued packets built here (batched PUBACKs, end-to-end acks) carry the PUBACK kind whatever bytes
# they hold: after writing a PUBACK paho does nothing more (a QoS 0 PUBLISH would need a message info).
_RAW = PUBACK


class BatchedWritesClient(mqtt.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferring_wake = False
        self._topic_heads: dict[str, bytes] = {}

    def ack_batch(self, mids: Iterable[int]) -> int:
        """PUBACK every QoS 1 message id in `mids` with one wake-up of the network thread.

        Built here as the bytes paho's `ack` would queue (`40 02 <mid>`, no reason code: success),
        one queued write per 16,384 of them: paho's path (ack, _send_puback, its debug log call,
        _send_command_with_mid, a queued-packet dict) per message was ~10 % of a reading's Python
        time. A client without manual acks keeps paho's `ack` (which then sends nothing)."""
        if not self._manual_ack:
            return self._ack_each(mids)
        packets = [PUBACK_PACKET.pack(PUBACK, 2, mid) for mid in mids]
        for start in range(0, len(packets), _PUBACKS_PER_WRITE):
            self._out_packet.append(_raw(b"".join(packets[start : start + _PUBACKS_PER_WRITE])))
        if packets:
            self._wake()
        return len(packets)

    def _ack_each(self, mids: Iterable[int]) -> int:
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
        """Publish each (topic, payload) at QoS 0, not retained, with one wake-up; returns how many
        were queued (none while disconnected: QoS 0 is not kept). Topics must be valid topic names
        (no wildcards); they are not checked here."""
        if self._sock is None:
            return 0
        heads = self._topic_heads
        if len(heads) > _MAX_TOPIC_HEADS:
            heads.clear()  # topics are the boards': bounded by the fleet, but never trusted to be
        props = b"\x00" if self._protocol == mqtt.MQTTv5 else b""  # no properties
        packets: list[bytes] = []
        size = 0
        count = 0
        for topic, payload in messages:
            head = heads.get(topic)
            if head is None:
                name = topic.encode("utf-8")
                head = heads[topic] = len(name).to_bytes(2, "big") + name + props
            length = len(head) + len(payload)
            fixed = SHORT_PUBLISH[length] if length < 128 else bytes([PUBLISH]) + remaining_length(length)
            packets.append(fixed + head + payload)
            size += length
            count += 1
            if size >= _MAX_COALESCED_BYTES:
                # One queued write per chunk of packets rather than per packet.
                self._out_packet.append(_raw(b"".join(packets)))
                packets, size = [], 0
        if packets:
            self._out_packet.append(_raw(b"".join(packets)))
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
        if self._deferring_wake and (command & 0xF0 == PUBACK or (command & 0xF0 == PUBLISH and qos == 0)):
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
        """paho's write, after joining the queued packets built here at the head of the queue (up to
        64 KiB) into one: consecutive PUBACKs and end-to-end acks go out with one `send`."""
        out = self._out_packet
        if len(out) > 1 and _untouched_raw(out[0]) and _untouched_raw(out[1]):
            parts: list[bytes] = []
            size = 0
            while out and size < _MAX_COALESCED_BYTES and _untouched_raw(out[0]):
                part = bytes(out.popleft()["packet"])
                parts.append(part)
                size += len(part)
            out.appendleft(_raw(b"".join(parts)))
        rc: mqtt.MQTTErrorCode = super()._packet_write()
        return rc


def _raw(data: bytes) -> Any:  # paho's _OutPacket (a TypedDict it defines only for type checkers)
    """A queued packet paho writes and then forgets (see _RAW)."""
    return {
        "command": _RAW,
        "mid": 0,
        "qos": 0,
        "pos": 0,
        "to_process": len(data),
        "packet": data,
        "info": None,
    }


def _untouched_raw(packet: Any) -> bool:
    return bool(packet["command"] & 0xF0 == _RAW and packet["pos"] == 0)
