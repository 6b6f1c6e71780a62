"""Virtual boards with failing sensors and a failing I2C bus: null metrics, error counts, recovery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hil import fleet
from hil.probe import Probe, clear_retained
from hil.vboard_process import VirtualBoard
from iot import contract
from tests.hil.conftest import (
    BoardFactory,
    health_of,
    publishing,
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
    publishing(board, probe).set_fault(sensor, fault)
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
        extra_config={
            "watchdog_s": 7,
            "puback_timeout_s": 0.5,
            "publish_retries": 0,
            "e2e_ack": False,
            "ntp_host": "127.0.0.1",
        },
    )
    rig = fleet.Fleet(tmp_path / "fleet", plans, provisioning=fleet.Broker.from_env().provisioning())
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
        rig.remove_accounts()


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


def _complete(reading: dict[str, object]) -> bool:
    return all(reading[m] is not None for m in contract.METRICS)


def _stuck_sda(board: VirtualBoard, probe: Probe) -> int:
    """Let the board read, then make a slave hold SDA low (a reset mid-transfer) and take the fault
    switch away again at once: the slave keeps holding SDA until it is clocked. Returns how many
    readings had arrived before."""
    wait_for(lambda: [r for r in probe.readings(board.device) if _complete(r)], 20, "a complete reading")
    board.set_fault("bme280", "stuck_sda")
    # Either sensor's transfer may be the first to meet the stuck bus (the fault lands mid-cycle).
    wait_for(lambda: [r for r in probe.readings(board.device) if not _complete(r)], 20, "a failed reading")
    board.set_fault("bme280", None)
    return len(probe.readings(board.device))


def test_stuck_sda_the_driver_leaves_stuck_is_clocked_free_by_the_firmware_and_counted_in_health(
    make_board: BoardFactory, probe: Probe
) -> None:
    """A driver that does not clear the bus itself (the ESP32 port's does, see hil/virtual/vi2c.py):
    before, every transfer timed out for ever and both sensors read null; now the firmware clocks
    SCL until the slave lets SDA go (7 pulses here), sends a STOP and re-initialises bus and sensors."""
    board = make_board(spec={"i2c_driver_clears_bus": False, "stuck_clocks": 7})
    board.start()
    before = _stuck_sda(board, probe)
    wait_for(lambda: [r for r in probe.readings(board.device)[before:] if _complete(r)], 20, "readings again")
    health = wait_for(
        lambda: [h for h in health_of(probe, board.device) if h["sensor_errors"].get("i2c_bus", 0) >= 1],
        20,
        "health counting the bus clear",
    )[-1]
    assert health["sensor_errors"]["i2c_bus"] == 1  # one clear freed it
    console = board.console()
    assert "i2c_bus_cleared" in console and "pulses=7" in console


def test_stuck_sda_times_out_once_and_the_esp32_driver_clears_it_itself(
    make_board: BoardFactory, probe: Probe
) -> None:
    """As on the part: the first transfer times out (ETIMEDOUT) and ESP-IDF clears the bus; the
    firmware finds SDA high, needs no clear of its own, and the sensor is back the next cycle."""
    board = make_board()
    board.start()
    before = _stuck_sda(board, probe)
    wait_for(lambda: [r for r in probe.readings(board.device)[before:] if _complete(r)], 20, "readings again")
    health = wait_for(
        lambda: [
            h
            for h in health_of(probe, board.device)
            if h["sensor_errors"]["bme280"] + h["sensor_errors"]["bh1750"] >= 1
        ],
        10,
        "health counting the failed read",
    )[-1]
    assert health["sensor_errors"]["i2c_bus"] == 0
    assert "i2c_bus_cleared" not in board.console()
