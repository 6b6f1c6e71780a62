"""The outbox on the MicroPython unix port, on the real littlefs v2 over a counting block device
(hil/virtual/vflash.py): RAM first, flash only for what could not be delivered, append-only
segments with a CRC per record, capacity and drops, power cuts."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil.virtual import outbox_reader
from tests.firmware import unixport

pytestmark = pytest.mark.unit

# The block device holds its blocks in the MicroPython heap.
HEAP = "2M"

PRELUDE = """
import json, os
import vflash
from outbox import Outbox, MAX_PAYLOAD

def payload(boot, seq):
    return json.dumps({"boot": boot, "seq": seq, "pad": "x" * 180}).encode()

def fresh_box(slots=512, blocks=64):  # an outbox on a freshly formatted flash, and its device
    dev = vflash.BlockDevice(blocks)
    vflash.mount(dev, fresh=True)
    return dev, Outbox(slots)

def deliver_all(box, boot_of=None):
    got = []
    while True:
        e = box.next_entry()
        if e is None:
            break
        r = json.loads(bytes(e))
        got.append([r["boot"], r["seq"]])
        box.sent(0)
        box.ack(r["boot"], [(r["seq"], r["seq"])])
    return got
"""


def _run(tmp_path: Path, code: str, heap: str = HEAP) -> object:
    return unixport.run_json(PRELUDE + code, tmp_path, heap=heap)


def test_readings_delivered_while_online_never_write_flash(tmp_path: Path) -> None:
    code = """
dev, box = fresh_box()
before = (dev.total_erases(), dev.programs)
for seq in range(200):
    box.push(0, seq, payload(0, seq))
    deliver_all(box)
print(json.dumps([dev.total_erases() - before[0], dev.programs - before[1], box.count]))
"""
    assert _run(tmp_path, code) == [0, 0, 0]


def test_readings_not_acked_stay_in_ram_and_go_to_flash_after_an_ack_timeout_spill(tmp_path: Path) -> None:
    code = """
dev, box = fresh_box()
for seq in range(5):
    box.push(0, seq, payload(0, seq))
    box.next_entry(); box.sent(seq)
in_ram = [box.ram_count, box.flash_count, box.oldest_unacked_ms()]
box.ack(0, [(1, 3)])  # out of order: 0 is still missing, nothing leaves before it
after_gap = box.count
box.spill()  # the node's ack timeout
resent = deliver_all(box)
print(json.dumps([in_ram, after_gap, box.flash_count, resent, box.count]))
"""
    in_ram, after_gap, _flash, resent, left = _run(tmp_path, code)
    assert in_ram == [5, 0, 0]
    assert after_gap == 5
    assert resent == [[0, s] for s in range(5)]  # re-sent oldest first, same ids
    assert left == 0


def test_offline_readings_survive_a_reboot_and_replay_in_order(tmp_path: Path) -> None:
    code = """
dev, box = fresh_box()
for seq in range(40):
    box.push(0, seq, payload(0, seq), spill=True)
vflash.unmount()
vflash.mount(dev)
again = Outbox(512)
print(json.dumps([again.count, deliver_all(again), os.listdir("outbox.d")]))
"""
    count, got, files = _run(tmp_path, code)
    assert count == 40
    assert got == [[0, s] for s in range(40)]
    assert files == []  # every segment deleted once all of it was acked


def test_full_outbox_drops_the_oldest_and_counts_them_persistently(tmp_path: Path) -> None:
    code = """
dev, box = fresh_box(16)  # segments of 2 records
for seq in range(30):
    box.push(0, seq, payload(0, seq), spill=True)
