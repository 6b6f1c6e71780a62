"""The firmware's I2C bus clear (firmware/i2cbus.py) on the unix port, against the virtual board's
open-drain wires (hil/virtual/vi2c.py): pulses while SDA is low, a STOP, the peripheral back."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.firmware import unixport

pytestmark = pytest.mark.unit

_CODE = """
import json, i2cbus, vi2c
class Board:
    def __init__(self, hold):
        self.wires = vi2c.Wires()
        self.wires.hold = hold
        self.reinits = 0
    def check_watchdog(self):
        pass
    def i2c_pins(self):
        return vi2c.Pin(self.wires, "scl", self), vi2c.Pin(self.wires, "sda", self)
    def i2c_reinit(self):
        self.reinits += 1
    def sleep_us(self, us):
        pass
out = []
for hold in (0, 1, 7, 9, 11):
    b = Board(hold)
    out.append([hold, i2cbus.clear(b), b.wires.sda(), b.wires.stops, b.reinits])
print(json.dumps(out))
"""


def test_bus_clear_pulses_scl_until_sda_is_released_then_stops_and_reinitialises(tmp_path: Path) -> None:
    rows = {hold: (pulses, sda, stops, reinits) for hold, pulses, sda, stops, reinits in unixport.run_json(
        _CODE, tmp_path)}
    assert rows[0] == (0, 1, 0, 1)  # SDA high: no pulse, no STOP, the pads back to the peripheral
    assert rows[1] == (1, 1, 1, 1)
    assert rows[7] == (7, 1, 1, 1)  # a slave reset after its first bit: 7 more, then the STOP
    assert rows[9] == (9, 1, 1, 1)
    # 9 pulses and the STOP's own SCL rise are not enough: SDA stays low, the clear says so.
    assert rows[11] == (-1, 0, 0, 1)
