"""A virtual board's USB serial port: a PTY carrying its MicroPython console, with reset and power.

`python -m hil.serial_board BOARD_DIR` is the chip around one virtual board. The user's end (mpremote,
`iot flash`, a terminal) opens `BOARD_DIR/tty`, a symlink to the slave of one PTY; the board's
MicroPython process has a second PTY as its controlling terminal (so Ctrl-C is SIGINT while main.py
runs, and the unix port's REPL and raw REPL read it otherwise). This supervisor relays bytes between
the two, tees the board's output into `console.log`, and does what the chip does and the unix port
cannot:

- power-on, hard reset, watchdog reset (board exit 3), `vboard.reset()` (exit 4): run `boot.py` and
  `main.py` from the flash directory again (hil/vserial/vport.py);
- main.py ended (Ctrl-C, a config halt, a crash): the REPL, as on an ESP32;
- soft reset: Ctrl-D at an empty raw REPL (what mpremote sends first unless `resume`) restarts the
  interpreter into the raw REPL without main.py; Ctrl-D or SystemExit in the friendly REPL reboots
  into main.py;
- `machine.reset()` (hil/vserial/machine.py, what `mpremote reset` calls) and the rig's reset: the
  file `control/reset`; power: while `control/power_off` exists the board is off.

The board process is one MicroPython interpreter after another on the same terminal, so bytes typed
between two of them (mpremote's `\\r\\x01` after its Ctrl-C) wait in the terminal for the next one.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import termios
import time
import tty
from pathlib import Path
from typing import IO

from hil import paths
from iot.harness.children import die_with_parent

EXIT_CONFIG, EXIT_WATCHDOG, EXIT_RESET, EXIT_POWER_CUT = 2, 3, 4, 5
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"
RAW_READY_AFTER_EXEC = b"\x04>"
PROMPT = b">>> "
SOFT_REBOOT = b"MPY: soft reboot\r\n"
# Bytes of board output a serial port keeps while nobody reads it; older output is discarded, as a
# USB-serial adapter's buffer overflows when no terminal is attached.
UNREAD_LIMIT = 32 * 1024
STOP_TIMEOUT_S = 5.0
VSERIAL = Path(__file__).resolve().parent / "vserial"

MAIN, REPL, RAW = "main", "repl", "raw"


def hardware(hw: Path) -> Path:
    """The modules of the chip around the firmware, fresh at every boot: the board model
    (hil/virtual) with hil/vserial's `machine` and climate-chamber `env` over it."""
    hw.mkdir(exist_ok=True)
    for name in paths.VIRTUAL_MODULES:
        shutil.copyfile(paths.VIRTUAL / name, hw / ("env_model.py" if name == "env.py" else name))
    for source in VSERIAL.glob("*.py"):
        shutil.copyfile(source, hw / source.name)
    return hw


