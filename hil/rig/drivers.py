"""The rig's drivers: one small protocol per concern, one implementation per kind of board.

labgrid's layers: a resource is data (hil/rig/spec.py: where a board is, how it is powered), a driver
implements a protocol for one kind of hardware (here), a strategy is a state machine that drives the
drivers (hil/rig/runner.py). A step asks a protocol (`board.power.off()`), never which kind of board
it has.

| concern | protocol     | virtual board (hil/serial_board.py)     | real ESP32                              |
|---------|--------------|-----------------------------------------|-----------------------------------------|
| port    | Port         | VirtualPort: makes and powers the chip, | SerialPort: the board on its USB serial |
|         |              | its PTY the port                        | port (checked, never opened here)       |
| power   | Power        | VirtualPower: the chip's power switch   | RelayPower: the rig file's commands (a  |
|         |              |                                         | USB relay); ManualPower: the operator   |
| reset   | Reset        | VirtualReset: the chip's reset line     | SerialReset: `mpremote reset`           |
| console | Console      | VirtualConsole: what the board printed  | NoConsole: the port is mpremote's       |
| flash   | Flash        | SerialFlash over the board's port: the virtual chip speaks the raw REPL  |
|         |              | (.mpy for the unix port)                | (.mpy for xtensawin)                    |
| sensors | Sensors      | VirtualSensors: the models' faults and  | BoardSensors: the board's own sensors,  |
|         |              | the scripted environment (the truth)    | no injection, no truth but its readings |
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hil import paths
from hil.errors import BoardError
from hil.flash import FlashResult, flash
from hil.rig.operator import NoAnswer, Operator
from hil.vboard_process import VirtualBoard
from hil.virtual import env as envmod
from iot.harness import children

__all__ = [
    "BoardSensors",
    "Console",
    "Flash",
    "FlashOptions",
    "ManualPower",
    "NoConsole",
    "Port",
    "Power",
    "RelayPower",
    "Reset",
    "Sensors",
    "SerialFlash",
    "SerialPort",
    "SerialReset",
    "VirtualConsole",
    "VirtualPort",
    "VirtualPower",
    "VirtualReset",
    "VirtualSensors",
    "run",
]


# --- the protocols ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlashOptions:
    """What a flash step asks of any board: the firmware, bytecode or source, how long to wait for
    the birth message, the rig's MQTT login (for the probe that waits), where progress goes."""

    firmware: Path
    mpy: bool
    wait_s: float
    say: Callable[[str], None]
    username: str = ""
    password: str = ""
    ota_key: Path | None = None  # the public key its over-the-air updates must be signed with


class Port(Protocol):
    """The board's serial port: where mpremote reaches it."""

    @property
    def path(self) -> str: ...

    def attach(self) -> None:
        """The board is there on its port (a virtual one is made and powered)."""

    def detach(self) -> None:
        """The rig lets go of the board (a virtual one is stopped)."""


class Power(Protocol):
    def on(self) -> None: ...

    def off(self) -> None: ...


class Reset(Protocol):
    def reset(self) -> None:
        """A hard reset: the firmware boots again from its flash."""


class Console(Protocol):
    def text(self) -> str:
        """Everything the board printed so far."""


class Flash(Protocol):
    def flash(self, config: Path, broker: str, options: FlashOptions) -> FlashResult:
        """Copy the firmware and `config` onto the board and wait for its birth message on `broker`."""

    def read_version(self) -> str:
        """The firmware version in the board's flash."""


class Sensors(Protocol):
    def inject(self, sensor: str, kind: str | None, /) -> None:
        """Make `sensor` fail as `kind` (None: heal it)."""

    def set_environment(self, at: float, values: dict[str, float], /) -> None:
        """From epoch `at` on, each metric holds its value."""

    def expected(self, ts_s: float, /) -> dict[str, float] | None:
        """What the sensors measured at epoch `ts_s` before noise; None when only the board knows."""

    def near_change(self, ts_s: float, margin_s: float = 1.5, /) -> bool:
        """True within `margin_s` of a change of the environment (a window there mixes two truths)."""


