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

def measure_without_acks(box, n, t0=0):  # a reading each step, sent when the window allows; no acks
    sent = []
    for seq in range(n):
        box.push(0, seq, payload(0, seq))
        e = box.next_entry()
        if e is not None:
            sent.append(json.loads(bytes(e))["seq"])
            box.sent(t0 + seq)
    return sent
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
box.spill(); box.rewind()  # the node's ack timeout: to flash, then all sent again
resent = deliver_all(box)
print(json.dumps([in_ram, after_gap, box.flash_count, resent, box.count]))
"""
    in_ram, after_gap, _flash, resent, left = _run(tmp_path, code)
    assert in_ram == [5, 0, 0]
    assert after_gap == 5
    assert resent == [[0, s] for s in range(5)]  # re-sent oldest first, same ids
    assert left == 0


def test_ram_filling_without_acks_spills_to_flash_and_sends_nothing_again(tmp_path: Path) -> None:
    """No acks at 1 Hz: the 17th reading overflows RAM (16 slots) and all 17 go to flash. The 16 in
    flight stay in flight with their send times, so only the node's ack timeout (with its backoff)
    re-sends them. Before, the spill rewound: seq 0 went out again at once, the whole window every
    17 readings whatever ack_timeout_s and its backoff said."""
    code = """
dev, box = fresh_box()
sent = measure_without_acks(box, 17, 1000)
state = [box.ram_count, box.flash_count, box.in_flight, box.oldest_unacked_ms(), box.spills]
more = box.next_entry()  # the window is full: nothing, above all not seq 0 again
released = box.ack(0, [(0, 15)])
print(json.dumps([sent, state, more is None, released, deliver_all(box), box.count, os.listdir("outbox.d")]))
"""
    sent, state, window_full, released, rest, left, files = _run(tmp_path, code)
    assert sent == list(range(16))  # each once
    assert state == [0, 17, 16, 1000, 1]  # all in flash, still in flight since the first send
    assert window_full
    assert released == 16  # the acks release the spilled records from flash
    assert rest == [[0, 16]] and left == 0 and files == []


def test_a_spill_keeps_in_flight_readings_in_flight_and_sends_the_rest_from_flash_in_order(
    tmp_path: Path,
) -> None:
    """RAM smaller than the window: spills happen while readings are in flight; the next entries
    come from flash behind them, each reading is sent once, and the acks release them all."""
    code = """
dev = vflash.BlockDevice(64)
vflash.mount(dev, fresh=True)
box = Outbox(512, ram_slots=4, window=16)
sent = measure_without_acks(box, 40)
state = [box.in_flight, box.oldest_unacked_ms(), box.spills, box.flash_count, box.ram_count]
box.ack(0, [(0, 15)])
got = deliver_all(box)
print(json.dumps([sent, state, got, box.count, os.listdir("outbox.d")]))
"""
    sent, state, got, left, files = _run(tmp_path, code)
    assert sent == list(range(16))
    in_flight, oldest, spills, flash, ram = state
    assert (in_flight, oldest) == (16, 0) and spills >= 8 and flash + ram == 40 and ram <= 4
    assert got == [[0, s] for s in range(16, 40)]
    assert left == 0 and files == []


def test_readings_in_flight_when_spilled_survive_a_power_cut(tmp_path: Path) -> None:
    code = """
dev, box = fresh_box()
measure_without_acks(box, 17)
box.ack(0, [(0, 2)])  # released before the cut: their segment may hold them still (same ids)
vflash.unmount()
vflash.mount(dev)
again = Outbox(512)
print(json.dumps([again.count, deliver_all(again)]))
"""
    count, got = _run(tmp_path, code)
    assert got[-14:] == [[0, s] for s in range(3, 17)]  # every unacked one, in order
    assert count == len(got) and got == sorted(got) and len(got) <= 17


def test_a_failed_flash_write_of_a_reading_in_flight_counts_it_and_frees_its_window_place(
    tmp_path: Path,
) -> None:
    code = """
dev, box = fresh_box()
for seq in range(5):
    box.push(0, seq, payload(0, seq))
    box.next_entry(); box.sent(seq)
