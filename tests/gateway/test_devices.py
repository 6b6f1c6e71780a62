"""Per-board state kept for the device metrics: status topics, last reading times, rendering."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.devices import DeviceBoard, status_filter

pytestmark = pytest.mark.unit


def _render(board: DeviceBoard) -> str:
    registry = CollectorRegistry()
    registry.register(board)
    return generate_latest(registry).decode()


def test_status_filter_follows_the_reading_filter() -> None:
    assert status_filter("sensors/+/+/reading") == "sensors/+/+/status"
    assert status_filter("sensors/lab/+/reading") == "sensors/lab/+/status"
    assert status_filter("sensors/#") == "sensors/+/+/status"


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
