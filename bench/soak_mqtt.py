"""MQTT 3.1.1 on the wire for the soak's boards (bench/soak_board.py): the few packets a board writes,
the fields it reads, and the asyncio protocol that frames what the broker sends.

Written out rather than one paho client per board: 2,000 paho clients means 2,000 threads, and paho in
one process with many messages in flight collapses (shared/FACTS.md).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Protocol

from gateway.mqtt_packets import remaining_length

# Packet types (the fixed header's high nibble).
CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP = 2, 3, 4, 9, 13
PINGREQ = b"\xc0\x00"
_CLEAN_SESSION, _USER_AND_PASSWORD = 0x02, 0xC0
_MAX_LENGTH_BYTES = 4  # a remaining length takes at most four bytes


class MalformedPacket(Exception):
    """What the broker sent is not MQTT: the connection cannot be trusted any further."""


def _utf8(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _packet(header: int, body: bytes) -> bytes:
    return bytes([header]) + remaining_length(len(body)) + body


def connect(client_id: str, keepalive_s: int, password: str | None) -> bytes:
    """CONNECT with a clean session, as the firmware's; user name = client id when there is a password."""
    flags = _CLEAN_SESSION | (_USER_AND_PASSWORD if password else 0)
    cid = _utf8(client_id.encode())
    body = _utf8(b"MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive_s) + cid
    if password:
        body += cid + _utf8(password.encode())
    return _packet(0x10, body)


def subscribe(packet_id: int, topic: str) -> bytes:
    """SUBSCRIBE to one topic at QoS 0."""
    return _packet(0x82, struct.pack("!H", packet_id) + _utf8(topic.encode()) + b"\x00")


def topic_name(topic: str) -> bytes:
    """A topic as a PUBLISH carries it: encode once, publish many times."""
    return _utf8(topic.encode())


def publish(topic: bytes, packet_id: int, payload: bytes) -> bytes:
    """PUBLISH at QoS 1 to a topic from `topic_name`."""
    return _packet(0x32, topic + struct.pack("!H", packet_id) + payload)


def packet_id(body: bytes) -> int:
    """The packet id a PUBACK (or SUBACK) body starts with."""
    return int(struct.unpack_from("!H", body)[0])


def publish_fields(body: bytes, qos: int) -> tuple[bytes, int, bytes]:
    """(topic, packet id or 0 at QoS 0, payload) of a PUBLISH body."""
    (n,) = struct.unpack_from("!H", body)
    topic, rest = body[2 : 2 + n], body[2 + n :]
    if not qos:
        return topic, 0, rest
    return topic, packet_id(rest), rest[2:]


def take_packets(buf: bytearray) -> list[tuple[int, bytes]]:
    """Every whole packet at the front of `buf`, as (type, body), taken off it; a partial one stays."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while len(buf) - pos >= 2:
        length, mult, i = 0, 1, pos + 1
        while True:
            if i >= len(buf):
                del buf[:pos]
                return out
            byte = buf[i]
            length += (byte & 0x7F) * mult
            mult *= 128
            i += 1
            if not byte & 0x80:
                break
            if i - pos > _MAX_LENGTH_BYTES:
                raise MalformedPacket(f"remaining length of more than {_MAX_LENGTH_BYTES} bytes")
        if len(buf) < i + length:
            break
        out.append((buf[pos] >> 4, bytes(buf[i : i + length])))
        pos = i + length
    del buf[:pos]
    return out


class Peer(Protocol):
    """What a Link hands the broker's packets to."""

    def on_packet(self, kind: int, body: bytes) -> None: ...

    def on_lost(self, link: Link) -> None: ...


class Link(asyncio.Protocol):
    """One board's TCP connection: frames the broker's packets and hands them to the board."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            packets = take_packets(self._buf)
        except MalformedPacket:
            self.close()
            return
        for kind, body in packets:
            self.peer.on_packet(kind, body)

    def connection_lost(self, _exc: Exception | None) -> None:
        self.peer.on_lost(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
