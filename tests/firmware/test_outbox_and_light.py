"""BH1750 maths and link backoff, on the MicroPython unix port (the outbox: test_outbox.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.firmware import unixport

pytestmark = pytest.mark.unit


def test_bh1750_lux_is_raw_over_1_2_times_69_over_mtreg(tmp_path: Path) -> None:
    code = """
import json, bh1750
print(json.dumps([bh1750.lux(10, 254), bh1750.lux(1200, 69), bh1750.conversion_ms(254)]))
"""
    low, default, wait = unixport.run_json(code, tmp_path)
    assert round(low, 1) == 2.3
    assert default == pytest.approx(1000.0)
    assert wait == 663  # 180 ms * 254 / 69, rounded up


def test_bh1750_driver_sets_mtreg_and_reads_the_model_in_one_time_mode(tmp_path: Path) -> None:
    code = """
import json, time
import bh1750_model
from bh1750 import BH1750

class Bus:
    def __init__(self, dev): self.dev = dev
    def writeto(self, addr, buf):
        for c in buf: self.dev.command(c, time.ticks_ms())
    def readfrom_into(self, addr, buf):
        buf[:] = self.dev.read(len(buf), time.ticks_ms())

class Clock:
    sleep_ms = staticmethod(time.sleep_ms)

model = bh1750_model.BH1750Model()
model.source = lambda now: 432.1
sensor = BH1750(Bus(model), 0x23, Clock(), 138)
sensor.start()
print(json.dumps([model.mtreg, sensor.read(), model.powered]))
"""
    mtreg, lux, powered = unixport.run_json(code, tmp_path)
    assert mtreg == 138
    assert lux == pytest.approx(432.1, abs=0.3)  # one count is 0.42 lx at MTreg 138
    assert powered is False  # one-time mode powers the chip down after measuring


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap(tmp_path: Path) -> None:
    code = """
import json
from link import backoff_delay_ms
print(json.dumps([[backoff_delay_ms(n, 1000, 60000, r) for n in range(9)] for r in (0, 65535)]))
"""
    low, high = unixport.run_json(code, tmp_path)
    assert low == [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
    assert all(lo <= hi <= 2 * lo for lo, hi in zip(low, high, strict=True))
    assert high[-1] < 60000
