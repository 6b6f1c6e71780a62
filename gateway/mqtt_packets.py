"""MQTT v5 packets read and built as bytes, without paho's per-packet objects (no client state).

`plain_publish` reads a PUBLISH without properties (every board's reading); `without_bad_properties`
strips a property block paho cannot parse (issue #19, see gateway/paho_client.py); `remaining_length`
and the packet constants build what the gateway writes (gateway/batched_writes.py).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.exception import MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

from iot import pins

__all__ = [
    "PUBACK",
    "PUBACK_PACKET",
    "PUBLISH",
    "SHORT_PUBLISH",
    "plain_publish",
    "remaining_length",
    "require_paho",
    "without_bad_properties",
]


def require_paho(hooks: Iterable[str], why: str) -> None:
    """Check at import that paho-mqtt is the minor version the gateway client's layers were written
    for and still has the private `mqtt.Client` methods `hooks` (each layer names its own)."""
    pins.require("paho-mqtt", "2.2", [(mqtt.Client, name) for name in hooks], why)


# MQTTMessage's slots, which plain_publish fills itself instead of calling its __init__.
_MESSAGE_SLOTS = frozenset(
    ("_topic", "dup", "info", "mid", "payload", "properties", "qos", "retain", "state", "timestamp")
)
if frozenset(mqtt.MQTTMessage.__slots__) != _MESSAGE_SLOTS:
    raise pins.PinError("paho-mqtt MQTTMessage has other slots: re-check plain_publish")

PUBACK = 0x40
PUBLISH = 0x30
PUBACK_PACKET = struct.Struct("!BBH")  # command, remaining length 2, packet id
# The fixed header of a QoS 0 PUBLISH whose remaining length is under 128 (one length byte).
SHORT_PUBLISH = tuple(bytes([PUBLISH, n]) for n in range(128))


def plain_publish(command: int, packet: bytes | bytearray) -> mqtt.MQTTMessage | None:
    """The message of an MQTT v5 PUBLISH without properties (a property length of 0, what a board's
    reading carries), parsed without paho's `decode_publish`, which builds a `Properties` object for
    every PUBLISH, and `MQTTMessage()`, which builds a `threading.Condition` (in its message info,
    used only for outgoing messages): together ~37 us of a reading (~15 %) on this box. None for
    anything else (properties, QoS 2, a packet too short), which paho's own path then takes, errors
    included. The message's `properties` is None: the gateway reads none."""
    qos = (command & 0x06) >> 1
    if qos == 2 or len(packet) < 2:
        return None
    topic_end = 2 + ((packet[0] << 8) | packet[1])
    start = topic_end + 2 if qos else topic_end  # QoS 1: the packet id follows the topic
    if start >= len(packet) or packet[start] != 0:
        return None
    message: mqtt.MQTTMessage = mqtt.MQTTMessage.__new__(mqtt.MQTTMessage)
    message.timestamp = mqtt.time_func()
    message.state = mqtt.mqtt_ms_invalid
    message.dup = bool(command & 0x08)
    message.mid = (packet[topic_end] << 8) | packet[topic_end + 1] if qos else 0
    message._topic = bytes(packet[2:topic_end])
    message.payload = bytes(packet[start + 1 :])
    message.qos = qos
    message.retain = bool(command & 0x01)
    message.info = None  # type: ignore[assignment]
    message.properties = None
    return message


def without_bad_properties(command: int, packet: bytes | bytearray) -> tuple[bytearray, bytes, str] | None:
    """None when the PUBLISH's properties are absent (the normal case, checked without parsing) or
    parse; else (the packet with an empty property block, its raw topic, paho's complaint). A packet
    too short to tell is left to paho."""
    if len(packet) < 2:
        return None
    topic_end = 2 + int.from_bytes(packet[:2], "big")
    start = topic_end + (2 if command & 0x06 else 0)  # QoS > 0: a packet id follows the topic
    if start >= len(packet) or packet[start] == 0:
        return None
    block = bytes(packet[start:])
    try:
        Properties(PacketTypes.PUBLISH).unpack(block)  # type: ignore[no-untyped-call]
        return None
    except (MQTTException, ValueError, IndexError, KeyError, struct.error) as exc:
        complaint = f"{type(exc).__name__}: {exc}"
    try:
        length, length_size = VariableByteIntegers.decode(block)  # type: ignore[no-untyped-call]
    except (MQTTException, ValueError, IndexError):
        return None
    end = start + length_size + length
    if end > len(packet):
        return None
    return bytearray(packet[:start]) + b"\x00" + packet[end:], bytes(packet[2:topic_end]), complaint


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer (the fixed header's remaining length); bench/soak_fleet.py's
    boards write theirs with it too."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
