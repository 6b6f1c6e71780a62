"""Flash for a virtual board: a block device under the real littlefs v2 (the unix port's VfsLfs2).

The MicroPython unix port carries the same littlefs the ESP32 port uses, so mounting it on this
block device gives littlefs's own behaviour (copy-on-write, a write in the middle of a file
rewriting what follows, metadata compaction) rather than an imitation of it. The device adds what
the hardware has: a size limit (block count), an erase counter per block, programs that may only
clear bits of an erased block (checked), an optional power cut after a given number of
program/erase operations, in the middle of a program (a random prefix of it lands), and failing
programs (a worn or bad sector: the driver reports an error, nothing lands).
"""

BLOCK_SIZE = 4096
_IOCTL_BLOCK_COUNT = 4
_IOCTL_BLOCK_SIZE = 5
_IOCTL_BLOCK_ERASE = 6
_EIO = 5


class PowerCut(Exception):
    """The power went away in the middle of a flash operation."""


class BlockDevice:
    def __init__(self, blocks: int, block_size: int = BLOCK_SIZE) -> None:
        self.blocks = blocks
        self.block_size = block_size
        self.data = bytearray(b"\xff" * (blocks * block_size))
        # Reads and erases copy through views of these, not slices: the ESP32's flash driver takes no
        # heap, and firmware tests count the heap the firmware takes beside it.
        self._view = memoryview(self.data)
        self._ff = memoryview(b"\xff" * block_size)
        self.erases = [0] * blocks
        self.programs = 0
        self.programmed_bytes = 0
        self.cut_after = -1  # operations left before a power cut; -1: never
        self.seed = 1
        self.dead = False
        # Programs left to fail: the ESP32's flash driver returns an error for a program it could not
        # verify, and littlefs passes a negative return of writeblocks up as LFS_ERR_IO (OSError 5)
        # without retrying; nothing of the failed program is written.
        self.fail_programs = 0
        self.failed_programs = 0

    def _rand(self) -> int:
        self.seed = (self.seed * 1103515245 + 12345) & 0x7FFFFFFF
        return self.seed

    def _land(self, n: int) -> int:
        """How many of the n bytes of this operation land before the power goes (n: all of them)."""
        if self.dead:
            raise PowerCut()
        if self.cut_after < 0:
            return n
        if self.cut_after == 0:
            self.cut_after = -1
            self.dead = True
            return self._rand() % (n + 1)
        self.cut_after -= 1
        return n

    def power_on(self) -> None:
        self.dead = False

    def readblocks(self, block: int, buf: bytearray, offset: int = 0) -> None:
        if self.dead:
            raise PowerCut()
        at = block * self.block_size + offset
        n = len(buf)
        try:
            buf[:] = self._view[at : at + n]
        except MemoryError:
            for i in range(n):  # littlefs called from a finalizer (heap locked): no view
                buf[i] = self.data[at + i]

    def writeblocks(self, block: int, buf: bytearray, offset: int = 0) -> int:
        if self.fail_programs > 0 and not self.dead:
            self.fail_programs -= 1
            self.failed_programs += 1
            return -_EIO
        at = block * self.block_size + offset
        land = self._land(len(buf))
        for i in range(land):
            self.data[at + i] &= buf[i]  # NOR flash: a program only clears bits
        self.programs += 1
        self.programmed_bytes += land
        if self.dead:
            raise PowerCut()
        return 0

    def ioctl(self, op: int, arg: int) -> int:
        if op == _IOCTL_BLOCK_COUNT:
            return self.blocks
        if op == _IOCTL_BLOCK_SIZE:
            return self.block_size
        if op == _IOCTL_BLOCK_ERASE:
            land = self._land(self.block_size)
            at = arg * self.block_size
            self.data[at : at + land] = self._ff[:land]
            self.erases[arg] += 1
            if self.dead:
                raise PowerCut()
        return 0

    def total_erases(self) -> int:
        return sum(self.erases)


def mount(dev: BlockDevice, path: str = "/flash", fresh: bool = False) -> None:
    """Mount littlefs on dev at path and chdir there (formatting it first when fresh)."""
    import os

    if fresh:
        os.VfsLfs2.mkfs(dev)  # type: ignore[attr-defined]
    os.mount(os.VfsLfs2(dev), path)  # type: ignore[attr-defined]
    os.chdir(path)


def unmount(path: str = "/flash") -> None:
    import os

    os.chdir("/")
    try:
        os.umount(path)  # type: ignore[attr-defined]
    except OSError as exc:
        print("umount_failed error=" + str(exc))  # already gone with the power