dev.fail_programs = 1
box.spill()
state = [dev.failed_programs, box.dropped, box.in_flight, box.flash_count, box.ram_count]
released = box.ack(0, [(0, 4)])
print(json.dumps([state, released, box.count, deliver_all(box)]))
"""
    state, released, left, more = _run(tmp_path, code)
    failed, dropped, in_flight, flash, ram = state
    assert failed == 1 and dropped == 1
    assert in_flight == flash == 4 and ram == 0  # the lost one no longer waits for an ack
    assert released == 4 and left == 0 and more == []


def test_outbox_matches_a_model_through_random_pushes_sends_acks_spills_drops_and_rewinds(
    tmp_path: Path,
) -> None:
    """A reference model of the queue (unreleased readings in order, the first `nf` in flight with
    their send times) checked after each of 4,000 random operations, in phases with acks and
    without; a full outbox (40 records, segments of 5) drops the oldest, in flight or not. Only
    rewind may send a reading again."""
    code = """
dev = vflash.BlockDevice(96)
vflash.mount(dev, fresh=True)
box = Outbox(40, ram_slots=4, window=8)
rng = 4242
def rand(n):
    global rng
    rng = (rng * 1103515245 + 12345) & 0x7FFFFFFF
    return rng % n
q = []  # [seq, acked, sent_at] of readings not released, queue order
nf = 0
seq = 0
clock = 0
dropped = 0
errors = []
sends = {}
rewinds = 0
ram_in_flight_spills = 0  # spills that moved readings in flight from RAM to flash
def check(op):
    global nf, dropped
    d = box.dropped - dropped  # drops take the oldest, in flight or not
    if d:
        del q[:d]
        nf = max(0, nf - d)
        dropped = box.dropped
    oldest = None
    for r in q[:nf]:
        if not r[1]:
            oldest = r[2]
            break
    got = [box.count, box.in_flight, box.oldest_unacked_ms()]
    if got != [len(q), nf, oldest]:
        errors.append([op, got, [len(q), nf, oldest]])
def spills_ram_in_flight(will_spill):
    global ram_in_flight_spills
    if will_spill and nf > len(q) - box.ram_count:
        ram_in_flight_spills += 1
for step in range(4000):
    acking = (step // 250) % 2 == 0  # phases: the gateway acks (the queue drains), then it does not
    r = rand(12)
    if acking:
        op = 0 if r < 2 else 4 if r < 7 else 8 if r < 11 else 10 + rand(2)
    else:
        op = 0 if r < 4 else 4 if r < 9 else 10 + rand(2)
    if op < 3:
        spill = rand(8) == 0
        spills_ram_in_flight(spill or box.ram_count + 1 > 4)
        box.push(0, seq, payload(0, seq), spill=spill)
        q.append([seq, False, 0])
        seq += 1
        check("push")
    elif op < 7:
        clock += 1
        e = box.next_entry()
        want = q[nf][0] if nf < min(len(q), 8) else None
        got = json.loads(bytes(e))["seq"] if e is not None else None
        if got != want:
            errors.append(["next", step, got, want])
            break
        if e is not None:
            box.sent(clock)
            q[nf][2] = clock
            nf += 1
            sends[got] = sends.get(got, 0) + 1
        check("send")
    elif op < 10 and nf:
        first = q[rand(nf)][0]
        last = first + rand(6)
        released = box.ack(0, [(first, last)])
        for r in q[:nf]:
            if first <= r[0] <= last:
                r[1] = True
        n = 0
        while nf and q[0][1]:
            q.pop(0)
            nf -= 1
            n += 1
        if n != released:
            errors.append(["ack", step, released, n])
        check("ack")
    elif op == 10:
        spills_ram_in_flight(box.ram_count > 0)
        box.spill()
        check("spill")
    elif op == 11 and rand(10) == 0:
        box.rewind()
        rewinds += 1
        nf = 0
        for r in q:
            r[1] = False
        check("rewind")
    if errors:
        break
resent = sum(n - 1 for n in sends.values())
print(json.dumps([errors[:3], seq, ram_in_flight_spills, box.dropped, rewinds, resent]))
"""
    errors, pushed, ram_in_flight_spills, dropped, rewinds, resent = _run(tmp_path, code)
    print(f"pushed={pushed} ram_in_flight_spills={ram_in_flight_spills} dropped={dropped}"
          f" rewinds={rewinds} resent={resent}")
    assert errors == []
    assert pushed > 800 and ram_in_flight_spills > 10 and dropped > 0  # every path was taken
    assert resent <= rewinds * 8  # re-sends come from rewinds only, at most a window each


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
