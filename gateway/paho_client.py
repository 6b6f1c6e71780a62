"""The gateway's paho-mqtt 2.x Client: cheaper socket I/O for a high-rate QoS 1 subscriber.

Measured (bench/gateway_throughput.py with --profile): stock paho spends most of a gateway's time in
system calls: 2-3 `recv` per incoming PUBLISH (command byte, length byte, body), one `select` per
packet, and per PUBACK one `send` on the socket plus one wake-up byte to its network thread. The
client is a stack of layers, each a module named for what it does:
  * gateway/batched_writes.py: batches of PUBACKs and QoS 0 publishes (the end-to-end acks) built
    as bytes, queued with a single wake-up and written together with one `send`;
  * gateway/read_buffer.py: the socket read in 64 KiB chunks;
  * gateway/take_gate.py: no PUBLISH taken while `take_gate` says no (the gateway's in-flight bound);
  * gateway/mqtt_packets.py: MQTT v5 packets read and built as bytes;
  * here, the reading of PUBLISH packets: every whole packet in the chunk parsed in one pass, a
    PUBLISH already whole in the chunk sliced out directly (`_packet_read`), not read through 3-4
    `_sock_recv` calls; a PUBLISH without properties (every reading) read by
    `mqtt_packets.plain_publish`: paho's parser builds a `Properties` object and a
    `threading.Condition` per message, ~15 % of a reading's CPU; a PUBLISH whose MQTT v5 properties
    paho cannot parse handed on without them (`_handle_publish`). A board may attach a user
    property holding U+FEFF: Mosquitto 2.0.11 accepts and forwards it (valid UTF-8), paho 2.2
    refuses it as a malformed packet and drops the connection, and the broker redelivers the same
    message at every reconnect: one such reading kept the gateway reconnecting once a second for
    good, bridging nothing (issue #19). The gateway reads no property of a reading.
The layers subclass one another in a line, so each paho method they override is defined once and
`super()` reaches paho's own in one step: the layering adds no call per reading. They override paho
private methods (`_sock_recv`, `loop_read`, `_loop`, `_packet_read`, `_packet_queue`,
`_packet_write`, `_handle_publish`), call `_packet_handle`, `_handle_on_message`, `_easy_log`,
`loop_misc` and `want_write`, fill `MQTTMessage`'s slots and, for a client without per-topic
callbacks, call `on_message` itself as `_handle_on_message` would (`_deliver`), which is why
pyproject pins paho-mqtt < 3 and the gateway's tests run on it end to end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.exception import MalformedPacket

from iot import pins

from .mqtt_packets import PUBLISH, plain_publish, require_paho, without_bad_properties
from .take_gate import TakeGateClient

__all__ = ["BatchingClient"]

# The private paho methods this module overrides or calls (each layer checks its own), and the
# instance attributes every layer reads.
require_paho(
    (
        "loop_read",
        "_handle_publish",
        "_handle_on_message",
        "_packet_read",
        "_packet_handle",
        "message_callback_add",
        "_easy_log",
    ),
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


class BatchingClient(TakeGateClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        missing = [name for name in _INSTANCE_HOOKS if not hasattr(self, name)]
        if missing:
            raise pins.PinError(f"paho-mqtt Client objects lack {missing}: re-check BatchingClient")
        self._filtered_callbacks = False  # message_callback_add was called: paho's dispatch then
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
            message = plain_publish(self._in_packet["command"], self._in_packet["packet"])
            if message is not None and (message.qos == 0 or (message.qos == 1 and self._manual_ack)):
                # What paho's own _handle_publish does for these (its debug log aside): the message to
                # the callbacks; no PUBACK here (manual acks), none for QoS 0.
                self._deliver(message)
                return mqtt.MQTT_ERR_SUCCESS
            stripped = without_bad_properties(self._in_packet["command"], self._in_packet["packet"])
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

    def _packet_read(self) -> mqtt.MQTTErrorCode:
        """One packet, as paho's _packet_read reads it, but a PUBLISH already whole in the read buffer
        (nearly every one) is taken in one slice: paho reads a packet through 3-4 `_sock_recv` calls
        (command byte, each length byte, body) with a dozen dict updates. A partial packet, another
        packet type, or a packet paho has begun goes paho's way."""
        gate = self.take_gate
        if gate is not None and self._in_packet["command"] == 0 and not gate():
            # Asked inline, as every packet passes here; take_gate.py only once the gate says no.
            held = self._hold()
            if held is not None:
                return held
        self._holding = False
        buf, pos = self._rbuf, self._rpos
        if (
            self._in_packet["command"] != 0
            or self._sock is None
            or self._sock is not self._rsock
            or pos >= len(buf)
            or buf[pos] & 0xF0 != PUBLISH
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

    def _paho_packet_read(self) -> mqtt.MQTTErrorCode:
        rc: mqtt.MQTTErrorCode = super()._packet_read()
        return rc

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc: mqtt.MQTTErrorCode = super().loop_read(max_packets)
        # Each pass consumes at least one buffered byte (or holds), so this ends.
        while rc == mqtt.MQTT_ERR_SUCCESS and self._buffered() and not self._holding:
            rc = super().loop_read(1)
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
