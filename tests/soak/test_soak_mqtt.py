"""The soak boards' MQTT framing (bench/soak_mqtt.py): packets cut anywhere by TCP come out whole and
in order, and a remaining length longer than MQTT allows ends the connection instead of a wrong read."""

from __future__ import annotations

import pytest
from soak_mqtt import PUBACK, PUBLISH, MalformedPacket, publish, publish_fields, take_packets, topic_name

pytestmark = pytest.mark.unit


def test_packets_cut_at_every_byte_come_out_whole_and_in_order() -> None:
    topic = topic_name("sensors/p/d/reading")
    big = b"x" * 300  # a two-byte remaining length
    stream = publish(topic, 7, b"{}") + b"\x40\x02\x00\x07" + publish(topic, 8, big)
    for cut in range(len(stream) + 1):
        buf = bytearray(stream[:cut])
        got = take_packets(buf)
        buf += stream[cut:]
        got += take_packets(buf)
        assert not buf
        assert [kind for kind, _ in got] == [PUBLISH, PUBACK, PUBLISH], cut
        assert publish_fields(got[0][1], qos=1) == (b"sensors/p/d/reading", 7, b"{}")
        assert publish_fields(got[2][1], qos=1) == (b"sensors/p/d/reading", 8, big)


def test_a_remaining_length_of_five_bytes_is_refused() -> None:
    with pytest.raises(MalformedPacket):
        take_packets(bytearray(b"\x30\xff\xff\xff\xff\x01"))
    # Four bytes is the most MQTT allows, and still only a partial packet here.
    buf = bytearray(b"\x30\xff\xff\xff\x7f")
    assert take_packets(buf) == [] and len(buf) == 5
