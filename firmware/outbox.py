"""A bounded, persistent FIFO of encoded readings in flash that survives a reboot.

Layout: `outbox.dat` holds `slots` fixed-size slots (2-byte length + payload); `outbox.idx` holds
the ring state (first, count, dropped, slots, slot_size). The slot is written before the index, and
the index is replaced by rename (atomic on LittleFS and POSIX), so a power cut leaves either the old
or the new state, never a torn one. When full, a push overwrites the oldest entry and counts it.
Nothing is kept in RAM beyond one slot buffer, so depth is bounded by flash, not by the heap.
"""

import os
import struct

from micropython import const

SLOT_SIZE = const(400)
_IDX_FMT = "<IIIII"  # first, count, dropped, slots, slot_size
_IDX_LEN = const(20)


class OutboxError(Exception):
    pass


class Outbox:
    def __init__(self, slots: int, prefix: str = "outbox") -> None:
        self._dat = prefix + ".dat"
        self._idx = prefix + ".idx"
        self._tmp = prefix + ".idx.tmp"
        self._buf = bytearray(SLOT_SIZE)
        self._mv = memoryview(self._buf)
        self.first = 0
        self.count = 0
        self.dropped = 0
        self.slots = slots
        self.slot_size = SLOT_SIZE
        self.kept_geometry = False
        if not self._load_index(slots):
            self._create(slots)

    def _load_index(self, slots: int) -> bool:
        try:
            with open(self._idx, "rb") as f:
                raw = f.read()
            first, count, dropped, have_slots, slot_size = struct.unpack(_IDX_FMT, raw)
            size = os.stat(self._dat)[6]
        except (OSError, ValueError):
            return False
        if slot_size != SLOT_SIZE or size != have_slots * slot_size or count > have_slots:
            return False
        self.first, self.count, self.dropped = first, count, dropped
        if have_slots != slots:
            if count:
                # Keep what is queued rather than lose readings to a config change.
                self.kept_geometry = True
                self.slots = have_slots
                return True
            return False
        return True

    def _create(self, slots: int) -> None:
        zero = bytes(SLOT_SIZE)
        with open(self._dat, "wb") as f:
            for _ in range(slots):
                f.write(zero)
        self.slots = slots
        self.first = 0
        self.count = 0
        self._save_index()

    def _save_index(self) -> None:
        with open(self._tmp, "wb") as f:
            f.write(struct.pack(_IDX_FMT, self.first, self.count, self.dropped, self.slots, SLOT_SIZE))
        os.rename(self._tmp, self._idx)

    def push(self, payload: bytes) -> bool:
        """Append; returns False when the oldest entry had to be dropped to make room."""
        n = len(payload)
        if n > SLOT_SIZE - 2:
            raise OutboxError("payload of %d bytes exceeds the %d-byte slot" % (n, SLOT_SIZE - 2))
        full = self.count == self.slots
        slot = (self.first + self.count) % self.slots
        self._buf[0] = n & 0xFF
        self._buf[1] = n >> 8
        self._buf[2 : 2 + n] = payload
        with open(self._dat, "r+b") as f:
            f.seek(slot * SLOT_SIZE)
            f.write(self._mv[: 2 + n])
        if full:
            self.first = (self.first + 1) % self.slots
            self.dropped += 1
        else:
            self.count += 1
        self._save_index()
        return not full

    def peek(self) -> memoryview | None:
        """The oldest entry (a view into an internal buffer, valid until the next call), or None."""
        if not self.count:
            return None
        with open(self._dat, "rb") as f:
            f.seek(self.first * SLOT_SIZE)
            f.readinto(self._buf)
        n = self._buf[0] | (self._buf[1] << 8)
        if n > SLOT_SIZE - 2:
            raise OutboxError("slot %d is corrupt (length %d)" % (self.first, n))
        return self._mv[2 : 2 + n]

    def pop(self) -> None:
        """Forget the oldest entry (after the broker acknowledged it)."""
        if not self.count:
            return
        self.first = (self.first + 1) % self.slots
        self.count -= 1
        self._save_index()
