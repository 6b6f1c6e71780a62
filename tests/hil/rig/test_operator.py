"""A real board with `power: manual`: the rig asks the operator at the terminal to switch it, and
fails the step with a clear message when nobody is there (CI, a pipe)."""

from __future__ import annotations

import io
import os
import pty
import threading
from pathlib import Path

import pytest

from hil.errors import BoardError
from hil.rig import spec
from hil.rig.boards import RigBoard
from hil.rig.operator import console_operator
from tests.support import wait_for

pytestmark = pytest.mark.unit

BENCH = """
rig: bench
firmware: {version: 0.1.0}
boards:
  - {id: desk, kind: esp32, port: /dev/ttyUSB7, device: esp-desk, place: office, power: manual}
scenarios:
  - name: s
    steps: [{power_cut: {seconds: 0, wait_online: false}}]
"""


def _board(tmp_path: Path, attended: bool) -> tuple[RigBoard, list[str]]:
    path = tmp_path / "rig.yaml"
    path.write_text(BENCH)
    (board_spec,) = spec.load(path, "r1").boards
    asked: list[str] = []

    def operator(action: str) -> None:
        asked.append(action)

    board = RigBoard(
        board_spec, tmp_path, ("127.0.0.1", 9), "127.0.0.1", "127.0.0.1", operator if attended else None
    )
    return board, asked


def test_manual_power_asks_the_operator_to_unplug_then_replug_the_named_board(tmp_path: Path) -> None:
    board, asked = _board(tmp_path, attended=True)
    try:
        board.power.off()
        board.power.on()
    finally:
        board.shutdown()
    assert len(asked) == 2
    assert "desk" in asked[0] and "/dev/ttyUSB7" in asked[0] and "unplug" in asked[0]
    assert "desk" in asked[1] and "plug it back in" in asked[1]


def test_manual_power_without_an_operator_fails_saying_it_needs_a_terminal(tmp_path: Path) -> None:
    board, _ = _board(tmp_path, attended=False)
    try:
        with pytest.raises(BoardError, match="needs an operator"):
            board.power.off()
    finally:
        board.shutdown()


def test_no_operator_when_stdin_is_not_a_terminal() -> None:
    assert console_operator(io.StringIO("\n"), io.StringIO()) is None
    read_end, write_end = os.pipe()
    with os.fdopen(read_end) as pipe_in, os.fdopen(write_end, "w"):
        assert console_operator(pipe_in, io.StringIO()) is None


def test_console_operator_prompts_on_the_terminal_and_returns_when_enter_is_pressed() -> None:
    master, slave = pty.openpty()
    out = io.StringIO()
    with os.fdopen(slave, "r") as terminal:
        ask = console_operator(terminal, out)
        assert ask is not None
        done = threading.Event()
        worker = threading.Thread(target=lambda: (ask("unplug board desk"), done.set()), daemon=True)
        worker.start()
        wait_for(lambda: "OPERATOR: unplug board desk" in out.getvalue(), 5, "the prompt")
        assert not done.is_set(), "returned before the operator pressed Enter"
        os.write(master, b"\n")
        worker.join(5)
        assert done.is_set()
    os.close(master)


def test_ctrl_d_at_the_prompt_fails_the_step_instead_of_powering_on_blind(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    path = tmp_path / "rig.yaml"
    path.write_text(BENCH)
    (board_spec,) = spec.load(path, "r1").boards
    with os.fdopen(slave, "r") as terminal:
        board = RigBoard(
            board_spec,
            tmp_path,
            ("127.0.0.1", 9),
            "127.0.0.1",
            "127.0.0.1",
            console_operator(terminal, io.StringIO()),
        )
        try:
            os.write(master, b"\x04")  # Ctrl-D in canonical mode: end of file for the reader
            with pytest.raises(BoardError, match="no answer from the operator"):
                board.power.off()
        finally:
            board.shutdown()
    os.close(master)