vflash.unmount()
vflash.mount(dev)
again = Outbox(16)
print(json.dumps([again.dropped, deliver_all(again)]))
"""
    dropped, got = _run(tmp_path, code)
    assert dropped == 14
    assert got == [[0, s] for s in range(14, 30)]  # the newest 16, the oldest dropped


def test_a_failed_flash_write_is_counted_as_dropped_and_the_count_survives_a_reboot(tmp_path: Path) -> None:
    """A program the flash refuses (a worn sector: the driver's error reaches littlefs as -EIO)
    loses that reading; the drop is saved at once, not only with the next full-outbox drop."""
    code = """
dev, box = fresh_box(16)
box.push(0, 0, payload(0, 0), spill=True)
dev.fail_programs = 1
box.push(0, 1, payload(0, 1), spill=True)
failed = dev.failed_programs
box.push(0, 2, payload(0, 2), spill=True)
vflash.unmount()
vflash.mount(dev)
again = Outbox(16)
print(json.dumps([failed, box.dropped, again.dropped, deliver_all(again)]))
"""
    failed, dropped, after_reboot, got = _run(tmp_path, code)
    assert failed == 1  # the fault really hit a flash program
    assert dropped == 1 and after_reboot == 1
    assert got == [[0, 0], [0, 2]]  # every reading delivered or counted: 2 + 1 of 3


def test_capacity_is_capped_by_free_flash_with_drops_counted(tmp_path: Path) -> None:
    code = """
dev = vflash.BlockDevice(24)  # 96 KB of littlefs: far less than 100000 records
vflash.mount(dev, fresh=True)
box = Outbox(100000)
for seq in range(600):
    box.push(0, seq, payload(0, seq), spill=True)
free = os.statvfs(".")[3]
got = deliver_all(box)
print(json.dumps([free, box.dropped, len(got), got[-1], box.dropped + len(got)]))
"""
    free, dropped, kept, last, total = _run(tmp_path, code)
    assert free >= 4  # it stopped short of filling the file system
    assert dropped > 0 and kept > 0 and last == [0, 599]
    assert total == 600  # every reading either delivered or counted as dropped


def test_torn_and_corrupt_records_are_skipped_and_counted(tmp_path: Path) -> None:
    code = """
box = Outbox(512, root="ob")
for seq in range(6):
    box.push(0, seq, payload(0, seq), spill=True)
print(json.dumps(sorted(os.listdir("ob"))))
"""
    files = _run(tmp_path, code)
    assert isinstance(files, list)
    seg = tmp_path / "ob" / files[0]
    data = bytearray(seg.read_bytes())
    record = len(data) // 6
    data[record * 2 + 20] ^= 0x01  # a flipped bit in the third record's payload
    seg.write_bytes(bytes(data[: record * 4 + 7]))  # and the fifth record torn by a power cut
    view = outbox_reader.read(tmp_path, "ob")
    assert [e["seq"] for e in view.entries] == [0, 1] and view.torn == 1
    code = """
box = Outbox(512, root="ob")
print(json.dumps([box.torn, box.count, deliver_all(box)]))
"""
    assert _run(tmp_path, code) == [1, 2, [[0, 0], [0, 1]]]


def test_power_cut_at_random_points_loses_only_counted_readings_and_never_reuses_an_id(
    tmp_path: Path,
) -> None:
    """300 boots, each cut at a random flash operation (a random prefix of that program or erase
    lands): every reading pushed is delivered (same id, same bytes) or counted as dropped."""
    code = """
import binascii, gc
import node
dev = vflash.BlockDevice(48)
vflash.mount(dev, fresh=True)
rng = 12345
def rand(n):
    global rng
    rng = (rng * 1103515245 + 12345) & 0x7FFFFFFF
    return rng % n
pushed = {}
delivered = {}
errors = []
cuts = 0
def take(box):
    e = box.next_entry()
    if e is None:
        return False
    b = bytes(e)
    r = json.loads(b)
    key = "%d/%d" % (r["boot"], r["seq"])
    crc = binascii.crc32(b)  # the bytes' fingerprint: keeping 8000 payloads would not fit the heap
    if delivered.get(key, crc) != crc or pushed.get(key, crc) != crc:
        errors.append("different bytes under id " + key)
    delivered[key] = crc
    box.sent(0)
    box.ack(r["boot"], [(r["seq"], r["seq"])])
    return True
for it in range(300):
    dev.cut_after = rand(400)
    try:
        boot = node.next_boot()
        box = Outbox(60)
        seq = 0
        for step in range(40):
            if rand(3) == 0:
                take(box)
            else:
                key = "%d/%d" % (boot, seq)
                if key in pushed:
                    errors.append("id reused: " + key)
                p = payload(boot, seq)
                box.push(boot, seq, p, spill=True)
                pushed[key] = binascii.crc32(p)
                seq += 1
    except (vflash.PowerCut, OSError):
        cuts += 1
    box = None
    gc.collect()  # close what the cut left open while the device is still "off"
    vflash.unmount()
    dev.power_on()
    vflash.mount(dev)
dev.cut_after = -1
box = Outbox(60)
while take(box):
    pass
lost = [k for k in pushed if k not in delivered]
print(json.dumps([cuts, len(pushed), len(delivered), len(lost), box.dropped, box.torn, errors[:5]]))
"""
    cuts, pushed, delivered, lost, dropped, torn, errors = _run(tmp_path, code, heap="16M")
    print(f"cuts={cuts} pushed={pushed} delivered={delivered} lost={lost} dropped={dropped} torn={torn}")
    assert errors == []
    assert cuts > 150  # most boots really were cut
    assert pushed > 1000 and delivered > 0
    assert lost <= dropped
