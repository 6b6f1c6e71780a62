"""A fleet board's flash partition on the MicroPython side: littlefs (os.VfsLfs2) over an image file
on the host, which hil/board_flash.py reads and writes with the same layout. Kept apart from vflash.py
(the RAM block device of the unit tests and the wear bench) so the board loads only this."""

BLOCK_SIZE = 4096
_IOCTL_BLOCK_COUNT = 4
_IOCTL_BLOCK_SIZE = 5
_IOCTL_BLOCK_ERASE = 6


ERASE_MS = 45  # a 4 KB sector erase on the ESP32's SPI NOR flash, typical (datasheets: 45-400 ms)
DEVICE = None  # the FileDevice vboot.py mounted, for the board layer to give it its clock


class FileDevice:
    """A fleet board's flash partition: an image file on the host under littlefs (hil/board_flash.py
    reads and writes the same image from the host). Writes go straight to the file, so a power cut
    (a killed process) keeps what was programmed; an erase takes ERASE_MS of the board's time once
    the board layer set `wait` (its block_ms)."""

    def __init__(self, path: str, blocks: int, block_size: int = BLOCK_SIZE) -> None:
        self._f = open(path, "r+b")  # noqa: SIM115 - open for the board's life
        self.blocks = blocks
        self.block_size = block_size
        self.erases = 0
        self.wait: object = None
        self._ff = b"\xff" * 256

    def readblocks(self, block: int, buf: bytearray, offset: int = 0) -> None:
        self._f.seek(block * self.block_size + offset)
        self._f.readinto(buf)

    def writeblocks(self, block: int, buf: bytearray, offset: int = 0) -> None:
        self._f.seek(block * self.block_size + offset)
        self._f.write(buf)

    def ioctl(self, op: int, arg: int) -> int:
        if op == _IOCTL_BLOCK_COUNT:
            return self.blocks
        if op == _IOCTL_BLOCK_SIZE:
            return self.block_size
        if op == _IOCTL_BLOCK_ERASE:
            self._f.seek(arg * self.block_size)
            for _ in range(self.block_size // 256):
                self._f.write(self._ff)
            self.erases += 1
            if self.wait is not None:
                self.wait(ERASE_MS)  # type: ignore[operator]
        return 0
