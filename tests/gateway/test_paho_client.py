"""The buffered/batching paho client against the real broker: packets of every size, straddling its
64 KiB read chunks, arrive whole and in order, and batched acks settle every one of them."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.paho_client import BatchingClient
from tests.gateway.conftest import SHARED, Publisher
from tests.support import unique, wait_for

pytestmark = pytest.mark.integration


def _payload(i: int) -> bytes:
    # Sizes from 0 to ~60 KB in an irregular cycle, so packet bounds fall everywhere in a chunk.
    size = (i * 7919) % 60_000 if i % 3 else i % 200
    return (f"{i}:".encode() * (size // 4 + 1))[:size]


def test_every_packet_arrives_whole_and_in_order_and_batched_acks_settle_them() -> None:
    topic = f"sensors/{unique('pc')}/dev/reading"
    count = 400
    received: list[tuple[int, bytes]] = []
    lock = threading.Lock()

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with lock:
            received.append((message.mid, bytes(message.payload)))

    client_id = unique("pcsub")
    client = BatchingClient(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
    )
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 60
    props.ReceiveMaximum = 100
    client.connect(*SHARED.prepare(client), clean_start=True, properties=props)
    client.loop_start()
    subscribed = threading.Event()
    client.on_subscribe = lambda *_a: subscribed.set()
    client.subscribe(topic, qos=1)
    assert subscribed.wait(10)

    publisher = Publisher()
    acked = 0

    def publish() -> None:
        for i in range(count):
            publisher.publish_raw(topic, _payload(i))

    sender = threading.Thread(target=publish, daemon=True)
    sender.start()

    def all_received_and_acked() -> bool:
        nonlocal acked
        with lock:
            batch = [mid for mid, _ in received[acked:]]
        # Acking in batches is what lets the broker send past its Receive Maximum of 100.
        acked += len(batch)
        client.ack_batch(batch)
        return acked == count

    wait_for(all_received_and_acked, 60, f"{count} messages received and acked")
    sender.join(timeout=30)
    publisher.close()
    assert [payload for _, payload in received] == [_payload(i) for i in range(count)]
    # stop(): the DISCONNECT goes out after the queued acks (disconnect() + loop_stop() could drop them).
    assert client.stop()

    # A clean reconnect to the same session finds nothing left to redeliver: every ack reached the broker.
    redelivered: list[bytes] = []
    again = BatchingClient(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
    )
    again.on_message = lambda _c, _u, m: redelivered.append(bytes(m.payload))
    connected = threading.Event()
    again.on_connect = lambda *_a: connected.set()
    props_again = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props_again.SessionExpiryInterval = 0
    again.connect(*SHARED.prepare(again), clean_start=False, properties=props_again)
    again.loop_start()
    assert connected.wait(10)
    # The broker resends un-acked messages right after CONNACK, so they would precede this SUBACK.
    marker = threading.Event()
    again.on_subscribe = lambda *_a: marker.set()
    again.subscribe(f"sensors/{unique('none')}/x/reading", qos=1)
    assert marker.wait(10)
    again.disconnect()
    again.loop_stop()
    assert redelivered == []


def test_published_batches_arrive_whole_and_in_order_and_nothing_is_queued_while_disconnected() -> None:
    # The end-to-end acks: QoS 0 publishes built as bytes by the client and written in coalesced sends.
    place = unique("pb")
    topics = [f"sensors/{place}/dev{i}/ack" for i in range(7)]
    received: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    listener = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("pblisten"), protocol=mqtt.MQTTv5)

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with lock:
            received.append((message.topic, bytes(message.payload)))

    listener.on_message = on_message
    subscribed = threading.Event()
    listener.on_subscribe = lambda *_a: subscribed.set()
    listener.connect(*SHARED.prepare(listener))
    listener.loop_start()
    listener.subscribe(f"sensors/{place}/+/ack", qos=0)
    assert subscribed.wait(10)

    sender = BatchingClient(CallbackAPIVersion.VERSION2, client_id=unique("pbsend"), protocol=mqtt.MQTTv5)
    assert sender.publish_batch([(topics[0], b"x")]) == 0, "queued while never connected"
    connected = threading.Event()
    sender.on_connect = lambda *_a: connected.set()
    sender.connect(*SHARED.prepare(sender))
    sender.loop_start()
    assert connected.wait(10)
    # Payload sizes across the one- to three-byte remaining-length encodings.
    sent = [(topics[i % 7], _payload(i)[:20_000]) for i in range(600)]
    for n in range(0, len(sent), 50):
        assert sender.publish_batch(sent[n : n + 50]) == 50
    wait_for(lambda: len(received) >= len(sent), 30, f"{len(sent)} published messages")
    assert received == sent
    sender.disconnect()
    sender.loop_stop()
    listener.disconnect()
    listener.loop_stop()


def test_a_closed_take_gate_holds_publishes_unread_past_keepalive_then_takes_each_once() -> None:
    """The gateway's in-flight bound: while `take_gate` says no, no PUBLISH is taken (the rest waits
    in the socket), the connection outlives several keep-alive periods although the PINGRESPs are
    stuck behind the held PUBLISHes, and once the gate opens every message arrives once, in order."""
    topic = f"sensors/{unique('gate')}/dev/reading"
    count, room = 200, 10
    keepalive = 1
    received: list[bytes] = []
    disconnected = threading.Event()
    client = BatchingClient(
        CallbackAPIVersion.VERSION2, client_id=unique("gatesub"), protocol=mqtt.MQTTv5, manual_ack=True
    )
    client.on_message = lambda _c, _u, message: received.append(bytes(message.payload))
    client.on_disconnect = lambda *_a: disconnected.set()
    open_gate = threading.Event()
    client.take_gate = lambda: open_gate.is_set() or len(received) < room
    host, port = SHARED.prepare(client)
    client.connect(host, port, keepalive=keepalive, clean_start=True)
    client.loop_start()
    subscribed = threading.Event()
    client.on_subscribe = lambda *_a: subscribed.set()
    client.subscribe(topic, qos=1)
    assert subscribed.wait(10)
    publisher = Publisher()
    try:
        for i in range(count):
            publisher.publish_raw(topic, f"{i}".encode() * 50)
        wait_for(lambda: len(received) == room, 10, f"the first {room} messages")
        # Five keep-alive periods held: paho alone would give up after two without a PINGRESP.
        assert not disconnected.wait(5 * keepalive), "keep-alive dropped the connection while held"
        assert len(received) == room
        open_gate.set()
        client.wake()
        wait_for(lambda: len(received) == count, 30, f"all {count} messages once the gate opened")
        assert received == [f"{i}".encode() * 50 for i in range(count)]
        assert not disconnected.is_set()
    finally:
        publisher.close()
        client.stop()
