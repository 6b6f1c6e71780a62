"""BatchingClient's own PUBLISH parser (`mqtt_packets.plain_publish`) against paho's `decode_publish`:
on every packet it takes, the same message; everything else (properties, QoS 2, packets paho calls
malformed) left to paho."""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.client import MQTTv5
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.mqtt_packets import plain_publish
from gateway.paho_client import BatchingClient

pytestmark = pytest.mark.unit


def _packet_bytes(topic: bytes, qos: int, mid: int, props: bytes, payload: bytes) -> bytes:
    return len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"") + props + payload


def _command(qos: int, dup: bool, retain: bool) -> int:
    return 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)


def _user_property() -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = ("k", "v")
    packed: bytes = props.pack()  # type: ignore[no-untyped-call]
    return packed


@settings(max_examples=400, deadline=None)
@given(
    topic=st.binary(max_size=80) | st.just(b"sensors/kitchen/k-1/reading"),
    qos=st.integers(0, 2),
    dup=st.booleans(),
    retain=st.booleans(),
    mid=st.integers(0, 65535),
    props=st.sampled_from([b"\x00", b"", b"\x01\x01\x01", _user_property()]),
    payload=st.binary(max_size=300),
    cut=st.none() | st.integers(0, 400),
)
def test_plain_publish_reads_what_paho_reads_or_leaves_it_to_paho(
    topic: bytes, qos: int, dup: bool, retain: bool, mid: int, props: bytes, payload: bytes, cut: int | None
) -> None:
    packet = _packet_bytes(topic, qos, mid, props, payload)
    if cut is not None:
        packet = packet[:cut]  # truncated anywhere: paho may call it malformed, or read a shorter one
    command = _command(qos, dup, retain)
    mine = plain_publish(command, bytearray(packet))
    if mine is None:
        return
    paho = _packet.decode_publish(command, packet, MQTTv5)  # never raises where ours answered
    assert paho.properties is not None and paho.properties.isEmpty()  # type: ignore[no-untyped-call]
    assert (mine.dup, mine.qos, mine.retain, mine.mid) == (paho.dup, paho.qos, paho.retain, paho.mid)
    assert mine._topic == paho.topic and type(mine._topic) is bytes
    assert mine.payload == paho.payload and type(mine.payload) is bytes
    assert mine.properties is None


def test_plain_publish_takes_a_reading_and_leaves_properties_and_qos2_to_paho() -> None:
    topic = b"sensors/kitchen/k-1/reading"
    reading = _packet_bytes(topic, 1, 7, b"\x00", b'{"v":1}')
    message = plain_publish(_command(1, False, False), reading)
    assert message is not None
    assert (message.topic, message.payload, message.mid, message.qos) == (topic.decode(), b'{"v":1}', 7, 1)
    with_props = _packet_bytes(topic, 1, 7, _user_property(), b"{}")
    assert plain_publish(_command(1, False, False), with_props) is None
    assert plain_publish(_command(2, False, False), _packet_bytes(topic, 2, 7, b"\x00", b"{}")) is None
    assert plain_publish(_command(1, False, False), _packet_bytes(topic, 1, 7, b"", b"")) is None


def _client_with_packet(packet: bytes, command: int) -> BatchingClient:
    client = BatchingClient(CallbackAPIVersion.VERSION2, client_id="pp", protocol=MQTTv5, manual_ack=True)
    client._in_packet["command"] = command
    client._in_packet["packet"] = bytearray(packet)
    return client


def test_a_plain_publish_reaches_on_message_or_the_topic_callbacks_as_paho_dispatches_it() -> None:
    topic = b"sensors/kitchen/k-1/reading"
    packet, command = _packet_bytes(topic, 1, 9, b"\x00", b"{}"), _command(1, False, False)
    seen: list[tuple[str, str, int]] = []
    client = _client_with_packet(packet, command)
    client.user_data_set("u")
    client.on_message = lambda _c, u, m: seen.append(("on_message", u, m.mid))
    assert client._handle_publish() == mqtt.MQTT_ERR_SUCCESS
    assert seen == [("on_message", "u", 9)]
    # A per-topic callback takes the messages it matches instead of on_message, as in paho.
    client.message_callback_add("sensors/+/+/reading", lambda _c, u, m: seen.append(("filtered", u, m.mid)))
    client.message_callback_add("sensors/other/#", lambda _c, u, m: seen.append(("other", u, m.mid)))
    client._in_packet["packet"] = bytearray(packet)
    client._handle_publish()
    assert seen[1:] == [("filtered", "u", 9)]


def test_an_exception_in_on_message_escapes_unless_suppressed_as_in_paho() -> None:
    packet, command = _packet_bytes(b"a/b", 0, 0, b"\x00", b"x"), _command(0, False, False)
    client = _client_with_packet(packet, command)

    def fail(_c: object, _u: object, _m: object) -> None:
        raise RuntimeError("boom")

    client.on_message = fail
    with pytest.raises(RuntimeError, match="boom"):
        client._handle_publish()
    client.suppress_exceptions = True
    client._in_packet["packet"] = bytearray(packet)
    assert client._handle_publish() == mqtt.MQTT_ERR_SUCCESS
