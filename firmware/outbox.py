"""Readings not yet delivered: RAM first, flash only for those that could not be delivered.

Why: littlefs rewrites everything after the write point of a file written in the middle (littlefs
issues 27 and 515), so the old fixed-slot ring in one 200 KB file cost ~26 block erases per reading
(~7 months of flash life at a 10 s interval). Here, while the link is up and the gateway acks, a
reading lives in RAM from measurement to ack and flash is never written. A reading is written to
flash ("spilled") only when it could not be delivered: the link is down, a publish failed, no ack
came within ack_timeout_s, or RAM is full. Flash writes are appends only.

Order: one queue, flash records (older) first, then RAM (newer). `next_entry` walks it from the
front; what was sent waits in `_sent` (at most `window`) until an ack covers it; acked entries leave
from the front. A spill moves all of RAM to the end of flash, in order, and sends nothing again:
readings in flight stay in flight with their send time (their ack timeout runs on), the rest are
read from flash when their turn comes. Only `rewind` re-sends (everything unacked, the same boot
and seq, so downstream de-duplicates): the node calls it after a reconnect and on an ack timeout
(with its backoff), never because RAM filled (at 1 Hz without acks that re-sent the whole window
every ram_slots + 1 readings, whatever the ack timeout).

Flash: `outbox.d/NNNNNNNN.seg`, append-only segment files of at most `_seg_records` records, each
`<BBHIII` magic, 0, length, boot, seq, crc32(header[:12] + payload), then the payload. A segment is
deleted once every record in it is acked, so a power cut re-sends at most one segment's acked
records (same ids). Boot scans every segment: a record with a bad magic, length or CRC (a write
the power cut tore) ends that segment's valid part and is counted in `torn`; appends after a boot
always start a new segment, never after a torn tail. Capacity: at most `max_records` in flash and
never less than _RESERVE_BLOCKS of free space; beyond that the oldest segment is dropped and its
records counted in `dropped` (persisted in `outbox.d/dropped`).
Not kept across a power cut: readings still in RAM (at most `ram_slots`, normally 0-1 awaiting an
ack); that is the price of not writing flash for every reading.
"""

import binascii
import os
import struct

from micropython import const

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

DIR = "outbox.d"  # not "outbox": a directory named like a module shadows outbox.py on import
_MAGIC = const(0xB5)
_HDR = "<BBHIII"
HDR_LEN = const(16)
MAX_PAYLOAD = const(398)  # as the old 400-byte slot less its length: longest ids still fit
_RESERVE_BLOCKS = const(8)  # left free for littlefs metadata, config and the boot counter


class OutboxError(Exception):
    pass


def _no_watchdog() -> None:
    return None


def _crc(hdr: bytearray | memoryview, payload: bytes | bytearray | memoryview) -> int:
    return binascii.crc32(payload, binascii.crc32(memoryview(hdr)[:12])) & 0xFFFFFFFF


