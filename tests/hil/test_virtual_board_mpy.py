"""Virtual boards on the compiled firmware: the .mpy files `iot flash --mpy` puts on an ESP32
(mpy-cross, arch xtensawin), loaded by the unix port instead of the sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hil import flash, paths
from hil.probe import Probe
from hil.virtual import vprofile
from iot.harness.mqtt import MqttLogin
from tests.firmware import unixport
from tests.hil.conftest import BoardFactory, health_of
from tests.support import wait_for

pytestmark = [pytest.mark.hil, pytest.mark.integration]


@pytest.fixture(scope="module")
def mpy_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """firmware/ compiled as for a board, main.py as source (it stays source on a board too)."""
    build = tmp_path_factory.mktemp("mpy")
    flash.compile_mpy(build)
    shutil.copyfile(paths.FIRMWARE / "main.py", build / "main.py")
    return build


def test_mpy_cross_emits_the_mpy_version_the_unix_port_loads(mpy_build: Path, tmp_path: Path) -> None:
    """Header: 'M', version, arch and sub-version (0 without native code), small-int bits. Without
    native code the loader checks only the version and the small-int bits (py/persistentcode.c),
    so these files load on every v6 port: the unix port here, and ESP32 1.22 (v6.2) to 1.24."""
    port = unixport.run_json("import json, sys\nprint(json.dumps(sys.implementation._mpy))", tmp_path)
    compiled = sorted(mpy_build.glob("*.mpy"))
    modules = {p.stem for p in paths.firmware_files() if p.name not in paths.ENTRY_FILES}
    assert {p.stem for p in compiled} == modules
    for path in compiled:
        magic, version, native, small_int_bits = path.read_bytes()[:4]
        assert (magic, version, native) == (ord("M"), port & 0xFF, 0), path.name
        assert small_int_bits <= 63, path.name  # the 64-bit unix port's; xtensawin emits 31


# Measured (import of board, mqtt, node as main.py does): from source the firmware and the virtual
# layer need a 136 KB heap to compile, the .mpy files load in 104 KB. At 128 KB the compiled board
# ran with ~20 KB free (at 120 KB only 12 KB: too tight to be steady). The layer grew by 9 KB on
# 2026-12-07 (VIRTUAL_LAYER_KB 42 -> 51), so both figures move by 9 KB. Remote configuration and
# updates (issue 22) cost the compiled firmware 1.6 KB at boot (free at node_boot on this heap at 137 KB:
# 16,640 -> 15,008 bytes, and a first spill then failed for a 304-byte block): 2 KB more heap, which is
# still 6 KB short of what the sources need. 2 KB more again on 2026-12-07: the layer's sockets stopped
# allocating per call (~0.9 KB more code, compiled from source here) and the flash allowance is the
# mount's measured 3,328 bytes, not 4 KB: at 139K the layer's own compile (vtls.py) found no 3.5 KB
# block. At 141K the compiled board boots with 26.8 KB free (config.py leaves the heap once the node
# runs) and the sources still die.
SMALL_HEAP = "141K"


def test_board_on_the_compiled_firmware_boots_publishes_and_releases_readings_on_an_ack(
    make_board: BoardFactory, probe: Probe, broker_url: str, mpy_build: Path
) -> None:
    """On a heap too small to compile the sources on (that board dies of a MemoryError), the
    compiled firmware boots, measures, publishes, and releases its outbox on a gateway's ack. Laid
    out as a frozen image on MicroPython 1.22 (the oldest profile): the modules precompiled and
    outside the file system (`.frozen` on a board, the build folder here), only main.py and
    config.json in the board's littlefs. (A frozen image keeps its bytecode in flash; here it is
    loaded into the heap, so this board has less free heap than a frozen one would.)"""
    source = make_board(heap=SMALL_HEAP, profile=vprofile.OLDEST)
    source.start()
    assert source.wait(20) != 0 and "MemoryError" in source.console()
    board = make_board(firmware_dir=mpy_build, heap=SMALL_HEAP, e2e_ack=True, ack_timeout_s=60, interval_s=1,
                       profile=vprofile.OLDEST)
    board.flash.write("main.py", (paths.FIRMWARE / "main.py").read_bytes())
    board.start()
    readings = wait_for(lambda: probe.readings(board.device)[2:], 20, "3 readings")
    assert all(r["temperature"] is not None and r["luminosity"] is not None for r in readings)
    wait_for(lambda: [h for h in health_of(probe, board.device) if h["outbox_depth"] >= 3], 10, "unacked")
    seen = len(health_of(probe, board.device))
    held = max(h["outbox_depth"] for h in health_of(probe, board.device))
    ack = {"boot": 0, "ranges": [[0, 10_000]]}
    operator = MqttLogin.from_env().at(broker_url)
    operator.publish(f"sensors/{board.place}/{board.device}/ack", json.dumps(ack).encode())
    # Without acks the depth only grows: a health after the ack with less is the ack's release.
    wait_for(lambda: [h for h in health_of(probe, board.device)[seen:] if h["outbox_depth"] < held], 20,
             "released")
    assert "Traceback" not in board.console() and board.running
