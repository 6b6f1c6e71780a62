"""A virtual board's flash as the host sees it: to lay files before power-on and read them after.

Two kinds, one interface:
- `ImageFlash`: the board's `vfs` partition as an image file with littlefs on it, the file system the
  ESP32 port mounts (2 MB of 4 KB sectors on ESP32_GENERIC). The board mounts it (hil/virtual/
  vboot.py and vflash.FileDevice), so it is as large as the part, can fill up, and every erase takes
  the flash's time. The host reads and writes it with littlefs-python, configured as MicroPython's
  VfsLfs2 (read/prog/lookahead 32). The fleet's boards (`iot boards`) use it.
- `FolderFlash`: a host directory, for boards behind a serial console, whose REPL process is the unix
  port's with the directory as its working directory (mpremote copies files there).

Host writes are for a board that is off: the image is written back whole. Reads may race a running
board's writes; littlefs's metadata commits are atomic, so a read that mounts mid-write sees the state
before or after it, and a mount that fails is retried.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Protocol

import littlefs

BLOCK_SIZE = 4096
PARTITION_BLOCKS = 512  # ESP32_GENERIC's vfs partition: 2 MB


def _lfs(ctx: littlefs.UserContext, blocks: int, mount: bool = True) -> littlefs.LittleFS:
    """littlefs as MicroPython's VfsLfs2 formats it (read/prog/lookahead 32 bytes)."""
    return littlefs.LittleFS(
        context=ctx, block_size=BLOCK_SIZE, block_count=blocks, read_size=32, prog_size=32,
        lookahead_size=32, mount=mount,
    )


def of_board(board_dir: Path, serial: bool) -> Flash:
    """A virtual board's flash: a folder behind a serial console, else the partition image."""
    return FolderFlash(board_dir / "flash") if serial else ImageFlash(board_dir / "flash.img")


class Flash(Protocol):
    def read(self, name: str) -> bytes | None: ...
    def write(self, name: str, data: bytes) -> None: ...
    def files(self, folder: str = "") -> dict[str, bytes]: ...
    def wipe(self, keep: tuple[str, ...] = ()) -> None: ...


class FolderFlash:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def write(self, name: str, data: bytes) -> None:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def files(self, folder: str = "") -> dict[str, bytes]:
        root = self.path / folder if folder else self.path
        out = {}
        if root.is_dir():
            for p in sorted(root.iterdir()):
                if p.is_file():
                    try:
                        out[p.name] = p.read_bytes()
                    except FileNotFoundError:
                        continue  # the board removed it while we listed
        return out

    def wipe(self, keep: tuple[str, ...] = ()) -> None:
        if not self.path.is_dir():
            return
        for p in self.path.iterdir():
            if p.name in keep:
                continue
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()


class ImageFlash:
    def __init__(self, path: Path, blocks: int = PARTITION_BLOCKS) -> None:
        self.path = path
        self.blocks = blocks

    def _mount(self) -> tuple[littlefs.LittleFS, littlefs.UserContext]:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            ctx = littlefs.UserContext(self.blocks * BLOCK_SIZE)
            fs = _lfs(ctx, self.blocks, mount=False)
            fs.format()
            fs.mount()
            return fs, ctx
        last: Exception | None = None
        for _ in range(5):
            data = self.path.read_bytes()
            ctx = littlefs.UserContext(len(data))
            ctx.buffer[:] = data
            try:
                return _lfs(ctx, self.blocks), ctx
            except littlefs.LittleFSError as exc:
                last = exc  # caught the board mid-write: read again
                time.sleep(0.05)
        raise OSError(f"{self.path}: littlefs does not mount: {last}")

    def _save(self, ctx: littlefs.UserContext) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(bytes(ctx.buffer))
        tmp.replace(self.path)

    def read(self, name: str) -> bytes | None:
        fs, _ctx = self._mount()
        try:
            with fs.open(name, "rb") as f:
                data: bytes = f.read()
        except littlefs.LittleFSError:
            return None
        return data

    def write(self, name: str, data: bytes) -> None:
        fs, ctx = self._mount()
        if "/" in name:
            fs.makedirs(name.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(name, "wb") as f:
            f.write(data)
        self._save(ctx)

    def files(self, folder: str = "") -> dict[str, bytes]:
        if not self.path.exists():
            return {}
        fs, _ctx = self._mount()
        try:
            names = fs.listdir(folder or "/")
        except littlefs.LittleFSError:
            return {}
        out = {}
        for n in sorted(names):
            path = f"{folder}/{n}" if folder else n
            if fs.stat(path).type == littlefs.LFSStat.TYPE_REG:
                with fs.open(path, "rb") as f:
                    out[n] = f.read()
        return out

    def wipe(self, keep: tuple[str, ...] = ()) -> None:
        """A fresh file system (a re-flash that erases the partition), with `keep` copied back."""
        kept = {n: d for n, d in self.files().items() if n in keep}
        self.path.unlink(missing_ok=True)
        fs, ctx = self._mount()
        for n, d in kept.items():
            with fs.open(n, "wb") as f:
                f.write(d)
        self._save(ctx)
