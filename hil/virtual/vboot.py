# mypy: ignore-errors
# (MicroPython side: the power-on of a fleet board, run instead of main.py)
"""Power-on of a virtual board whose flash is an image (VBOARD_FLASH, VBOARD_FLASH_BLOCKS): littlefs
mounted and made the working directory, as the ESP32 port's _boot.py mounts its vfs partition, then
boot.py and main.py run as the port runs them (from the flash if they are there, else from the
firmware folder on the path, which stands for the flashed image): vstart.py."""

import os
import sys

import vfile

vfile.DEVICE = vfile.FileDevice(os.getenv("VBOARD_FLASH"), int(os.getenv("VBOARD_FLASH_BLOCKS")))
os.mount(os.VfsLfs2(vfile.DEVICE), "/flash")
os.chdir("/flash")
import vstart  # noqa: E402  (the flash first on sys.path, then boot.py)

del sys.modules["vstart"], vstart
import main  # noqa: E402,F401
