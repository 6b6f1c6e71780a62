"""Flash wear of the outbox: block erases per day online and offline, and the flash life they imply.

Runs firmware/outbox.py on the MicroPython unix port over the real littlefs v2 (the unix port's
VfsLfs2, the same littlefs the ESP32 port uses) on a counting block device (hil/virtual/vflash.py)
the size of the ESP32 generic image's file system (2 MB, 512 blocks of 4 KB), and counts erases:
- online: every reading delivered and acked (RAM only);
- offline: every reading written to flash, then delivered once the link returns;
- for comparison, the previous fixed-slot ring (one 200 KB file, a slot rewritten in the middle
  per reading), from git, for a sample of readings scaled to a day.
Lifetime = 100,000 erase cycles per sector / erases per block per day, both for erases spread over
the file system (littlefs wear-levels) and for the most-erased block of the run (pessimistic).

    .venv/bin/python bench/flash_wear.py [--interval 10] [--offline-hours 24] [--legacy-sample 150]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

from hil import paths

REPO = Path(__file__).resolve().parents[1]

CYCLES = 100_000
BLOCKS = 512  # MicroPython ESP32 generic: 2 MB vfs partition
LEGACY_REV = "68a044e"  # main before the RAM-first outbox

SNIPPET = """
import json, sys
import vflash
dev = vflash.BlockDevice({blocks})
vflash.mount(dev, fresh=True)
PAD = "x" * 150  # a payload v1 reading is ~250 bytes
def payload(seq):
    return json.dumps({{"v": 1, "boot": 0, "seq": seq, "pad": PAD}}).encode()
out = {{}}
if {legacy}:
    from outbox_legacy import Outbox
    box = Outbox(512)
    base = dev.total_erases()
    for seq in range({legacy_n}):
        box.push(payload(seq))
        box.peek()
        box.pop()
    out["legacy"] = [dev.total_erases() - base, {legacy_n}, max(dev.erases)]
else:
    from outbox import Outbox
    box = Outbox(512)
    base = dev.total_erases()
    for seq in range({online_n}):
        box.push(0, seq, payload(seq))
        box.next_entry()
        box.sent(0)
        box.ack(0, [(seq, seq)])
    out["online"] = [dev.total_erases() - base, {online_n}]
    dev.erases = [0] * {blocks}
    base = 0
    for seq in range({online_n}, {online_n} + {offline_n}):
        box.push(0, seq, payload(seq), True)
    written = dev.total_erases()
    while True:
        e = box.next_entry()
        if e is None:
            break
        r = json.loads(bytes(e))
        box.sent(0)
        box.ack(0, [(r["seq"], r["seq"])])
    out["offline"] = [written, dev.total_erases() - written, {offline_n}, max(dev.erases), box.dropped]
print(json.dumps(out))
"""


def run(code: str, workdir: Path, extra_path: str = "") -> dict[str, list[int]]:
    script = workdir / "wear.py"
    script.write_text(code)
    path = f"{paths.FIRMWARE}:{paths.VIRTUAL}" + (f":{extra_path}" if extra_path else "")
    proc = subprocess.run(
        [paths.venv_tool("micropython"), "-X", "heapsize=24M", str(script)],
        cwd=workdir,
        env=dict(os.environ, MICROPYPATH=path),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"micropython failed:\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, list[int]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def years(erases_per_block_per_day: float) -> float:
    return float("inf") if erases_per_block_per_day <= 0 else CYCLES / erases_per_block_per_day / 365


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--interval", type=float, default=10, help="seconds between readings (default 10)")
    parser.add_argument("--offline-hours", type=float, default=24, help="length of the outage simulated")
    parser.add_argument("--legacy-sample", type=int, default=150, help="readings through the old ring")
    args = parser.parse_args()
    per_day = int(86400 / args.interval)
    offline_n = int(args.offline_hours * 3600 / args.interval)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fmt = {"blocks": BLOCKS, "online_n": per_day, "offline_n": offline_n, "legacy_n": args.legacy_sample}
        new = run(SNIPPET.format(legacy=False, **fmt), work)
        legacy_dir = work / "legacy"
        legacy_dir.mkdir()
        legacy_src = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{LEGACY_REV}:firmware/outbox.py"],
            capture_output=True, text=True, check=False,
        )
        old: dict[str, list[int]] = {}
        if legacy_src.returncode == 0:
            (legacy_dir / "outbox_legacy.py").write_text(legacy_src.stdout)
            old = run(SNIPPET.format(legacy=True, **fmt), work / "legacy", str(legacy_dir))
    erased, readings = new["online"]
    online_day = erased * per_day / readings
    w_erases, d_erases, n_off, hottest, dropped = new["offline"]
    offline_day = (w_erases + d_erases) * per_day / n_off
    print(f"flash: {BLOCKS} blocks x 4 KB littlefs v2, {CYCLES:,} erase cycles per sector; "
          f"interval {args.interval:g} s = {per_day} readings/day")
    print(f"online : {online_day:10.0f} erases/day  ({erased} erases for {readings} readings delivered"
          f" and acked)  -> flash life {years(online_day / BLOCKS):.3g} years")
    print(f"offline: {offline_day:10.0f} erases/day  ({w_erases} to write {n_off} readings, {d_erases} to"
          f" deliver them after; {dropped} dropped beyond outbox_slots)")
    print(f"         spread over the file system: {offline_day / BLOCKS:.1f} per block per day -> "
          f"{years(offline_day / BLOCKS):.1f} years offline all the time")
    print(f"         most-erased block of the run: {hottest} in {args.offline_hours:g} h -> "
          f"{years(hottest * 24 / args.offline_hours):.1f} years (pessimistic: littlefs moves hot metadata)")
    if old:
        o_erases, o_n, o_hot = old["legacy"]
        old_day = o_erases * per_day / o_n
        print(f"before (fixed-slot ring, {LEGACY_REV}): {old_day:10.0f} erases/day "
              f"({o_erases} for {o_n} readings) -> {years(old_day / BLOCKS):.2f} years spread, "
              f"hottest block {o_hot} in {o_n} readings")


if __name__ == "__main__":
    main()
