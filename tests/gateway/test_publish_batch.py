"""BatchingClient's own packet I/O against a socket: publish_batch writes each end-to-end ack as one
well-formed QoS 0 PUBLISH, in order, whatever the topic and payload sizes (one- and multi-byte
remaining lengths, batches over one 64 KiB write), decoded by paho's own packet decoder; ack_batch
writes the PUBACKs paho's ack() would; PUBLISH packets read from its buffer arrive whole and in
order however the stream is cut."""

from __future__ import annotations

import random
import select
import socket

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion

from gateway.mqtt_packets import remaining_length
from gateway.paho_client import BatchingClient

pytestmark = pytest.mark.unit


def _split(stream: bytes) -> list[tuple[int, bytes]]:
    """(command byte, body) of each MQTT packet in `stream`."""
    packets = []
    pos = 0
    while pos < len(stream):
        command = stream[pos]
        pos += 1
        length, shift = 0, 0
        while True:
            byte = stream[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        packets.append((command, stream[pos : pos + length]))
        pos += length
    return packets


def test_a_batch_of_acks_reaches_the_socket_as_one_publish_each_in_order() -> None:
    client = BatchingClient(CallbackAPIVersion.VERSION2, client_id="pb", protocol=mqtt.MQTTv5)
    ours, broker = socket.socketpair()
    broker.settimeout(5)
    ours.setblocking(False)
    client._sock = ours  # no network thread: publish_batch writes through loop_write itself
    messages = [
        (f"sensors/p{i % 7}/dev-{i % 300}/ack", b'{"boot":1,"ranges":[[%d,%d]]}' % (i, i))
        for i in range(2500)
    ]
    messages += [("sensors/k\u00e9/d/ack", b"x" * 90), ("sensors/k/d/ack", b"y" * 200_000), ("a/b", b"")]
    try:
        assert client.publish_batch(messages) == len(messages)
        bodies = [2 + len(t.encode()) + 1 + len(p) for t, p in messages]
        expected = sum(1 + len(remaining_length(n)) + n for n in bodies)
        stream = b""
        while len(stream) < expected:
            if client.want_write():
                client.loop_write()  # as much as the socket takes
            chunk = broker.recv(1 << 20)
            assert chunk, "socket closed early"
            stream += chunk
        got = []
        for command, body in _split(stream):
            decoded = _packet.decode_publish(command, body, mqtt.MQTTv5)
            assert (decoded.qos, decoded.retain, decoded.dup) == (0, False, False)
            assert decoded.properties is not None and decoded.properties.isEmpty()  # type: ignore[no-untyped-call]
            got.append((decoded.topic.decode(), decoded.payload))
        assert got == messages
    finally:
        ours.close()
        broker.close()


def test_a_batch_of_pubacks_reaches_the_socket_as_paho_writes_them_in_order() -> None:
    client = BatchingClient(
        CallbackAPIVersion.VERSION2, client_id="ab", protocol=mqtt.MQTTv5, manual_ack=True
    )
    ours, broker = socket.socketpair()
    broker.settimeout(5)
    ours.setblocking(False)
    client._sock = ours
    mids = [(i * 7919) % 65535 + 1 for i in range(20_000)]  # more than one write holds
    try:
        assert client.ack_batch(mids) == len(mids)
        # What paho's own ack() queues for each: PUBACK, remaining length 2, the packet id.
        expected = b"".join(b"\x40\x02" + mid.to_bytes(2, "big") for mid in mids)
        stream = b""
        while len(stream) < len(expected):
            if client.want_write():
                client.loop_write()
            chunk = broker.recv(1 << 20)
            assert chunk, "socket closed early"
            stream += chunk
        assert stream == expected
    finally:
        ours.close()
        broker.close()


def _publish_packet(topic: bytes, mid: int, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + mid.to_bytes(2, "big") + b"\x00" + payload
    return bytes([0x32]) + remaining_length(len(body)) + body


def test_packets_cut_anywhere_arrive_whole_and_in_order_through_the_read_buffer() -> None:
    client = BatchingClient(
        CallbackAPIVersion.VERSION2, client_id="rd", protocol=mqtt.MQTTv5, manual_ack=True
    )
    seen: list[tuple[str, int, bytes]] = []
    client.on_message = lambda _c, _u, m: seen.append((m.topic, m.mid, bytes(m.payload)))
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours
    rng = random.Random(7)
    sizes = [0, 1, 120, 121, 122, 16_370, 16_371, 70_000, 200_000, *(rng.randrange(400) for _ in range(300))]
    expected = [(f"sensors/p/d{i}/reading", i + 1, bytes([i % 251]) * size) for i, size in enumerate(sizes)]
    packets = [_publish_packet(t.encode(), mid, p) for t, mid, p in expected]
    packets[3:3] = packets[100:100] = [b"\xd0\x00"]  # PINGRESPs among them: paho's own path
    stream = b"".join(packets)
    # Where the stream is cut between two reads: inside the fixed header of some packets (after the
    # command byte, after each length byte), a byte before the end of others, and at random offsets.
    starts = [sum(map(len, packets[:k])) for k in range(len(packets))]
    cuts = {start + d for start in starts[150:200] for d in (-1, 1, 2, 3)}
    cuts |= {rng.randrange(len(stream)) for _ in range(400)}
    try:
        pos = 0
        for cut in [*sorted(cuts), len(stream)]:
            broker.sendall(stream[pos:cut])
            pos = cut
            for _ in range(50):  # until the socket is drained: a bounded loop
                if client.loop_read() != mqtt.MQTT_ERR_SUCCESS or not _readable(ours):
                    break
        for _ in range(50):
            client.loop_read()
        assert seen == expected
    finally:
        ours.close()
        broker.close()


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])