def _child_setup() -> None:
    """In the board process: a session of its own with the board terminal as controlling tty."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    die_with_parent()


def _raw_with_signals(fd: int) -> None:
    """A UART: no echo, no line editing, no output translation; Ctrl-C still raises SIGINT."""
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[3] |= termios.ISIG
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class SerialBoard:
    def __init__(self, board_dir: Path, heap: str) -> None:
        self.dir = board_dir
        self.flash = board_dir / "flash"
        self.control = board_dir / "control"
        self.port_link = board_dir / "tty"
        self.console_path = board_dir / "console.log"
        self.heap = heap
        self.proc: subprocess.Popen[bytes] | None = None
        self.mode = MAIN
        self.boots = 0
        self.raw_ready = False  # the raw REPL waits for input with an empty buffer
        self.tail = b""
        self.hide_until_prompt = False
        self.stopping = False
        self.parent = os.getppid()
        self.user_master, self.user_slave = pty.openpty()
        _raw_with_signals(self.user_slave)
        self.board_master, self.board_slave = pty.openpty()
        _raw_with_signals(self.board_slave)
        for fd in (self.user_master, self.board_master):
            os.set_blocking(fd, False)
        self.console: IO[bytes] = open(self.console_path, "ab", buffering=0)  # noqa: SIM115

    # --- the port ---------------------------------------------------------------------------
    def publish_port(self) -> str:
        name = os.ttyname(self.user_slave)
        tmp = self.port_link.with_name("tty.new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(name)
        os.replace(tmp, self.port_link)
        return name

    def to_user(self, data: bytes) -> None:
        try:
            waiting = int.from_bytes(fcntl.ioctl(self.user_slave, termios.FIONREAD, b"\0\0\0\0"), "little")
            if waiting > UNREAD_LIMIT:
                termios.tcflush(self.user_slave, termios.TCIFLUSH)
            os.write(self.user_master, data)
        except BlockingIOError:
            pass  # nobody reads the port: the output is lost, as on a real adapter

    def say(self, text: str) -> None:
        line = f"\r\n[vboard] {text}\r\n".encode()
        self.console.write(line.replace(b"\r\n", b"\n"))
        self.to_user(line)

    # --- the board process ------------------------------------------------------------------
    def boot(self, mode: str, reason: str) -> None:
        if self.proc is not None:
            self.kill_board()
        if mode == MAIN and reason != "soft reboot":
            # A reset or power-on stops the watchdog; main.py ending or a soft reset do not.
            (self.control / "wdt_deadline_ms").unlink(missing_ok=True)
        if mode == MAIN and not (self.flash / "main.py").exists():
            mode = REPL
        self.mode = mode
        self.boots += 1
        self.raw_ready = False
        self.hide_until_prompt = mode == RAW
        command = [paths.venv_tool("micropython"), "-X", f"heapsize={self.heap}"]
        hw = self.hardware()
        if mode == MAIN:
            command.append(str(hw / "vport.py"))  # boot.py, then main.py, as the port starts
        env = dict(os.environ)
        env["MICROPYPATH"] = str(hw)
        env["VBOARD_SPEC"] = str(self.dir / "spec.json")
        env["VBOARD_CONTROL"] = str(self.control)
        env["VBOARD_DEVICE"] = self.dir.name
        if mode != RAW:
            self.say(f"boot={self.boots} reason={reason} run={'main.py' if mode == MAIN else 'repl'}")
        self.proc = subprocess.Popen(
            command,
            cwd=self.flash,
            env=env,
            stdin=self.board_slave,
            stdout=self.board_slave,
            stderr=self.board_slave,
            preexec_fn=_child_setup,  # the supervisor is single-threaded
        )

    def hardware(self) -> Path:
        return hardware(self.dir / "hw")

    def kill_board(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def board_exited(self, code: int) -> None:
        """What the chip does when the interpreter stops."""
        self.proc = None
        if self.stopping:
            return
        if self.mode == MAIN and code in (EXIT_WATCHDOG, EXIT_RESET, EXIT_POWER_CUT):
            self.boot(MAIN, {EXIT_WATCHDOG: "watchdog", EXIT_RESET: "reset"}.get(code, "power cut"))
        elif self.mode == MAIN:
            self.boot(REPL, f"main.py ended with exit code {code}")
        else:
            self.boot(MAIN, "soft reboot")

    # --- bytes in both directions -----------------------------------------------------------
    def from_user(self, data: bytes) -> None:
        out = bytearray()
        for byte in data:
            if byte == 0x04 and self.raw_ready:
                self._write_board(bytes(out))
                out.clear()
                self.to_user(SOFT_REBOOT)
                self.console.write(b"\n[vboard] soft reboot (raw REPL)\n")
                self.boot(RAW, "soft reboot")
                continue
            self.raw_ready = False
            out.append(byte)
        self._write_board(bytes(out))

    def _write_board(self, data: bytes) -> None:
        while data:
            try:
                n = os.write(self.board_master, data)
            except BlockingIOError:
                select.select([], [self.board_master], [], 1.0)
                continue
            data = data[n:]

    def from_board(self, data: bytes) -> None:
        self.console.write(data)
        self.tail = (self.tail + data)[-64:]
        if self.hide_until_prompt:
            if self.tail.endswith(PROMPT):
                self.hide_until_prompt = False
                self._write_board(b"\x01")
            return
        if self.tail.endswith(RAW_BANNER) or self.tail.endswith(RAW_READY_AFTER_EXEC):
            self.raw_ready = True
        self.to_user(data)

    # --- control files ----------------------------------------------------------------------
    def check_control(self) -> None:
        powered_off = (self.control / "power_off").exists()
        if powered_off and self.proc is not None:
            self.kill_board()
            self.console.write(b"\n[vboard] power off\n")
        elif not powered_off and self.proc is None and not self.stopping:
            self.boot(MAIN, "power on")
        request = self.control / "reset"
        if request.exists():
            why = request.read_text().strip() or "reset"
            request.unlink(missing_ok=True)
            if not powered_off:
                self.boot(MAIN, why)

    def check_watchdog(self) -> None:
        """machine.WDT keeps running once main.py stopped (Ctrl-C, the REPL, a soft reset): the board
        process no longer counts, the chip does, from the deadline the board left."""
        if self.mode == MAIN or self.proc is None:
            return
        try:
            deadline = int((self.control / "wdt_deadline_ms").read_text())
        except (OSError, ValueError):
            return
        if time.time() * 1000 > deadline:
            self.say("watchdog reset: the watchdog the firmware armed kept running at the REPL")
            (self.control / "reset_cause").write_text("watchdog")
            self.boot(MAIN, "watchdog")

    def stop(self) -> None:
        """Clean stop: Ctrl-C (the firmware says offline), then the power goes. At the REPL there is
        no firmware running to say anything, and Ctrl-C only gives the prompt back: the power goes at
        once (waiting STOP_TIMEOUT_S for an exit that never comes cost every `iot hil check` 5 s a
        board)."""
        self.stopping = True
        if self.mode == MAIN and self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while time.monotonic() < deadline and self.proc.poll() is None:
                self._pump(0.05)
        self.kill_board()
        self.port_link.unlink(missing_ok=True)

    def _pump(self, timeout: float) -> None:
        readable, _, _ = select.select([self.user_master, self.board_master], [], [], timeout)
        if self.board_master in readable:
            try:
                self.from_board(os.read(self.board_master, 4096))
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
        if self.user_master in readable:
            try:
                self.from_user(os.read(self.user_master, 4096))
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise

    def run(self) -> int:
        self.control.mkdir(parents=True, exist_ok=True)
        (self.control / "reset").unlink(missing_ok=True)
        port = self.publish_port()
        (self.dir / "serial.json").write_text(json.dumps({"pid": os.getpid(), "pty": port}))
        if not (self.control / "power_off").exists():
            self.boot(MAIN, "power on")
        while not self.stopping:
            self._pump(0.1)
            if self.proc is not None and (code := self.proc.poll()) is not None:
                self.board_exited(code)
            self.check_control()
            self.check_watchdog()
            if os.getppid() != self.parent:
                self.say("rig gone: powering off")
                break
        self.stop()
        return 0


def _stop_on(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.serial_board")
    parser.add_argument("board_dir", type=Path)
    parser.add_argument("--heap", default="136K")
    args = parser.parse_args(argv)
    die_with_parent(signal.SIGTERM)
    board = SerialBoard(args.board_dir, args.heap)
    signal.signal(signal.SIGTERM, _stop_on)
    try:
        return board.run()
    except KeyboardInterrupt:
        board.stop()
        return 0


if __name__ == "__main__":
    sys.exit(main())
