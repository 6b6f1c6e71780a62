"""Per-board state kept for the device metrics: status topics, last reading times, rendering."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.devices import DeviceBoard, health_filter, health_numbers, status_filter

pytestmark = pytest.mark.unit


def _render(board: DeviceBoard) -> str:
    registry = CollectorRegistry()
    registry.register(board)
    return generate_latest(registry).decode()


def test_status_filter_follows_the_reading_filter() -> None:
    assert status_filter("sensors/+/+/reading") == "sensors/+/+/status"
    assert status_filter("sensors/lab/+/reading") == "sensors/lab/+/status"
    assert status_filter("sensors/#") == "sensors/+/+/status"
    assert health_filter("sensors/lab/+/reading") == "sensors/lab/+/health"


def test_online_and_offline_become_1_and_0() -> None:
    board = DeviceBoard()
    board.status("sensors/lab/a/status", b"online")
    board.status("sensors/lab/b/status", b"offline")
    text = _render(board)
    assert 'iot_gateway_device_online{device="a",place="lab"} 1.0' in text
    assert 'iot_gateway_device_online{device="b",place="lab"} 0.0' in text


def test_unknown_status_payloads_and_bad_ids_are_ignored() -> None:
    board = DeviceBoard()
    board.status("sensors/lab/a/status", b"online")
    board.status("sensors/lab/a/status", b"\xff\xfe")
    board.status("sensors/lab/a/status", b"rebooting")
    board.status("sensors/l.b/a/status", b"online")
    text = _render(board)
    assert 'iot_gateway_device_online{device="a",place="lab"} 1.0' in text
    assert "l.b" not in text


def test_cleared_retained_status_removes_the_board_series() -> None:
    board = DeviceBoard()
    board.status("sensors/lab/a/status", b"online")
    board.status("sensors/lab/a/status", b"")
    assert 'device="a"' not in _render(board)


def test_last_reading_time_is_kept_per_board() -> None:
    board = DeviceBoard()
    board.reading("sensors/lab/a/reading", 100.0)
    board.reading("sensors/lab/a/reading", 160.5)
    board.reading("sensors/hall/b/reading", 120.0)
    text = _render(board)
    assert 'iot_gateway_device_last_reading_timestamp_seconds{device="a",place="lab"} 160.5' in text
    assert 'iot_gateway_device_last_reading_timestamp_seconds{device="b",place="hall"} 120.0' in text


def test_health_numbers_keep_numbers_booleans_and_nested_counters() -> None:
    numbers = health_numbers(
        {
            "boot": 7,
            "fw": "1.2.0",
            "rssi": -61,
            "time_valid": True,
            "sensor_errors": {"bme280": 2, "bh1750": 0, "bad key": 5, "range": "x"},
            "outbox_depth": float("nan"),
            "unknown_field": 3,
        }
    )
    assert numbers == {
        "boot": 7.0,
        "rssi": -61.0,
        "time_valid": 1.0,
        "sensor_errors_bme280": 2.0,
        "sensor_errors_bh1750": 0.0,
    }


def test_health_message_is_exported_and_bad_ones_are_ignored() -> None:
    board = DeviceBoard()
    board.health("sensors/lab/a/health", b'{"uptime_s": 3600, "mem_free": 51200}')
    board.health("sensors/lab/a/health", b"not json")
    board.health("sensors/lab/b/health", b"[1, 2]")
    board.health("sensors/lab/c/health", b"{" + b" " * 5000 + b"}")
    text = _render(board)
    assert 'iot_gateway_device_health{device="a",field="uptime_s",place="lab"} 3600.0' in text
    assert 'iot_gateway_device_health{device="a",field="mem_free",place="lab"} 51200.0' in text
    assert 'device="b"' not in text and 'device="c"' not in text


def test_firmware_version_and_update_state_are_one_series_per_board() -> None:
    """The Fleet dashboard's versions, trials and rollbacks; what is not a version or a state from
    docs/CONTRACT.md is "unknown", never free text from a board in a label."""
    board = DeviceBoard()
    board.health("sensors/lab/a/health", b'{"uptime_s": 1, "fw": "0.1.0"}')
    board.health("sensors/lab/a/health", b'{"uptime_s": 2, "fw": "0.2.0", "update_state": "trial"}')
    board.health("sensors/lab/b/health", b'{"uptime_s": 1, "fw": "0.1.0", "update_state": "rolled_back"}')
    board.health("sensors/lab/c/health", b'{"uptime_s": 1, "fw": "a b\\"c", "update_state": "hacked"}')
    board.health("sensors/lab/d/health", b'{"uptime_s": 1, "fw": 7}')
    text = _render(board)
    series = [line for line in text.splitlines() if line.startswith("iot_gateway_device_firmware{")]
    assert sorted(series) == [
        'iot_gateway_device_firmware{device="a",fw="0.2.0",place="lab",update_state="trial"} 1.0',
        'iot_gateway_device_firmware{device="b",fw="0.1.0",place="lab",update_state="rolled_back"} 1.0',
        'iot_gateway_device_firmware{device="c",fw="unknown",place="lab",update_state="unknown"} 1.0',
        'iot_gateway_device_firmware{device="d",fw="unknown",place="lab",update_state="idle"} 1.0',
    ]
    board.health("sensors/lab/a/health", b"")  # a removed board's cleared health: its series goes
    assert 'device="a"' not in _render(board)


def test_safe_mode_status_counts_as_not_online() -> None:
    board = DeviceBoard()
    board.status("sensors/lab/a/status", b"online")
    board.status("sensors/lab/a/status", b"safe_mode")
    assert 'iot_gateway_device_online{device="a",place="lab"} 0.0' in _render(board)


def test_health_fields_the_firmware_added_are_exported() -> None:
    """Crash handling, the flash outbox, bounded packets, clone sensors and safe mode (docs/CONTRACT.md,
    "Health message"): numbers and booleans become series, strings are not numbers and are left out."""
    board = DeviceBoard()
    board.health(
        "sensors/lab/a/health",
        b'{"device": "a", "place": "lab", "outbox_flash": 4, "outbox_torn": 1, "oversized_in": 2,'
        b' "sensor_warnings": {"bme280_crc": true}, "reset_cause": "watchdog",'
        b' "last_crash": "Traceback ...", "crashes": 3, "safe_mode": true}',
    )
    text = _render(board)
    for field, value in (
        ("outbox_flash", 4.0),
        ("outbox_torn", 1.0),
        ("oversized_in", 2.0),
        ("sensor_warnings_bme280_crc", 1.0),
        ("crashes", 3.0),
        ("safe_mode", 1.0),
    ):
        assert f'iot_gateway_device_health{{device="a",field="{field}",place="lab"}} {value}' in text
    assert "reset_cause" not in text and "last_crash" not in text


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        # `[` x 3,000: json's RecursionError escaped into paho's network thread and ended it (#19).
        ("sensors/lab/a/health", b"[" * 3000, "malformed_json"),
        ("sensors/lab/a/health", b"\xff\xfe", "malformed_json"),
        ("sensors/lab/a/health", b"{" + b" " * 5000 + b"}", "too_large"),
        ("sensors/lab/a/health", b"[1, 2]", "not_object"),
        ("sensors/lab/a/health", b"{}", "no_numbers"),
        # A 400-digit integer overflowed float() (OverflowError) on the same path.
        ("sensors/lab/a/health", b'{"uptime_s": 1' + b"0" * 400 + b"}", "no_numbers"),
        ("sensors/lab/a.b/health", b'{"uptime_s": 1}', "bad_id"),
        ("sensors/lab/good-1\n/health", b'{"uptime_s": 1}', "bad_id"),
        ("sensors/lab\n/a/health", b'{"uptime_s": 1}', "bad_id"),
        ("sensors/lab/a/status", b"rebooting", "unknown_status"),
        ("sensors/lab/a/status", b"\xff" * 300, "unknown_status"),
        ("sensors/lab/good-1\n/status", b"online", "bad_id"),
        ("sensors/lab/dev$1/status", b"online", "bad_id"),
    ],
)
def test_a_status_or_health_message_that_cannot_be_used_is_ignored_with_its_reason(
    topic: str, payload: bytes, reason: str
) -> None:
    board = DeviceBoard()
    handle = board.health if topic.endswith("/health") else board.status
    assert handle(topic, payload) == reason
    series = ("iot_gateway_device_health{", "iot_gateway_device_online{")
    assert not [line for line in _render(board).splitlines() if line.startswith(series)]


def test_nested_health_counters_take_whole_ids_only_and_numbers_that_fit_a_float() -> None:
    numbers = health_numbers(
        {"sensor_errors": {"bme280": 1, "bh1750\n": 2}, "uptime_s": 10**400, "rssi": -(2**1000)}
    )
    assert numbers == {"sensor_errors_bme280": 1.0, "rssi": float(-(2**1000))}