# --- port ---------------------------------------------------------------------------------------------
class VirtualPort:
    def __init__(self, chip: VirtualBoard) -> None:
        self.chip = chip

    @property
    def path(self) -> str:
        return self.chip.port

    def attach(self) -> None:
        """Factory firmware, the rig's config, power on."""
        self.chip.write_files()
        self.chip.start()

    def detach(self) -> None:
        self.chip.stop()


class SerialPort:
    def __init__(self, board: str, path: str) -> None:
        self.board = board
        self.path = path

    def attach(self) -> None:
        """A real board is assumed powered; its port must be there (or an mpremote `id:` name)."""
        if not Path(self.path).exists() and not self.path.startswith("id:"):
            raise BoardError(
                f"{self.board}: serial port {self.path} does not exist; is the board plugged in?"
            )

    def detach(self) -> None:
        """Nothing to let go of: mpremote opens the port only while it runs."""


# --- power --------------------------------------------------------------------------------------------
class VirtualPower:
    def __init__(self, chip: VirtualBoard) -> None:
        self.chip = chip

    def on(self) -> None:
        self.chip.power_on()

    def off(self) -> None:
        """A power cut: the interpreter is killed, no clean disconnect."""
        self.chip.power_off()


class RelayPower:
    """The shell commands of the rig file (boards[].power.on_command/off_command, e.g. a USB relay)."""

    def __init__(self, board: str, on_command: str, off_command: str) -> None:
        self.board = board
        self.commands = {True: on_command, False: off_command}

    def on(self) -> None:
        self._switch(True)

    def off(self) -> None:
        self._switch(False)

    def _switch(self, on: bool) -> None:
        word = "on" if on else "off"
        if not self.commands[on]:
            raise BoardError(
                f"{self.board}: no power {word} command in the rig file "
                "(boards[].power.on_command/off_command, e.g. a USB relay)"
            )
        run(["sh", "-c", self.commands[on]], f"power {word} {self.board}")


class ManualPower:
    """`power: manual`: the operator at the terminal switches the board; unattended, a step that needs
    it fails saying so instead of waiting for an answer that never comes."""

    def __init__(self, board: str, port: str, operator: Operator | None) -> None:
        self.board = board
        self.port = port
        self.operator = operator

    def on(self) -> None:
        self._ask("plug it back in (power on)", "on")

    def off(self) -> None:
        self._ask("unplug its power (USB cable or supply)", "off")

    def _ask(self, action: str, word: str) -> None:
        if self.operator is None:
            raise BoardError(
                f"{self.board}: no power {word} command in the rig file "
                "(boards[].power.on_command/off_command, e.g. a USB relay); "
                "manual power needs an operator: run `iot hil run` at a terminal"
            )
        try:
            self.operator(f"board {self.board} on {self.port}: {action}")
        except NoAnswer as exc:
            raise BoardError(f"{self.board}: {exc}") from exc


# --- reset --------------------------------------------------------------------------------------------
class VirtualReset:
    def __init__(self, chip: VirtualBoard) -> None:
        self.chip = chip

    def reset(self) -> None:
        self.chip.hard_reset("rig reset")


class SerialReset:
    def __init__(self, board: str, port: Callable[[], str]) -> None:
        self.board = board
        self.port = port

    def reset(self) -> None:
        run([paths.venv_tool("mpremote"), "connect", self.port(), "reset"], f"reset {self.board}")


# --- console ------------------------------------------------------------------------------------------
class VirtualConsole:
    def __init__(self, chip: VirtualBoard) -> None:
        self.chip = chip

    def text(self) -> str:
        return self.chip.console()


class NoConsole:
    """A real board's console is its serial port, which mpremote holds for flashing and reading the
    version; the rig does not capture it (the report says so by an empty console)."""

    def text(self) -> str:
        return ""


