"""Host-side reader of a board's flash outbox (firmware/outbox.py's segment files), for tests and tools.

CPython only (not copied to boards). It reads what a board would find at boot: valid records in
order, a torn or corrupt tail counted and skipped, the persistent drop count.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAGIC = 0xB5
HDR = struct.Struct("<BBHIII")  # magic, 0, length, boot, seq, crc32(header[:12] + payload)
MAX_PAYLOAD = 398


@dataclass
class FlashOutbox:
    entries: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0
    torn: int = 0
    segments: int = 0


def read(flash: Path, name: str = "outbox.d") -> FlashOutbox:
    out = FlashOutbox()
    root = flash / name
    try:
        out.dropped = int((root / "dropped").read_text())
    except (OSError, ValueError):
        out.dropped = 0
    if not root.is_dir():
        return out
    segs = sorted((p for p in root.glob("*.seg") if p.stem.isdigit()), key=lambda p: int(p.stem))
    for seg in segs:
        try:
            data = seg.read_bytes()
        except FileNotFoundError:
            continue  # the board deleted it (all acked) while we listed
        out.segments += 1
        at = 0
        while at < len(data):
            if len(data) - at < HDR.size:
                out.torn += 1
                break
            magic, _z, n, _boot, _seq, crc = HDR.unpack_from(data, at)
            body = data[at + HDR.size : at + HDR.size + n]
            if magic != MAGIC or n > MAX_PAYLOAD or len(body) != n:
                out.torn += 1
                break
            if zlib.crc32(body, zlib.crc32(data[at : at + 12])) != crc:
                out.torn += 1
                break
            out.entries.append(json.loads(body))
            at += HDR.size + n
    return out
