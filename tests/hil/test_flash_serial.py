"""`iot flash` for real: over a virtual board's serial port (a PTY), exactly as on an ESP32's USB port."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from hil import fleet, paths
from hil.board_flash import FolderFlash
from hil.flash import flash
from hil.probe import Probe
from hil.vboard_process import VirtualBoard
from iot.app.cli import main
from tests.hil.conftest import BoardFactory
from tests.support import wait_for

pytestmark = [pytest.mark.hil, pytest.mark.integration]


def _mpremote(port: str, *args: str) -> str:
    proc = subprocess.run(
        [paths.venv_tool("mpremote"), "connect", port, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _firmware_with_version(tmp_path: Path, version: str) -> Path:
    fw = tmp_path / "firmware-new"
    shutil.copytree(paths.FIRMWARE, fw, ignore=shutil.ignore_patterns("__pycache__", "*.md", "*.ini"))
    config_py = fw / "config.py"
    text = config_py.read_text()
    assert 'FW_VERSION = "' in text
    config_py.write_text(text.replace('FW_VERSION = "', f'FW_VERSION = "{version}-was-', 1))
    return fw


def test_serial_port_runs_main_from_flash_and_mpremote_exec_and_reset_work(
    make_board: BoardFactory, probe: Probe
) -> None:
    board = make_board(serial=True)
    board.start()
    board.wait_console("link_up", 20)
    listing = _mpremote(board.port, "exec", "import os; print(sorted(os.listdir()))")
    assert "'main.py'" in listing and "'node.py'" in listing and "'config.json'" in listing
    assert "node_stopping" in board.console()  # mpremote's Ctrl-C stopped the firmware cleanly
    _mpremote(board.port, "reset")
    # The reset boots the firmware from flash again: boot counter 1, a fresh birth message.
    wait_for(lambda: _boot(board) >= 1, 20, "the firmware booting again from flash")
    wait_for(lambda: any(r["boot"] == 1 for r in probe.readings(board.device)), 20, "a reading of boot 1")


def _boot(board: VirtualBoard) -> int:
    boots = [line for line in board.console().splitlines() if line.startswith("node_boot")]
    if not boots:
        return -1
    return int(boots[-1].split("boot=")[1].split()[0])


def test_iot_flash_over_a_virtual_serial_port_replaces_firmware_and_config_of_a_running_board(
    make_board: BoardFactory, probe: Probe, broker_url: str, tmp_path: Path
) -> None:
    board = make_board(serial=True)
    board.start()
    wait_for(lambda: len(probe.readings(board.device)) >= 2, 20, "readings of the factory firmware")
    assert {r["fw"] for r in probe.readings(board.device)} == {"0.1.0"}
    firmware = _firmware_with_version(tmp_path, "9.9.9")
    config = dict(board.config, offsets={"temperature": 5.0})
    config_path = tmp_path / "new-config.json"
    config_path.write_text(json.dumps(config))
    result = flash(board.port, config_path, broker_url, wait_s=30, firmware=firmware)
    assert result is not None and result.fw.startswith("9.9.9-was-")
    # New firmware and new config: readings of the new boot carry the version and the offset.
    new = wait_for(
        lambda: [r for r in probe.readings(board.device) if r["fw"] == result.fw][:2], 20, "new readings"
    )
    expected = fleet.expected_values(board.place, new[-1]["ts"] / 1000)["temperature"]
    assert abs(new[-1]["temperature"] - (expected + 5.0)) < 0.1
    assert isinstance(board.flash, FolderFlash)  # behind a serial console: the REPL's folder
    flash_dir = sorted(p.name for p in board.flash.path.iterdir())
    assert ".flash-new" not in flash_dir and "main.py" in flash_dir
    assert json.loads(board.flash.read("config.json") or b"")["offsets"] == {"temperature": 5.0}


def test_iot_flash_command_waits_for_the_birth_message(
    make_board: BoardFactory,
    broker_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    board = make_board(serial=True)
    board.start()
    board.wait_console("link_up", 20)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(board.config))
    monkeypatch.setenv("IOT_MQTT_URL", broker_url)
    assert main(["flash", "--port", board.port, "--config", str(config_path), "--wait", "30"]) == 0
    out = capsys.readouterr().out
    assert f"board {board.device} is online fw=0.1.0" in out


def test_the_watchdog_keeps_running_at_the_repl_and_the_firmware_leaves_it_an_hour(
    make_board: BoardFactory,
) -> None:
    """machine.WDT cannot be stopped and survives Ctrl-C and a soft reset (machine_wdt.c): once
    main.py stops for the REPL the chip still resets the board watchdog_s after the last feed,
    possibly in the middle of `iot flash`. Before: the firmware left its 8 s watchdog armed and the
    board reset itself 8 s after mpremote stopped it."""
    board = make_board(serial=True, watchdog_s=8, ntp_host="127.0.0.1")
    board.start()
    board.wait_console("link_up", 20)
    _mpremote(board.port, "exec", "print('at the repl')")
    assert "node_stopping" in board.console()
    # Watched for 12 s, longer than the 8 s watchdog: the board must still be at the REPL.
    with pytest.raises(AssertionError):
        wait_for(lambda: "reason=watchdog" in board.console(), 12, "a watchdog reset at the REPL")
    assert "at the repl" in _mpremote(board.port, "exec", "print('at the repl')")