# --- flash --------------------------------------------------------------------------------------------
class SerialFlash:
    """`hil.flash` over the board's serial port with mpremote; `mpy_arch` is the .mpy architecture
    (empty: the unix port's own, for a virtual board)."""

    def __init__(self, board: str, port: Callable[[], str], mpy_arch: str) -> None:
        self.board = board
        self.port = port
        self.mpy_arch = mpy_arch

    def flash(self, config: Path, broker: str, options: FlashOptions) -> FlashResult:
        # FlashOptions' fields are hil.flash.flash's keyword arguments of the same names.
        result = flash(self.port(), config, broker, mpy_arch=self.mpy_arch, **vars(options))
        if result is None:
            raise BoardError(f"{self.board}: the flash was a dry run")
        return result

    def read_version(self) -> str:
        """Over the serial console (then a reset, so the firmware runs again)."""
        out = run(
            [
                paths.venv_tool("mpremote"),
                "connect",
                self.port(),
                "exec",
                "import config; print('FW=' + config.FW_VERSION)",
                "+",
                "reset",
            ],
            f"reading the firmware version of {self.board}",
        )
        for line in out.splitlines():
            if line.startswith("FW="):
                return line[3:].strip()
        raise BoardError(f"{self.board}: no firmware version in the answer: {out.strip()[-300:]}")


# --- sensors ------------------------------------------------------------------------------------------
class VirtualSensors:
    """The register-level models' fault switches and the scripted environment, which is also the
    truth the windows are checked against."""

    def __init__(self, chip: VirtualBoard, env: dict[str, Any]) -> None:
        self.chip = chip
        # The scripted environment over time: (from epoch s, spec); the first holds from the start.
        self.timeline: list[tuple[float, dict[str, Any]]] = [(0.0, env)]

    def inject(self, sensor: str, kind: str | None) -> None:
        self.chip.set_fault(sensor, kind)

    def set_environment(self, at: float, values: dict[str, float]) -> None:
        spec = dict(self.timeline[-1][1])
        for metric, value in values.items():
            spec[metric] = {"kind": "constant", "value": value}
        spec = envmod.validate(spec)
        (self.chip.control / "env.json").write_text(json.dumps(spec))
        self.timeline.append((at, spec))

    def expected(self, ts_s: float) -> dict[str, float] | None:
        spec = self.timeline[0][1]
        for since, s in self.timeline:
            if ts_s >= since:
                spec = s
        return envmod.values_at(spec, ts_s)

    def near_change(self, ts_s: float, margin_s: float = 1.5) -> bool:
        return any(abs(ts_s - since) < margin_s for since, _ in self.timeline[1:])


class BoardSensors:
    """A real board's own BME280 and BH1750: nothing to inject, and no truth but what it reports."""

    def __init__(self, board: str) -> None:
        self.board = board

    def inject(self, _sensor: str, _kind: str | None) -> None:
        raise BoardError(f"{self.board}: sensor faults are injected on virtual boards only")

    def set_environment(self, _at: float, _values: dict[str, float]) -> None:
        raise BoardError(f"{self.board}: the environment is scripted on virtual boards only")

    def expected(self, _ts_s: float) -> dict[str, float] | None:
        return None

    def near_change(self, _ts_s: float, _margin_s: float = 1.5) -> bool:
        return False


def run(command: list[str], what: str, timeout: float = 60) -> str:
    """A driver's command: its stdout, or BoardError with the command and its output."""
    proc = children.run(command, timeout, grace=5)
    if proc.returncode < 0:
        raise BoardError(f"{what}: no answer within {timeout:.0f}s (command: {' '.join(command)})")
    if proc.returncode != 0:
        raise BoardError(
            f"{what} failed with exit code {proc.returncode} (command: {' '.join(command)}): "
            f"{(proc.stdout + proc.stderr).strip()[-500:]}"
        )
    return proc.stdout
