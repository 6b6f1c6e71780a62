"""firmware/board_esp32.py itself on the unix port, over stand-ins for the port's machine, network and
esp32 modules that count what the board asks of them (the virtual boards run vboard's layer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.firmware import unixport

pytestmark = pytest.mark.unit

_PORT_MODULES = """
import sys
class _Mod:
    pass
machine = _Mod()
for i, name in enumerate(("PWRON_RESET", "HARD_RESET", "WDT_RESET", "DEEPSLEEP_RESET", "SOFT_RESET")):
    setattr(machine, name, i + 1)
network = _Mod()
network.STA_IF = 0
class _WLAN:
    def __init__(self, interface):
        pass
network.WLAN = _WLAN
esp32 = _Mod()
opened = []
class _NVS:
    # esp32_nvs.c: every construction is an nvs_open; there is no close.
    def __init__(self, namespace):
        opened.append(namespace)
        self._values = store
    def get_i32(self, key):
        if key not in self._values:
            raise OSError(-0x1102)  # ESP_ERR_NVS_NOT_FOUND
        return self._values[key]
    def set_i32(self, key, value):
        self._values[key] = value
    def commit(self):
        pass
store = {}
esp32.NVS = _NVS
sys.modules["machine"] = machine
sys.modules["network"] = network
sys.modules["esp32"] = esp32
"""


def test_nvs_is_opened_once_for_the_boards_life(tmp_path: Path) -> None:
    """esp32.NVS has no close: a handle per call (a boot reads and writes the counters 5 times)
    leaked NVS handles. Before: 4 opens for these 4 calls."""
    code = _PORT_MODULES + """
import json
from board_esp32 import Board
b = Board()
b.nvs_get("boot")
b.nvs_set("boot", 7)
b.nvs_get("crashes")
b.nvs_set("crashes", 0)
print(json.dumps([len(opened), b.nvs_get("boot")]))
"""
    assert unixport.run_json(code, tmp_path, heap="256K") == [1, 7]
