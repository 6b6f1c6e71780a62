"""Decoding iot.readings records (bad input → a DLQ reason, never a crash) and settings validation."""

from __future__ import annotations

import json

import pytest

from backend import settings
from backend.errors import ConfigError
from backend.records import RejectedRecord, decode_reading
from iot.harness import payloads

pytestmark = pytest.mark.unit

GOOD = payloads.reading(
    "p1",
    "d1",
    3,
    1_700_000_000_000,
    temperature=21,
    humidity=None,
    pressure=1000.5,
    luminosity=3.0,
    fw="1.0",
    received_at=5,
)


def test_valid_record_decodes_to_reading_with_float_metrics_and_received_at() -> None:
    r = decode_reading(json.dumps(GOOD).encode())
    assert r["temperature"] == 21.0 and isinstance(r["temperature"], float)
    assert r["received_at"] == 5 and r["humidity"] is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"[1, 2]", "not_object"),
        (json.dumps({**GOOD, "temperature": 999}).encode(), "out_of_range"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "seq"}).encode(), "schema"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "received_at"}).encode(), "schema"),
        (b'{"v": 1, "temperature": NaN}', "malformed_json"),
        (None, "malformed_json"),
        # `$` matched before a trailing newline: this record made `d1\n` a device of its own.
        (json.dumps({**GOOD, "device": "d1\n"}).encode(), "bad_id"),
        (json.dumps({**GOOD, "place": "p1\n"}).encode(), "bad_id"),
    ],
)
def test_invalid_record_is_rejected_with_a_stable_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(RejectedRecord) as info:
        decode_reading(value)
    assert info.value.reason == reason


def test_defaults_follow_the_contract() -> None:
    s = settings.load({})
    assert (s.tumbling_s, s.hopping_s, s.hop_step_s, s.grace_s) == (60, 300, 60, 10)
    assert s.kafka_bootstrap == "127.0.0.1:9092" and s.app_id == "iot-backend" and s.metrics_port == 9109
    assert s.event_loop == "uvloop"
    assert settings.load({"IOT_BACKEND_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"IOT_WINDOW_GRACE_S": "soon"}, "IOT_WINDOW_GRACE_S"),
        ({"IOT_WINDOW_HOP_STEP_S": "70"}, "IOT_WINDOW_HOP_STEP_S"),
        ({"IOT_BACKEND_APP_ID": "bad id"}, "IOT_BACKEND_APP_ID"),
        ({"IOT_BACKEND_OFFSET_RESET": "middle"}, "IOT_BACKEND_OFFSET_RESET"),
        ({"IOT_BACKEND_METRICS_PORT": "70000"}, "IOT_BACKEND_METRICS_PORT"),
        ({"IOT_MONGO_URI": "postgres://x"}, "IOT_MONGO_URI"),
        ({"IOT_BACKEND_EVENT_LOOP": "trio"}, "IOT_BACKEND_EVENT_LOOP"),
    ],
)
def test_invalid_setting_error_names_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        settings.load(env)


def test_description_for_logs_hides_mongo_credentials() -> None:
    s = settings.load({"IOT_MONGO_URI": "mongodb://user:hunter2@db:27017/iot"})
    assert "hunter2" not in str(s.describe())
