"""Virtual boards: boot identity across a reflash, the crash handler and safe mode."""

from __future__ import annotations

import json

import pytest

from hil.probe import Probe
from tests.hil.conftest import (
    BoardFactory,
    health_of,
    publishing,
)
from tests.support import wait_for

pytestmark = [pytest.mark.hil, pytest.mark.integration]


def test_boot_counter_survives_a_reflash_that_replaces_the_file_system(
    make_board: BoardFactory, probe: Probe
) -> None:
    """Before: the counter lived only in a file, so a new file system made boot 0 again and new
    readings repeated ids already delivered (dropped downstream as duplicates)."""
    board = make_board()
    board.start()
    wait_for(lambda: probe.readings(board.device), 20, "boot 0 readings")
    # A clean stop spills RAM into littlefs (each erase 45 ms of board time): room for a loaded host.
    assert board.stop(timeout=15) == 0
    board.flash.wipe(keep=("config.json",))  # a fresh file system: only the config is copied back
    board.start()
    wait_for(lambda: any(r["boot"] == 1 for r in probe.readings(board.device)), 20, "boot 1 readings")
    assert {r["boot"] for r in probe.readings(board.device)} == {0, 1}


def test_unexpected_exception_is_recorded_and_reported_after_the_reboot_then_safe_mode_after_3(
    make_board: BoardFactory, probe: Probe
) -> None:
    board = publishing(make_board(), probe)
    (board.control / "crash").touch()  # the next health message raises inside the node
    assert board.wait(20) == 4  # machine.reset() from the crash handler, not a dead node
    assert "node_crashed" in board.console()
    (board.control / "crash").unlink()
    board.start()
    health = wait_for(lambda: [h for h in health_of(probe, board.device) if h["boot"] == 1], 20, "boot 1")[-1]
    assert health["reset_cause"] == "hard" and health["crashes"] == 1
    assert "RuntimeError" in health["last_crash"] and "injected fault" in health["last_crash"]
    # A crash loop: two more crashes in a row, then the board stays in safe mode.
    (board.control / "crash").touch()
    assert board.wait(20) == 4
    board.start()
    assert board.wait(20) == 4  # the third crash in a row
    board.start()
    assert board.wait(20) == 0  # main.py ended: the REPL is free for a re-flash
    assert "safe_mode" in board.console()
    wait_for(
        lambda: [m for m in probe.messages("status", board.device) if m.payload == b"safe_mode"],
        10,
        "status safe_mode",
    )
    safe = wait_for(lambda: [h for h in health_of(probe, board.device) if h.get("safe_mode")], 10, "health")
    assert "RuntimeError" in safe[-1]["last_crash"]
    # Fixed (the fault gone, as after a re-flash) and reset: the firmware runs again.
    (board.control / "crash").unlink()
    board.start()
    # Safe mode did not start the node, so it took no boot number: boots 0-2 crashed, 3 runs.
    wait_for(lambda: any(r["boot"] == 3 for r in probe.readings(board.device)), 20, "boot 3 readings")


def test_safe_mode_waits_for_wifi_and_reports_itself(make_board: BoardFactory, probe: Probe) -> None:
    """wlan.connect() returns at once and there is no route until the board has an IP (here 2 s).
    Before: safe mode connected in the same instant, got EHOSTUNREACH and said safe_mode_unreported;
    an MQTTError would have escaped as a traceback."""
    board = make_board(spec={"wifi_assoc_ms": 2000})
    (board.dir / "nvs.json").write_text(json.dumps({"crashes": 3}))
    board.start()
    assert board.wait(40) == 0
    wait_for(
        lambda: [m for m in probe.messages("status", board.device) if m.payload == b"safe_mode"],
        10,
        "status safe_mode",
    )
    assert "safe_mode_unreported" not in board.console()


def test_a_crash_whose_record_fails_still_resets_the_board(make_board: BoardFactory, probe: Probe) -> None:
    """Before: an NVS write failing in the crash handler skipped the reset; main.py ended with a
    traceback (exit 1) and the board sat at the REPL until the watchdog."""
    board = publishing(make_board(), probe)
    (board.control / "nvs_fail").touch()
    (board.control / "crash").touch()
    assert board.wait(20) == 4
    assert "node_crashed" in board.console() and "crash_record_failed" in board.console()
