"""Virtual boards with failing sensors and a failing I2C bus: null metrics, error counts, recovery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hil import fleet
from hil.probe import Probe, clear_retained
from iot import contract
from tests.hil.conftest import (
    BoardFactory,
    health_of,
)
from tests.support import unique, wait_for

pytestmark = [pytest.mark.hil, pytest.mark.integration]


@pytest.mark.parametrize(
    ("sensor", "fault", "kind"),
    [
        ("bme280", "nack", "i2c"),
        ("bme280", "wrong_id", "chip_id"),
        ("bme280", "stuck", "stuck"),
        ("bh1750", "nack", "i2c"),
    ],
)
def test_failed_sensor_gives_null_metrics_and_an_error_count_while_the_board_keeps_going(
    make_board: BoardFactory, probe: Probe, sensor: str, fault: str, kind: str
) -> None:
    nulled = ("temperature", "humidity", "pressure") if sensor == "bme280" else ("luminosity",)
    kept = "luminosity" if sensor == "bme280" else "temperature"
    board = make_board(stuck_after=3)
    at_boot = fault == "wrong_id"  # the driver checks chip id and calibration CRC at start
    if at_boot:
        board.set_fault(sensor, fault)
    board.start()
    wait_for(lambda: probe.readings(board.device), 20, "a first reading")
    board.set_fault(sensor, fault)
    failed = wait_for(
        lambda: [r for r in probe.readings(board.device) if r[nulled[0]] is None], 20, "a null reading"
    )[0]
    assert all(failed[m] is None for m in nulled)
    assert failed[kept] is not None
    contract.validate_reading(f"sensors/kitchen/{board.device}/reading", json.dumps(failed).encode())
    board.set_fault(sensor, None)
    wait_for(lambda: probe.readings(board.device)[-1][nulled[0]] is not None, 20, "recovery")
    health = wait_for(
        lambda: [
            h
            for h in (m.json() for m in probe.messages("health", board.device))
            if h["sensor_errors"][sensor]
        ],
        20,
        "health with sensor errors",
    )[-1]
    other = "bh1750" if sensor == "bme280" else "bme280"
    assert health["sensor_errors"][other] == 0
    console = board.console()
    assert "sensor_failed" in console and f"kind={kind}" in console and "sensor_recovered" in console
    assert board.running


def test_hung_i2c_bus_trips_the_watchdog_and_the_launcher_reboots_the_board(
    tmp_path: Path, broker_url: str, probe: Probe
) -> None:
    plans = fleet.plan(
        1,
        1,
        0.3,
        broker_url,
        prefix=unique("vt"),
        # NTP server by IP: a 7 s watchdog is too short for a DNS lookup (config.check_watchdog).
        extra_config={"watchdog_s": 7, "puback_timeout_s": 0.5, "publish_retries": 0, "e2e_ack": False,
                      "ntp_host": "127.0.0.1"},
    )
    rig = fleet.Fleet(tmp_path / "fleet", plans)
    rig.prepare(fresh=True)
    board = rig.boards[0]
    rig.start()
    try:
        wait_for(lambda: probe.readings(board.device), 20, "a first reading")
        board.set_fault("bme280", "hang")
        assert board.wait(20) == 3  # the 7 s watchdog fires inside the hang
        assert "watchdog_reset" in board.console()
        board.set_fault("bme280", None)
        rig.supervise()
        wait_for(lambda: any(r["boot"] == 1 for r in probe.readings(board.device)), 20, "boot 1 readings")
        assert rig.restarts == 1
    finally:
        rig.stop()
        clear_retained(broker_url, [(board.place, board.device)])


def test_clone_bme280_with_a_wrong_calibration_crc_keeps_reading_and_warns_in_health(
    make_board: BoardFactory, probe: Probe
) -> None:
    board = make_board()
    board.set_fault("bme280", "bad_crc")
    board.start()
    readings = wait_for(lambda: probe.readings(board.device)[3:], 20, "4 readings")
    assert all(r["temperature"] is not None and r["humidity"] is not None for r in readings)
    health = wait_for(lambda: health_of(probe, board.device), 10, "health")[-1]
    assert health["sensor_warnings"] == {"bme280_crc": True}
    assert health["sensor_errors"]["bme280"] == 0
    assert "kind=calibration_crc" in board.console()
