"""The rig's drivers: each board gets the implementation of each protocol that fits its kind, picked
once from its resource (the rig file), and the strategy's states move one way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.errors import BoardError
from hil.rig import drivers, spec
from hil.rig.boards import RigBoard
from hil.rig.runner import BoardState, Strategy

pytestmark = pytest.mark.unit

RIG = """
rig: drivers
firmware: {version: 0.1.0}
boards:
  - {id: twin, kind: virtual, place: kitchen}
  - {id: desk, kind: esp32, port: /dev/ttyUSB7, device: esp-desk, place: office, power: manual}
  - id: shelf
    kind: esp32
    port: /dev/ttyUSB8
    device: esp-shelf
    place: office
    power: {on_command: "echo on >> {log}", off_command: "echo off >> {log}"}
  - {id: loose, kind: esp32, port: /dev/ttyUSB9, device: esp-loose, place: office,
     power: {on_command: "true"}}
scenarios:
  - name: s
    steps: [{wait: 0}]
"""


@pytest.fixture
def boards(tmp_path: Path) -> Iterator[dict[str, RigBoard]]:
    path = tmp_path / "rig.yaml"
    path.write_text(RIG.replace("{log}", str(tmp_path / "relay.log")))
    made = {
        b.id: RigBoard(b, tmp_path, ("127.0.0.1", 9), "127.0.0.1", "127.0.0.1")
        for b in spec.load(path, "r1").boards
    }
    yield made
    for board in made.values():
        board.shutdown()


def test_each_kind_of_board_gets_its_own_drivers(boards: dict[str, RigBoard]) -> None:
    twin, desk, shelf = boards["twin"], boards["desk"], boards["shelf"]
    assert isinstance(twin.serial, drivers.VirtualPort) and twin.port.endswith("/tty")
    assert isinstance(twin.power, drivers.VirtualPower)
    assert isinstance(twin.reset, drivers.VirtualReset)
    assert isinstance(twin.console, drivers.VirtualConsole)
    assert isinstance(twin.sensors, drivers.VirtualSensors)
    assert isinstance(desk.serial, drivers.SerialPort) and desk.port == "/dev/ttyUSB7"
    assert isinstance(desk.power, drivers.ManualPower)
    assert isinstance(shelf.power, drivers.RelayPower)
    for real in (desk, shelf):
        assert isinstance(real.reset, drivers.SerialReset)
        assert isinstance(real.console, drivers.NoConsole) and real.console.text() == ""
        assert isinstance(real.sensors, drivers.BoardSensors)
    assert isinstance(twin.flash, drivers.SerialFlash) and twin.flash.mpy_arch == ""
    assert isinstance(desk.flash, drivers.SerialFlash) and desk.flash.mpy_arch == "xtensawin"


def test_relay_power_runs_the_rig_files_commands_and_a_missing_one_is_named(
    boards: dict[str, RigBoard], tmp_path: Path
) -> None:
    boards["shelf"].power.off()
    boards["shelf"].power.on()
    assert (tmp_path / "relay.log").read_text().split() == ["off", "on"]
    with pytest.raises(BoardError, match="loose: no power off command in the rig file"):
        boards["loose"].power.off()


def test_a_real_boards_sensors_refuse_faults_and_know_no_truth(boards: dict[str, RigBoard]) -> None:
    desk = boards["desk"]
    with pytest.raises(BoardError, match="virtual boards only"):
        desk.sensors.inject("bme280", "nack")
    with pytest.raises(BoardError, match="virtual boards only"):
        desk.sensors.set_environment(0.0, {"temperature": 20.0})
    assert desk.sensors.expected(1.0) is None and not desk.sensors.near_change(1.0)
    twin = boards["twin"].sensors
    assert isinstance(twin, drivers.VirtualSensors)
    twin.chip.write_files()  # its flash and switches, without powering it
    before = twin.expected(100.0)
    twin.set_environment(200.0, {"temperature": 30.0})
    assert twin.expected(100.0) == before
    assert twin.expected(201.0) == {**(before or {}), "temperature": 30.0}
    assert twin.near_change(200.5) and not twin.near_change(100.0)


def test_a_board_that_cannot_power_up_is_broken_and_stays_broken(boards: dict[str, RigBoard]) -> None:
    missing = Strategy(boards["desk"])  # /dev/ttyUSB7 is not plugged in here
    assert missing.state is BoardState.OFF
    missing.power_up()
    assert missing.state is BoardState.BROKEN and "/dev/ttyUSB7 does not exist" in missing.broken
    online = Strategy(boards["shelf"])
    online.state = BoardState.ONLINE
    online.fail("scenarios[0].steps[0].wait failed")
    assert online.state is BoardState.BROKEN and online.broken.startswith("scenarios[0]")
