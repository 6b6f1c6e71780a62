"""Virtual boards and time: an unsynced RTC, uptime and NTP scheduling past the tick wrap."""

from __future__ import annotations

import pytest

from hil.probe import Probe
from iot import contract
from tests.hil.conftest import (
    BoardFactory,
    health_of,
    publishing,
)
from tests.support import wait_for

pytestmark = [pytest.mark.hil, pytest.mark.integration]


def test_unsynced_board_marks_readings_time_valid_false(make_board: BoardFactory, probe: Probe) -> None:
    board = make_board(spec={"time_sync": False})
    board.start()
    reading = wait_for(lambda: probe.messages("reading", board.device), 20, "a reading")[0]
    payload = contract.validate_reading(reading.topic, reading.payload)
    assert payload["time_valid"] is False
    assert payload["ts"] < 1_000_000_000_000  # an RTC counting from 2000, not the wall clock


def test_uptime_and_ntp_schedule_hold_past_6_2_days_and_a_week_long_ntp_period(
    make_board: BoardFactory, probe: Probe
) -> None:
    """ntp_every_s 604800 (the config maximum) is 2^29 ms and more: time.ticks_add raises
    OverflowError for it on the port. Ticks start just before their 2^30 wrap and the clock then
    races 7.5 days ahead (in steps of 10 min): uptime must count all of it."""
    board = make_board(
        interval_s=5, ntp_every_s=604800, health_every_s=3600, spec={"ticks_start_ms": (1 << 30) - 20_000}
    )
    publishing(board, probe)
    days = 7.5
    (board.control / "clock_jump_ms").write_text(str(int(days * 86400_000)))
    board.wait_console("clock_jumped", 120)
    health = wait_for(
        lambda: [h for h in health_of(probe, board.device) if h["uptime_s"] >= days * 86400],
        30,
        f"health with uptime past {days} days",
    )[-1]
    assert health["uptime_s"] < days * 86400 + 3600
    count = len(probe.readings(board.device))
    wait_for(lambda: len(probe.readings(board.device)) > count + 2, 30, "readings after the jump")
    assert board.running and "Traceback" not in board.console()
