# mypy: ignore-errors
# (MicroPython side: the power-on of a fleet board, run instead of main.py)
"""Power-on of a virtual board whose flash is an image (VBOARD_FLASH, VBOARD_FLASH_BLOCKS): littlefs
mounted and made the working directory, as the ESP32 port's _boot.py mounts its vfs partition, then
main.py run as the port runs it (from the flash if it is there, else from the firmware on the path)."""

import os

import vfile

vfile.DEVICE = vfile.FileDevice(os.getenv("VBOARD_FLASH"), int(os.getenv("VBOARD_FLASH_BLOCKS")))
os.mount(os.VfsLfs2(vfile.DEVICE), "/flash")
os.chdir("/flash")
import main  # noqa: E402,F401
