"""One virtual board: the unmodified firmware on the MicroPython unix port, as a child process.

Its flash is a directory (config.json, boot counter, outbox), its hardware spec a JSON file, and
its fault switches are files in a control directory that the board layer checks on every access:
`net_down` cuts the network, `fault_bme280` / `fault_bh1750` hold a sensor fault kind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hil import board_flash, paths
from hil.board_flash import Flash, ImageFlash
from hil.errors import BoardError
from hil.virtual import vprofile
from iot.harness.children import rss_kb

# The board layer (its network, the TLS modules of its MicroPython profile, the sensor models) takes
# about 52 KB of the MicroPython heap that a real ESP32 does not spend, so the heap is that much
# larger than the ~110 KB an ESP32 leaves free: the firmware then starts with about the free memory
# it has on a board. Measured 2026-12-07 in main.py's order (import, collect, Board(), collect):
# 50.0 KB for the import (40.7 before the port's stream, TLS, Wi-Fi and NTP semantics and the
# profiles joined it: vnet 3.3 KB more, vprofile and vtls 5.1 KB, vboard 0.9 KB) and 1.8 KB for the
# Board, more the longer its folder's path.
ESP32_FREE_HEAP_KB = 110
VIRTUAL_LAYER_KB = 52
DEFAULT_HEAP = f"{ESP32_FREE_HEAP_KB + VIRTUAL_LAYER_KB}K"
# A board whose flash is a partition image mounts littlefs itself before main.py (hil/virtual/
# vboot.py): its block device and the mount take 3,328 bytes (measured 2026-12-07; the allowance was
# 4 KB, 768 bytes more than an ESP32 has); an ESP32's ~110 KB free are counted after the port mounted
# its file system, so these are the layer's too. A board behind a serial console runs the rig's
# climate chamber (hil/vserial/env.py) over the board model: 960-1,120 bytes (measured 2026-12-07,
# with the folders' paths) that were not allowed for. tests/firmware/test_virtual_layer_heap.py
# measures both.
FLASH_LAYER_BYTES = 3328
SERIAL_LAYER_BYTES = 1024


def plus_bytes(heap: str, extra: int) -> str:
    """`heap` (as -X heapsize takes it: 162K, 1M, bytes) with `extra` bytes more, in bytes."""
    unit = {"K": 1024, "M": 1024 * 1024}.get(heap[-1:].upper())
    total = int(heap[:-1]) * unit if unit else int(heap)
    return str(total + extra)

EXIT_CONFIG = 2
EXIT_WATCHDOG = 3
EXIT_RESET = 4
EXIT_POWER_CUT = 5  # the rig's cut_in_boot fault (hil/virtual/vstart.py): powered up again


class VirtualBoard:
    def __init__(
        self,
        root: Path,
        config: dict[str, Any],
        spec: dict[str, Any],
        heap: str = DEFAULT_HEAP,
        serial: bool = False,
        firmware_dir: Path = paths.FIRMWARE,
        profile: str = vprofile.DEFAULT,
    ) -> None:
        """`serial`: the board sits behind a serial console (hil/serial_board.py) and runs the firmware
        from its own flash, as an ESP32 does; otherwise it runs the firmware in `firmware_dir`
        (firmware/ from the repository, or a build of it: `iot flash --mpy`'s .mpy files and
        main.py). `profile`: the MicroPython version it runs (hil/virtual/vprofile.py), unless the
        spec names one."""
        self.device: str = str(config["device"])
        self.place: str = str(config["place"])
        self.dir = root / self.device
        # A board behind a serial console keeps its flash as a folder (the unix port's REPL works
        # in it); the others mount littlefs on an image of the ESP32's 2 MB vfs partition.
        self.flash: Flash = board_flash.of_board(self.dir, serial)
        self.control = self.dir / "control"
        self.console_path = self.dir / "console.log"
        self.spec_path = self.dir / "spec.json"
        self.config = config
        self.spec = dict(spec)
        self.spec["control_dir"] = str(self.control)
        self.spec.setdefault("profile", profile)
        vprofile.get(self.spec["profile"])  # an unknown version fails here, not inside the board
        self.spec.setdefault("parent_pid", os.getpid())  # boards power off when their rig dies
        self.heap = heap
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.serial = serial
        self.firmware_dir = firmware_dir
        self.port = str(self.dir / "tty") if serial else ""

    def write_files(self) -> None:
        self.control.mkdir(parents=True, exist_ok=True)
        self.flash.write("config.json", json.dumps(self.config, indent=1).encode())
        self.spec_path.write_text(json.dumps(self.spec))

    def login_refused(self) -> str | None:
        """The broker's reason when it refused this board's last login (its console says so)."""
        try:
            with self.console_path.open("rb") as console:
                console.seek(0, os.SEEK_END)
                console.seek(max(0, console.tell() - 4096))
                tail = console.read().decode(errors="replace")
        except OSError:
            return None
        lines = [line for line in tail.splitlines() if line.startswith(("link_connect_failed", "link_up"))]
        if not lines or "connect_refused" not in lines[-1]:
            return None
        # ... error="connect_refused: not authorised" ...
        return lines[-1].split("connect_refused:", 1)[-1].split('"', 1)[0].strip() or "refused"

    def write_raw_config(self, text: str) -> None:
        """Put any text as config.json (to prove how the firmware treats a broken one)."""
        self.flash.write("config.json", text.encode())

    def install_firmware(self) -> None:
        """The factory image: firmware/ copied into the board's flash, if it holds no main.py yet."""
        if self.flash.read("main.py") is not None:
            return
        for source in paths.firmware_files():
            self.flash.write(source.name, source.read_bytes())

    def start(self) -> None:
        if self.running:
            raise BoardError(f"{self.device} is already running (pid {self.pid})")
        if self.flash.read("config.json") is None:
            self.write_files()
        self.control.mkdir(parents=True, exist_ok=True)
        if not self.spec_path.exists():
            self.spec_path.write_text(json.dumps(self.spec))
        if self.serial:
            self._start_serial()
            return
        env = dict(os.environ)
        env["MICROPYPATH"] = f"{self.firmware_dir}:{paths.VIRTUAL}"
        env["VBOARD_SPEC"] = str(self.spec_path)
        env["VBOARD_CONTROL"] = str(self.control)
        assert isinstance(self.flash, ImageFlash)
        if not self.flash.path.exists():
            self.flash.wipe()  # a formatted partition
        env["VBOARD_FLASH"] = str(self.flash.path)
        env["VBOARD_FLASH_BLOCKS"] = str(self.flash.blocks)
        console = open(self.console_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                [
                    paths.venv_tool("micropython"),
                    "-X",
                    f"heapsize={plus_bytes(self.heap, FLASH_LAYER_BYTES)}",
                    str(paths.VIRTUAL / "vboot.py"),  # mounts the flash, then runs main.py
                ],
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the rig, not the terminal, decides when boards stop
            )
        finally:
            console.close()
        self.starts += 1

    def _start_serial(self) -> None:
        self.install_firmware()
        Path(self.port).unlink(missing_ok=True)
        log = open(self.dir / "serial.log", "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hil.serial_board",
                    str(self.dir),
                    "--heap",
                    plus_bytes(self.heap, SERIAL_LAYER_BYTES),
                ],
                cwd=paths.REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.starts += 1
        deadline = time.monotonic() + 15
        while not os.path.exists(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BoardError(
                    f"{self.device}: the serial console did not come up (exit {self.proc.poll()}); "
                    f"see {self.dir / 'serial.log'}"
                )
            time.sleep(0.05)

    # --- power and reset of a board behind a serial console (the chip, not the firmware) -------
    def power_off(self) -> None:
        """Power cut: the interpreter is killed, no clean disconnect; the port stays."""
        self._require_serial("power_off")
        (self.control / "power_off").touch()

    def power_on(self) -> None:
        self._require_serial("power_on")
        (self.control / "power_off").unlink(missing_ok=True)

    def hard_reset(self, why: str = "rig reset") -> None:
        self._require_serial("hard_reset")
        (self.control / "reset").write_text(why)

    def _require_serial(self, what: str) -> None:
        if not self.serial:
            raise BoardError(f"{self.device}: {what} needs a board behind a serial console (serial=True)")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def wait(self, timeout: float) -> int:
        if self.proc is None:
            raise BoardError(f"{self.device} was never started")
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BoardError(f"{self.device} still running after {timeout:.0f}s") from None

    def stop(self, timeout: float = 5.0) -> int | None:
        """Clean stop (SIGINT: the firmware publishes `offline` and disconnects), then SIGKILL."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                # Behind a serial console the supervisor itself waits for the firmware's clean stop.
                self.proc.wait(timeout + 5 if self.serial else timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        """Power cut: no clean disconnect, the broker publishes the last will."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def cut_network(self) -> None:
        (self.control / "net_down").touch()

    def restore_network(self) -> None:
        (self.control / "net_down").unlink(missing_ok=True)

    def cut_power_in_boot(self, after_ops: int) -> None:
        """Arm a power cut after boot.py's `after_ops`-th flash operation at the next boot that has an
        update's journal to work on (a swap or a rollback), hil/virtual/vstart.py."""
        (self.control / "cut_in_boot").write_text(str(after_ops))

    def set_fault(self, sensor: str, kind: str | None) -> None:
        path = self.control / f"fault_{sensor}"
        if kind:
            path.write_text(kind)
        else:
            path.unlink(missing_ok=True)

    def outbox_depth(self) -> int:
        """Readings kept in the board's flash outbox (0 before the first boot; readings the board
        holds in RAM while it can deliver them are not counted: see firmware/outbox.py)."""
        from hil.virtual import outbox_reader

        return len(outbox_reader.read(self.flash).entries)

    def console(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def rss_kb(self) -> int | None:
        """Resident memory of the board process (the whole unix-port process, not just its heap)."""
        return rss_kb(self.pid) if self.running else None

    def wait_console(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            out = self.console()
            if text in out:
                return out
            if not self.running and text not in self.console():
                raise BoardError(
                    f"{self.device} exited ({self.returncode}) before printing {text!r}:\n{out[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise BoardError(
                    f"{self.device} did not print {text!r} within {timeout:.0f}s:\n{out[-2000:]}"
                )
            time.sleep(0.05)
