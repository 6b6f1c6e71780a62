"""A paho-mqtt 2.x Client with cheaper socket I/O for a high-rate QoS 1 subscriber.

Measured (bench/gateway_throughput.py with --profile): stock paho spends most of a gateway's time in
system calls: 2-3 `recv` per incoming PUBLISH (command byte, length byte, body), one `select` per
packet, and per PUBACK one `send` on the socket plus one wake-up byte to its network thread. This
subclass
  * reads the socket in 64 KiB chunks and parses every whole packet in the chunk in one pass; a
    PUBLISH already whole in the chunk is sliced out directly (`_packet_read`), not read through
    3-4 `_sock_recv` calls;
  * queues a batch of PUBACKs, built as bytes, with a single wake-up (`ack_batch`), and writes
    consecutive queued PUBACKs with one `send`;
  * queues a batch of QoS 0 publishes (the end-to-end acks) with a single wake-up (`publish_batch`),
    each packet built here as bytes: paho's `publish` makes a `MQTTMessageInfo` (with a
    `threading.Condition`) per message and `_packet_write` sends each packet on its own;
  * writes consecutive queued PUBACKs and end-to-end acks with one `send`;
  * reads a PUBLISH without properties (every reading) itself (`_plain_publish`): paho's parser
    builds a `Properties` object and a `threading.Condition` per message, ~15 % of a reading's CPU;
  * takes no PUBLISH while its `take_gate` says no (the gateway's in-flight bound, see `_loop`);
  * hands on a PUBLISH whose MQTT v5 properties paho cannot parse without them (`_handle_publish`).
    A board may attach a user property holding U+FEFF: Mosquitto 2.0.11 accepts and forwards it (valid
    UTF-8), paho 2.2 refuses it as a malformed packet and drops the connection, and the broker
    redelivers the same message at every reconnect: one such reading kept the gateway reconnecting
    once a second for good, bridging nothing (issue #19). The gateway reads no property of a reading.
Measured in a 2,000-board soak (bench/soak.py --tracemalloc): with paho's `publish`, the ack packets
queued for the network thread were the gateway's largest allocation (30-85 MB traced, swinging:
Conditions, packet dicts, message infos), and PUBACKs to the broker waited behind them.
It overrides paho private methods (`_sock_recv`, `loop_read`, `_loop`, `_packet_read`, `_packet_queue`,
`_packet_write`, `_handle_publish`), calls `_packet_handle`, `_handle_on_message`, `_easy_log`,
`loop_misc` and `want_write`,
fills `MQTTMessage`'s slots and, for a client without per-topic callbacks, calls `on_message` itself
as `_handle_on_message` would (`_deliver`), which is why pyproject pins paho-mqtt < 3 and the
gateway's tests run on it end to end.
"""

from __future__ import annotations

import contextlib
import select
import struct
import threading
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.exception import MalformedPacket, MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

from iot import pins

__all__ = ["BatchingClient"]

# The private paho methods this client overrides, and the instance attributes it reads.
pins.require(
    "paho-mqtt",
    "2.2",
    [
        (mqtt.Client, name)
        for name in (
            "_sock_recv",
            "loop_read",
            "_loop",
            "loop_misc",
            "want_write",
            "_packet_queue",
            "_packet_write",
            "_handle_publish",
            "_handle_on_message",
            "_packet_read",
            "_packet_handle",
            "message_callback_add",
            "_easy_log",
        )
    ],
    "gateway/paho_client.py (BatchingClient)",
)
_INSTANCE_HOOKS = (
    "_sock",
    "_sockpairW",
    "_sockpairR",
    "_out_packet",
    "_protocol",
    "_in_packet",
    "_thread",
    "_manual_ack",
    "_on_message",
    "_userdata",
    "_in_callback_mutex",
    "suppress_exceptions",
    "_msgtime_mutex",
    "_last_bytes_received",
)
# MQTTMessage's slots, which _plain_publish fills itself instead of calling its __init__.
_MESSAGE_SLOTS = frozenset(
    ("_topic", "dup", "info", "mid", "payload", "properties", "qos", "retain", "state", "timestamp")
)
if frozenset(mqtt.MQTTMessage.__slots__) != _MESSAGE_SLOTS:
    raise pins.PinError("paho-mqtt MQTTMessage has other slots: re-check _plain_publish")

