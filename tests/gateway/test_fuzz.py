"""Fuzzing the gateway's MQTT boundary (hypothesis, in-process, no services): any topic, payload,
retain flag and QoS a board or broker can produce.

Invariants: nothing raises; a reading-topic message becomes exactly one Kafka record, a reading the
backend decodes, re-encodes and stores (BSON), or a dead letter with a stable reason that is not
`unprocessable` (that would be a gateway bug); a retained reading and a bad status or health message
are counted and ignored; what paho cannot parse in a PUBLISH's properties is stripped, the rest kept.
The real-stack counterpart is test_hostile_input.py's burst of garbage.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import bson
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion

from backend.records import decode_reading, encode_forward
from gateway.metrics import GatewayMetrics
from gateway.mqtt_packets import without_bad_properties
from gateway.mqtt_source import MqttSource
from gateway.records import route
from gateway.registry import health_fields
from gateway.settings import GatewaySettings
from iot import contract

pytestmark = pytest.mark.unit

RECEIVED = 1_795_900_000_000
# No deadline: this machine is shared and its timing says nothing about correctness.
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ---------------------------------------------------------------------------------

good_ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
odd_text = st.text(st.characters(codec="utf-8", exclude_characters="/+#"), max_size=70)
ids = st.one_of(
    good_ids,
    odd_text,
    good_ids.map(lambda i: i + "\n"),
    st.sampled_from(["dev$1", "dev.1", "dëv", "", "x" * 65, "a b", "\ufeff", "good-1\r\n"]),
)
health_keys = st.sampled_from(["fw", "update_state", "boot", "config_rev", "uptime_s", "x"])
surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included: json.dumps writes them as literals
    | st.text(max_size=20)
    | surrogates,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def reading(place: str, device: str, seq: int = 0) -> dict[str, Any]:
    return {
        "v": 1,
        "device": device,
        "place": place,
        "boot": 1,
        "seq": seq,
        "ts": RECEIVED - 5000,
        "time_valid": True,
        "temperature": 21.5,
        "humidity": 40.0,
        "pressure": 1013.0,
        "luminosity": 120.0,
        "fw": "fw-1",
    }


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, bytes]:
    """A reading topic (mostly) and a payload: a valid reading with one field changed to any JSON
    value, a field dropped or added, deep nesting, or plain bytes."""
    place, device = draw(ids), draw(ids)
    topic = draw(st.one_of(st.just(f"sensors/{place}/{device}/reading"), st.text(max_size=80)))
    base = reading(draw(st.one_of(st.just(place), ids)), draw(st.one_of(st.just(device), ids)))
    kind = draw(st.sampled_from(["change", "drop", "add", "nest", "bytes", "valid"]))
    if kind == "change":
        base[draw(st.sampled_from(sorted(base)))] = draw(json_values)
    elif kind == "drop":
        del base[draw(st.sampled_from(sorted(base)))]
    elif kind == "add":
        base[draw(st.text(max_size=10))] = draw(json_values)
    elif kind == "nest":
        depth = draw(st.integers(1, 1020))
        return topic, b"[" * depth + b"]" * draw(st.integers(0, depth))
    elif kind == "bytes":
        return topic, draw(st.binary(max_size=1500))
    return topic, json.dumps(base).encode()


# --- records.route -------------------------------------------------------------------------------


def check_route(topic: str, payload: bytes) -> None:
    out = route(topic, payload, RECEIVED)
    if out.topic == contract.TOPIC_DLQ:
        letter = json.loads(out.value)
        assert out.reason == letter["reason"]
        assert letter["reason"] in contract.DLQ_REASONS
        assert letter["reason"] != contract.REASON_UNPROCESSABLE, letter["detail"]
        assert letter["detail"] and letter["topic"] == topic and letter["received_at"] == RECEIVED
        assert base64.b64decode(letter["payload_b64"]) == payload[: contract.DLQ_PAYLOAD_CAP]
        assert out.key == topic.encode("utf-8", errors="replace")
        return
    assert out.topic == contract.TOPIC_READINGS and out.reason is None
    # What the gateway lets into iot.readings, the backend must take whole (issue #19: a lone
    # surrogate passed here and the backend's encode failed on it).
    value = decode_reading(out.value)
    encode_forward(value)
    bson.encode({**value, "_id": contract.reading_id(value["device"], value["boot"], value["seq"])})
    assert contract.is_id(value["place"]) and contract.is_id(value["device"])
    assert topic == contract.reading_topic(value["place"], value["device"])
    assert out.key == value["device"].encode()
    assert out.ident == (value["place"], value["device"], value["boot"], value["seq"])


@FUZZ
@given(messages())
@example(("sensors/p/d/reading", json.dumps(reading("p", "d")).replace('"fw-1"', '"\\ud800"').encode()))
@example(("sensors/p/d/reading", b"[" * 1000))
@example(("sensors/p/d\n/reading", json.dumps(reading("p", "d\n")).encode()))
def test_route_turns_any_message_into_one_record_the_backend_can_take(message: tuple[str, bytes]) -> None:
    check_route(*message)


@FUZZ
@given(st.text(max_size=200), st.binary(max_size=3000))
def test_route_takes_any_topic_and_bytes(topic: str, payload: bytes) -> None:
    check_route(topic, payload)


# --- the MQTT callback: every kind of topic, retained or not, any QoS ---------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes, int, int]] = []

    def __call__(self, topic: str, payload: bytes, mid: int, qos: int, _generation: int) -> None:
        self.calls.append((topic, payload, mid, qos))


_SOURCE: tuple[MqttSource, GatewayMetrics, Recorder] | None = None


def source() -> tuple[MqttSource, GatewayMetrics, Recorder]:
    """One MQTT source for every example (making one per example was most of the test's time); each
    example reads its counters as differences."""
    global _SOURCE
    if _SOURCE is None:
        metrics = GatewayMetrics()
        src = MqttSource(GatewaySettings.from_env({"IOT_GATEWAY_CLIENT_ID": "fuzz"}), metrics)
        recorder = Recorder()
        src._handler = recorder  # start() would connect; the callbacks are what is fuzzed
        _SOURCE = src, metrics, recorder
    _SOURCE[2].calls.clear()
    return _SOURCE


def counters(metrics: GatewayMetrics) -> dict[tuple[str, str, str], float]:
    out = {}
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name in ("iot_gateway_ignored_total", "iot_gateway_callback_errors_total"):
                out[
                    (s.name, s.labels.get("kind", s.labels.get("callback", "")), s.labels.get("reason", ""))
                ] = s.value
    return out


@FUZZ
@given(
    place=ids,
    device=ids,
    kind=st.sampled_from(["reading", "status", "health", "ack", "other"]),
    payload=st.one_of(st.binary(max_size=6000), json_values.map(lambda v: json.dumps(v).encode())),
    retain=st.booleans(),
    qos=st.integers(0, 2),
)
@example(place="lab", device="bad", kind="health", payload=b"[" * 3000, retain=True, qos=0)
@example(
    place="lab", device="a", kind="health", payload=b'{"uptime_s": 1' + b"0" * 400 + b"}", retain=1, qos=0
)
def test_on_message_never_raises_and_routes_each_kind_of_topic(
    place: str, device: str, kind: str, payload: bytes, retain: bool, qos: int
) -> None:
    src, metrics, recorder = source()
    before = counters(metrics)
    topic = f"sensors/{place}/{device}/{kind}"
    message = mqtt.MQTTMessage(mid=7, topic=topic.encode())
    message.payload, message.retain, message.qos = payload, retain, qos
    src._on_message(src._client, None, message)

    change = {k: v - before.get(k, 0.0) for k, v in counters(metrics).items() if v != before.get(k, 0.0)}
    assert not any(k[0] == "iot_gateway_callback_errors_total" for k in change), change
    if kind in ("status", "health"):
        assert recorder.calls == []
        assert sum(change.values()) <= 1 and all(k[1] == kind for k in change), change
    elif retain:
        assert recorder.calls == [] and change == {("iot_gateway_ignored_total", "reading", "retained"): 1.0}
    else:
        # Readings, and whatever else the reading filter let through, go to the bridge: it makes a
        # reading or a dead letter of it.
        assert recorder.calls == [(topic, payload, 7, qos)] and change == {}


# --- PUBLISH properties paho cannot parse ---------------------------------------------------------


@st.composite
def publish_packets(draw: st.DrawFn) -> tuple[int, bytes]:
    qos = draw(st.integers(0, 2))
    topic = draw(st.text(max_size=30)).encode()
    props = draw(
        st.one_of(
            st.just(b""),
            st.binary(max_size=20),
            # a user property whose value holds U+FEFF, valid UTF-8 that paho refuses
            st.just(b"\x26\x00\x01k\x00\x03\xef\xbb\xbf"),
            st.just(b"\x03\x00\x02" + "\ufeff".encode()),  # content type, the same
        )
    )
    prefix = len(props).to_bytes(1, "big") if len(props) < 128 else bytes([0x80 | (len(props) % 128), 1])
    packet = len(topic).to_bytes(2, "big") + topic + (b"\x00\x05" if qos else b"") + prefix + props
    packet += draw(st.binary(max_size=40))
    if draw(st.booleans()):
        packet = draw(st.binary(max_size=60))  # not even a well-formed PUBLISH
    return 0x30 | (qos << 1), packet


@FUZZ
@given(publish_packets())
def test_stripping_unparsable_properties_keeps_topic_packet_id_and_payload(case: tuple[int, bytes]) -> None:
    command, packet = case
    stripped = without_bad_properties(command, bytearray(packet))
    if stripped is None:
        return
    new, topic, complaint = stripped
    assert complaint
    decoded = _packet.decode_publish(command, new, MQTTProtocolVersion.MQTTv5)
    assert decoded.topic == topic
    assert bytes(packet).endswith(bytes(decoded.payload))
    original_props = len(packet) - len(new) + 1  # the property block and its length, replaced by 0x00
    assert bytes(new[: len(new) - len(decoded.payload) - 1]) == bytes(
        packet[: len(new) - len(decoded.payload) - 1]
    )
    assert original_props >= 2


@FUZZ
@given(
    st.one_of(st.binary(max_size=5000), st.dictionaries(health_keys, json_values, max_size=5).map(json.dumps))
)
@example(b'{"fw": "\\ud800", "boot": 3}')
@example(b"[" * 3000)
def test_what_the_registry_takes_from_any_health_message_can_be_stored(payload: bytes | str) -> None:
    raw = payload.encode("utf-8", errors="surrogatepass") if isinstance(payload, str) else payload
    fields = health_fields(raw)
    if fields is not None:
        bson.encode(fields)  # the registry writes them to MongoDB as they are
