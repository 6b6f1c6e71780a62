"""The heap a virtual board gets beyond an ESP32's is what its layer costs, measured on the unix port:
the firmware then starts with the free heap it has on a board, whichever kind of virtual board runs
it. Before: the littlefs mount was allowed 4 KB for 3.3 KB, and the rig's climate chamber (a board
behind a serial console) nothing for ~1 KB, so the rig's boards started ~1.6 KB lower than tests/hil's
(46,048 and 47,616 bytes free at node_boot)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from hil import board_flash, fleet, paths, serial_board
from hil.vboard_process import FLASH_LAYER_BYTES, SERIAL_LAYER_BYTES
from iot.harness import children

pytestmark = pytest.mark.unit

TOLERANCE = 256  # bytes: a longer folder path costs a few more

_COST = """
import gc, sys
if sys.path[0] != "":
    sys.path.insert(0, "")
gc.collect()
before = gc.mem_free()
{code}
gc.collect()
print(before - gc.mem_free())
"""


def _cost(tmp_path: Path, code: str, micropypath: str, cwd: Path, **env: str) -> int:
    script = tmp_path / "cost.py"
    script.write_text(_COST.format(code=code))
    spec = tmp_path / "spec.json"
    control = tmp_path / "control"
    control.mkdir(exist_ok=True)
    spec.write_text(json.dumps({"env": fleet.environment("kitchen"), "control_dir": str(control)}))
    full = dict(os.environ, MICROPYPATH=micropypath, VBOARD_SPEC=str(spec), VBOARD_CONTROL=str(control))
    full.update(env)
    argv = [paths.venv_tool("micropython"), "-X", "heapsize=1M", str(script)]
    proc = children.run(argv, 60, full, cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return int(proc.stdout.strip().splitlines()[-1])


def test_the_flash_allowance_is_what_mounting_littlefs_costs(tmp_path: Path) -> None:
    flash = board_flash.of_board(tmp_path / "board", False)
    assert isinstance(flash, board_flash.ImageFlash)
    flash.wipe()
    code = """
import os, vfile
vfile.DEVICE = vfile.FileDevice(os.getenv("VBOARD_FLASH"), int(os.getenv("VBOARD_FLASH_BLOCKS")))
os.mount(os.VfsLfs2(vfile.DEVICE), "/flash")
os.chdir("/flash")
"""
    cost = _cost(
        tmp_path,
        code,
        str(paths.VIRTUAL),
        tmp_path,
        VBOARD_FLASH=str(flash.path),
        VBOARD_FLASH_BLOCKS=str(flash.blocks),
    )
    assert abs(cost - FLASH_LAYER_BYTES) <= TOLERANCE, cost


def test_the_serial_allowance_is_what_the_climate_chamber_costs(tmp_path: Path) -> None:
    """The board layer as a serial board loads it (hil/vserial over hil/virtual) and as a fleet board
    does (hil/virtual), from folders whose paths are as long (a module's path is kept on the heap):
    the difference is the serial boards' allowance."""
    code = "import board\nboard.load()"
    flash = tmp_path / "flash"
    flash.mkdir()
    shutil.copyfile(paths.FIRMWARE / "board.py", flash / "board.py")
    hw = serial_board.hardware(tmp_path / "hw")
    model = tmp_path / "hv"
    model.mkdir()
    for name in paths.VIRTUAL_MODULES:
        shutil.copyfile(paths.VIRTUAL / name, model / name)
    behind_serial = _cost(tmp_path, code, str(hw), flash)
    fleet_board = _cost(tmp_path, code, str(model), flash)
    assert abs(behind_serial - fleet_board - SERIAL_LAYER_BYTES) <= TOLERANCE, (behind_serial, fleet_board)