class Outbox:
    def __init__(self, max_records: int, ram_slots: int = 16, window: int = 16, root: str = DIR,
                 feed: Callable[[], None] = _no_watchdog) -> None:
        self._dir = root
        # Called before every flash operation: a spill is up to ram_slots + 1 appends, each of which
        # may erase blocks (config.FLASH_OP_MS), too long together for a short watchdog.
        self._feed = feed
        self.max_records = max_records
        self.ram_slots = ram_slots
        self.window = window
        self._seg_records = max(1, min(16, max_records // 8))
        self._buf = bytearray(HDR_LEN + MAX_PAYLOAD)
        self._mv = memoryview(self._buf)
        self._ram: list = []  # [boot, seq, payload] oldest first
        # Segments oldest first: [id, size, records, popped, floor]: floor is the offset of the
        # first record not yet acked, popped how many records before it were acked.
        self._segs: list = []
        self._head_open = False  # appends go to the last segment only if this boot created it
        self._sent: list = []  # [boot, seq, acked, sent_ms, length or -1 for RAM] in queue order
        self._rseg = 0  # read position in flash of the next entry to send: segment index, offset
        self._roff = 0
        self.flash_count = 0
        self.dropped = 0
        self.torn = 0
        self.spills = 0
        # Records are reused, so a reading costs the outbox no allocation once running: RAM
        # entries return to _ram_free (at most ram_slots + 1 ever exist: push spills beyond
        # ram_slots), in-flight records to _sent_free (at most `window`), the next entry's is
        # _pending. The pools fill as records are first needed, not at boot (heap is scarcest then).
        self._ram_free: list = []
        self._sent_free: list = []
        self._pending: list = [0, 0, False, 0, 0]
        self._one: list = [[0, 0]]  # the range `delivered` acks
        self._load()

    # --- boot ---------------------------------------------------------------------------------
    def _path(self, seg_id: int) -> str:
        return self._dir + "/%08d.seg" % seg_id

    def _load(self) -> None:
        try:
            names = os.listdir(self._dir)
        except OSError:
            os.mkdir(self._dir)
            names = []
        try:
            with open(self._dir + "/dropped") as f:
                self.dropped = int(f.read())
        except (OSError, ValueError):
            self.dropped = 0
        ids = sorted(int(n[:-4]) for n in names if n.endswith(".seg") and n[:-4].isdigit())
        for seg_id in ids:
            records, size = self._scan(seg_id)
            if records:
                self._segs.append([seg_id, size, records, 0, 0])
                self.flash_count += records
            else:
                os.remove(self._path(seg_id))

    def _scan(self, seg_id: int) -> tuple:
        """(valid records, bytes they take) of one segment; a torn or corrupt tail is counted."""
        records = 0
        at = 0
        with open(self._path(seg_id), "rb") as f:
            while True:
                hdr = self._mv[:HDR_LEN]
                n = f.readinto(hdr)
                if not n:
                    break
                ok = n == HDR_LEN and self._buf[0] == _MAGIC
                length = self._buf[2] | (self._buf[3] << 8)
                if ok and length <= MAX_PAYLOAD:
                    body = self._mv[HDR_LEN : HDR_LEN + length]
                    stored = struct.unpack_from("<I", self._buf, 12)[0]
                    ok = f.readinto(body) == length and _crc(self._buf, body) == stored
                else:
                    ok = False
                if not ok:
                    self.torn += 1
                    break
                records += 1
                at += HDR_LEN + length
        return records, at

    # --- state ------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Readings not yet acked (RAM and flash)."""
        return self.flash_count + len(self._ram)

    @property
    def in_flight(self) -> int:
        return len(self._sent)

    def oldest_unacked_ms(self) -> int | None:
        """sent_ms of the oldest sent, unacked entry (for the ack timeout), or None."""
        for e in self._sent:
            if not e[2]:
                return e[3]  # type: ignore[no-any-return]
        return None

    # --- writing ----------------------------------------------------------------------------
    def push(self, boot: int, seq: int, payload: bytes, spill: bool = False) -> None:
        """Queue a reading; spill=True (link down) writes it, and all of RAM, to flash now."""
        if len(payload) > MAX_PAYLOAD:
            raise OutboxError("payload of %d bytes exceeds %d" % (len(payload), MAX_PAYLOAD))
        e = self._ram_free.pop() if self._ram_free else [0, 0, b""]
        e[0] = boot
        e[1] = seq
        e[2] = payload
        self._ram.append(e)
        if spill or len(self._ram) > self.ram_slots:
            self.spill()

    def spill(self) -> None:
        """Move every reading in RAM to the end of flash (they could not be delivered, or RAM is
        full). What is in flight stays in flight: nothing is sent again for a spill (rewind does)."""
        if not self._ram:
            return
        self.spills += 1
        # Names already in the firmware only: a new identifier is a new qstr, and one more crossed
        # a qstr pool's end on the unix port (7 KB less heap for the source-compiled firmware).
        while self._ram:
            e = self._ram[0]  # at queue position flash_count: RAM's front becomes flash's end
            self._feed()
            try:
                n = self._append(e[0], e[1], e[2])
            except OSError as exc:
                # Flash full or failing: this reading is lost, and counted as such.
                code = exc.args[0] if exc.args else 0
                print("outbox_write_failed errno=%d action=counted as dropped" % code)
                self.dropped += 1
                try:
                    self._save_dropped()
                except OSError:
                    # The flash refuses this write too: the count stays in RAM and is saved with
                    # the next one that succeeds (every drop saves the running total).
                    pass
                if self.flash_count < len(self._sent):  # in flight: no ack to wait for any more
                    self._sent_free.append(self._sent.pop(self.flash_count))
                self._free_ram(self._ram.pop(0))
                continue
            self._free_ram(self._ram.pop(0))
            k = self.flash_count - 1
            if k < len(self._sent):
                # In flight: now a flash record (its ack releases it from there), and the next entry
                # to send is the one after it.
                self._sent[k][4] = n
                self._rseg = len(self._segs) - 1
                self._roff = self._segs[-1][1]

    def _free_ram(self, e: list) -> None:
        e[2] = b""  # the payload may go
        self._ram_free.append(e)

    def _append(self, boot: int, seq: int, payload: bytes) -> int:
        """Append one record at the end of the queue's flash part; returns its payload length."""
        while self.flash_count >= self.max_records or (self._segs and self._free_blocks() < _RESERVE_BLOCKS):
            self._drop_oldest()
        head = self._segs[-1] if self._segs else None
        if head is None or not self._head_open or head[2] >= self._seg_records:
            seg_id = head[0] + 1 if head is not None else 0
            head = [seg_id, 0, 0, 0, 0]
            self._segs.append(head)
            self._head_open = True
        n = len(payload)
        struct.pack_into(_HDR, self._buf, 0, _MAGIC, 0, n, boot, seq, 0)
        self._buf[HDR_LEN : HDR_LEN + n] = payload
        struct.pack_into("<I", self._buf, 12, _crc(self._buf, self._mv[HDR_LEN : HDR_LEN + n]))
        # One write of header and payload, appended: littlefs then programs the file's last block
        # and commits metadata; nothing before the write point is rewritten.
        with open(self._path(head[0]), "ab") as f:
            f.write(self._mv[: HDR_LEN + n])
        head[1] += HDR_LEN + n
        head[2] += 1
        self.flash_count += 1
        return n

    def _free_blocks(self) -> int:
        st = os.statvfs(self._dir)
        return st[3]  # type: ignore[no-any-return]

    def _drop_oldest(self) -> None:
        self._discard(0)

    def _discard(self, index: int) -> None:
        """Delete segment `index` with its unacked readings, counted as dropped (persisted). The
        oldest (index 0): those of them in flight leave `_sent` (no ack to wait for), the rest of
        the queue stays as it was. Any other: the caller rewinds."""
        self._feed()
        seg = self._segs.pop(index)
        lost = seg[2] - seg[3]
        if not index:
            k = min(lost, len(self._sent))
            while k > 0:
                self._sent_free.append(self._sent.pop(0))
                k -= 1
        if self._rseg > index:
            self._rseg -= 1
        elif self._rseg == index:
            # The next entry to send was in it: nothing after it was sent, go on from the next one.
            self._roff = self._segs[index][4] if index < len(self._segs) else 0
        if index == len(self._segs):
            self._head_open = False  # never append to a segment that is gone
        self.flash_count -= lost
        self.dropped += lost
        # Count first, delete second: a power cut in between over-counts (the readings are still
        # there and get delivered), it never loses readings without counting them.
        self._save_dropped()
        os.remove(self._path(seg[0]))

    def _save_dropped(self) -> None:
        """Persist the running drop count (write-then-rename: a cut leaves the old or the new)."""
        with open(self._dir + "/dropped.tmp", "w") as f:
            f.write(str(self.dropped))
        os.rename(self._dir + "/dropped.tmp", self._dir + "/dropped")

    # --- sending ----------------------------------------------------------------------------
    def rewind(self) -> None:
        """Forget what is in flight: it is sent again from the front (after a reconnect, a failed
        publish or an ack timeout)."""
        while self._sent:
            self._sent_free.append(self._sent.pop())
        self._rseg = 0
        self._roff = self._segs[0][4] if self._segs else 0

    def next_entry(self) -> memoryview | bytes | None:
        """The payload of the next entry to send (valid until the next call), or None when all is in
        flight or the window is full. Call `sent` after publishing it."""
        if len(self._sent) >= self.window:
            return None
        k = len(self._sent)
        if k < self.flash_count:
            while self._roff >= self._segs[self._rseg][1]:
                self._rseg += 1
                self._roff = 0
            seg = self._segs[self._rseg]
            with open(self._path(seg[0]), "rb") as f:
                f.seek(self._roff)
                f.readinto(self._mv[:HDR_LEN])
                _m, _z, n, boot, seq, crc = struct.unpack_from(_HDR, self._buf, 0)
                body = self._mv[HDR_LEN : HDR_LEN + n]
                f.readinto(body)
            if _crc(self._buf, body) != crc:
                # Changed since boot (a bit flip): nothing after it in the segment can be trusted.
                self.torn += 1
                self._discard(self._rseg)
                self.rewind()
                return None
            self._pend(boot, seq, n)
            return body
        k -= self.flash_count
        if k >= len(self._ram):
            return None
        e = self._ram[k]
        self._pend(e[0], e[1], -1)
        return e[2]  # type: ignore[no-any-return]

    def _pend(self, boot: int, seq: int, length: int) -> None:
        p = self._pending
        p[0] = boot
        p[1] = seq
        p[4] = length

    def sent(self, now_ms: int) -> None:
        """The entry from next_entry was published (PUBACKed)."""
        p = self._pending
        e = self._sent_free.pop() if self._sent_free else [0, 0, False, 0, 0]
        e[0] = p[0]
        e[1] = p[1]
        e[2] = False
        e[3] = now_ms
        e[4] = p[4]
        if e[4] >= 0:
            self._roff += HDR_LEN + e[4]
        self._sent.append(e)

    def delivered(self) -> None:
        """The entry just `sent` needs no further ack (e2e_ack off: the PUBACK is the ack)."""
        e = self._sent[-1]
        r = self._one[0]
        r[0] = r[1] = e[1]
        self.ack(e[0], self._one)

    @property
    def ram_count(self) -> int:
        return len(self._ram)

    def ack(self, boot: int, ranges: list) -> int:
        """Mark in-flight entries of `boot` whose seq is in an inclusive [first, last] range as
        delivered; release acked entries from the front. Returns how many were released."""
        for e in self._sent:
            if e[0] == boot and not e[2]:
                s = e[1]
                for r in ranges:
                    if r[0] <= s <= r[1]:
                        e[2] = True
                        break
        released = 0
        while self._sent and self._sent[0][2]:
            e = self._sent.pop(0)
            self._release_front(e)
            self._sent_free.append(e)
            released += 1
        return released

    def _release_front(self, e: list) -> None:
        if self.flash_count:
            seg = self._segs[0]
            seg[3] += 1
            seg[4] += HDR_LEN + e[4]
            self.flash_count -= 1
            if seg[3] >= seg[2]:
                # Every record acked: the only flash write on the happy path after an outage.
                self._feed()
                os.remove(self._path(seg[0]))
                self._segs.pop(0)
                if self._rseg:
                    self._rseg -= 1
                else:
                    self._roff = self._segs[0][4] if self._segs else 0
                if not self._segs:
                    self._head_open = False
        else:
            self._free_ram(self._ram.pop(0))