_READ_CHUNK = 65536
_PUBACK = 0x40
_PUBLISH = 0x30
_MAX_COALESCED_BYTES = 65536  # per send
_PUBACK_PACKET = struct.Struct("!BBH")  # command, remaining length 2, packet id
_PUBACKS_PER_WRITE = _MAX_COALESCED_BYTES // 4
# The fixed header of a QoS 0 PUBLISH whose remaining length is under 128 (one length byte).
_SHORT_PUBLISH = tuple(bytes([_PUBLISH, n]) for n in range(128))
# Topics whose encoded name (length prefix, name, empty properties) publish_batch keeps.
_MAX_TOPIC_HEADS = 16_384
# Queued packets built here (batched PUBACKs, end-to-end acks) carry the PUBACK kind whatever bytes
# they hold: after writing a PUBACK paho does nothing more (a QoS 0 PUBLISH would need a message info).
_RAW = _PUBACK


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
        self._topic_heads: dict[str, bytes] = {}
        self._filtered_callbacks = False  # message_callback_add was called: paho's dispatch then
        self._holding = False  # a PUBLISH waits unread in the buffer: the take gate said no
        self.take_gate: Callable[[], bool] | None = None
        """Asked (in the network thread) before each PUBLISH is taken from the stream; while it says no,
        the PUBLISH and everything behind it stay unread (the broker then meets TCP backpressure) and
        `wake()` makes the network thread ask again."""
        self.on_bad_properties: Callable[[bytes, str], None] | None = None
        """Called (in the network thread) with the raw topic and paho's complaint when a PUBLISH is
        handed on without the properties paho could not parse."""

    def network_alive(self) -> bool:
        """True while paho's network thread (loop_start) runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    # --- incoming PUBLISH -----------------------------------------------------------------------

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        if self._protocol == mqtt.MQTTv5:
            message = _plain_publish(self._in_packet["command"], self._in_packet["packet"])
            if message is not None and (message.qos == 0 or (message.qos == 1 and self._manual_ack)):
                # What paho's own _handle_publish does for these (its debug log aside): the message to
                # the callbacks; no PUBACK here (manual acks), none for QoS 0.
                self._deliver(message)
                return mqtt.MQTT_ERR_SUCCESS
            stripped = _without_bad_properties(self._in_packet["command"], self._in_packet["packet"])
            if stripped is not None:
                packet, topic, complaint = stripped
                self._in_packet["packet"] = packet
                if self.on_bad_properties is not None:
                    self.on_bad_properties(topic, complaint)
        rc: mqtt.MQTTErrorCode = super()._handle_publish()
        return rc

    def message_callback_add(self, sub: str, callback: Any) -> None:
        self._filtered_callbacks = True
        super().message_callback_add(sub, callback)

    def _deliver(self, message: mqtt.MQTTMessage) -> None:
        """paho's _handle_on_message for a client without per-topic callbacks (the gateway's): it
        matched every message's topic against an empty callback tree and decoded the topic twice for
        that, ~5 % of a reading's CPU. The same locks, and an exception from on_message is logged
        and re-raised (or suppressed) as paho does."""
        if self._filtered_callbacks:
            self._handle_on_message(message)
            return
        on_message = self._on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

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

    def _packet_read(self) -> mqtt.MQTTErrorCode:
        """One packet, as paho's _packet_read reads it, but a PUBLISH already whole in the read buffer
        (nearly every one) is taken in one slice: paho reads a packet through 3-4 `_sock_recv` calls
        (command byte, each length byte, body) with a dozen dict updates. A partial packet, another
        packet type, or a packet paho has begun goes paho's way."""
        gate = self.take_gate
        if gate is not None and self._in_packet["command"] == 0 and not gate():
            if not self._buffered():
                # The next packet's kind is known only once its first byte is read: one chunk into
                # the buffer, nothing parsed. A PINGRESP or SUBACK at the head still goes through.
                failed = self._fill()
                if failed is not None:
                    return failed
            if self._rbuf[self._rpos] & 0xF0 == _PUBLISH:
                self._holding = True
                return mqtt.MQTT_ERR_AGAIN
        self._holding = False
        buf, pos = self._rbuf, self._rpos
        if (
            self._in_packet["command"] != 0
            or self._sock is None
            or self._sock is not self._rsock
            or pos >= len(buf)
            or buf[pos] & 0xF0 != _PUBLISH
        ):
            return self._paho_packet_read()
        length, shift, i = 0, 0, pos + 1
        while True:
            if i >= len(buf) or i > pos + 4:  # length not all here, or longer than MQTT allows
                return self._paho_packet_read()
            byte = buf[i]
            length |= (byte & 0x7F) << shift
            shift += 7
            i += 1
            if not byte & 0x80:
                break
        end = i + length
        if end > len(buf):
            return self._paho_packet_read()
        self._rpos = end
        in_packet = self._in_packet
        in_packet["command"] = buf[pos]
        in_packet["have_remaining"] = 1
        in_packet["remaining_length"] = length
        in_packet["packet"] = buf[i:end]  # type: ignore[typeddict-item]  # bytes: decode_publish takes both
        in_packet["to_process"] = 0
        in_packet["pos"] = 0
        try:
            rc: mqtt.MQTTErrorCode = self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = mqtt.MQTT_ERR_PROTOCOL
        self._in_packet = _fresh_in_packet()
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        return rc

    def _fill(self) -> mqtt.MQTTErrorCode | None:
        """Read one chunk into the (consumed) buffer; None once bytes are there, else the code paho's
        _packet_read gives for the same outcome of its own read."""
        try:
            data: bytes = super()._sock_recv(_READ_CHUNK)
        except BlockingIOError:
            return mqtt.MQTT_ERR_AGAIN
        except OSError as err:
            self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return mqtt.MQTT_ERR_CONN_LOST
        if not data:
            return mqtt.MQTT_ERR_CONN_LOST
        self._rsock, self._rbuf, self._rpos = self._sock, data, 0
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        return None

    def _paho_packet_read(self) -> mqtt.MQTTErrorCode:
        rc: mqtt.MQTTErrorCode = super()._packet_read()
        return rc

    def _buffered(self) -> bool:
        return self._sock is not None and self._sock is self._rsock and self._rpos < len(self._rbuf)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc: mqtt.MQTTErrorCode = super().loop_read(max_packets)
        # Each pass consumes at least one buffered byte (or holds), so this ends.
        while rc == mqtt.MQTT_ERR_SUCCESS and self._buffered() and not self._holding:
            rc = super().loop_read(1)
        return rc

    def wake(self) -> None:
        """Make the network thread ask the take gate again (call it when the gate may have opened)."""
        self._wake()

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

    def stop(self, timeout: float = 5.0) -> bool:
        """Disconnect once everything queued is written (batched PUBACKs first, then DISCONNECT), then
        stop the network thread; False if that did not happen within `timeout`.

        paho's loop_stop() ends the network thread at once: right after disconnect() it can drop the
        PUBACKs still queued with the DISCONNECT, and the broker then redelivers those messages to the
        session (duplicates downstream; seen as ~100 redeliveries in tests/gateway/test_paho_client.py).
        paho calls on_disconnect only after it wrote the DISCONNECT, and it writes in queue order."""
        gone = threading.Event()
        previous = self.on_disconnect

        def on_disconnect(*args: Any) -> None:
            gone.set()
            if previous is not None:
                previous(*args)

        self.on_disconnect = on_disconnect
        try:
            connected = self._sock is not None and self.disconnect() == mqtt.MQTT_ERR_SUCCESS
            written = gone.wait(timeout) if connected and self._thread is not None else not connected
        finally:
            self.loop_stop()
            self.on_disconnect = previous
        return written

    # --- writes ---------------------------------------------------------------------------------

    def ack_batch(self, mids: Iterable[int]) -> int:
        """PUBACK every QoS 1 message id in `mids` with one wake-up of the network thread.

        Built here as the bytes paho's `ack` would queue (`40 02 <mid>`, no reason code: success),
        one queued write per 16,384 of them: paho's path (ack, _send_puback, its debug log call,
        _send_command_with_mid, a queued-packet dict) per message was ~10 % of a reading's Python
        time. A client without manual acks keeps paho's `ack` (which then sends nothing)."""
        if not self._manual_ack:
            return self._ack_each(mids)
        packets = [_PUBACK_PACKET.pack(_PUBACK, 2, mid) for mid in mids]
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
            fixed = _SHORT_PUBLISH[length] if length < 128 else bytes([_PUBLISH]) + remaining_length(length)
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


def _plain_publish(command: int, packet: bytes | bytearray) -> mqtt.MQTTMessage | None:
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


def _without_bad_properties(command: int, packet: bytes | bytearray) -> tuple[bytearray, bytes, str] | None:
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


def _fresh_in_packet() -> Any:  # paho's _InPacket (a TypedDict for type checkers only)
    """The empty incoming-packet state paho sets after each packet."""
    return {
        "command": 0,
        "have_remaining": 0,
        "remaining_count": [],
        "remaining_mult": 1,
        "remaining_length": 0,
        "packet": bytearray(b""),
        "to_process": 0,
        "pos": 0,
    }


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


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer (the fixed header's remaining length); bench/soak_fleet.py's
    boards write theirs with it too."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
