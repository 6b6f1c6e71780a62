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


def read(flash: Path | Any, name: str = "outbox.d") -> FlashOutbox:
    """The outbox in `flash`: a board's flash (hil.board_flash) or a directory."""
    if isinstance(flash, Path):
        from hil.board_flash import FolderFlash

        flash = FolderFlash(flash)
    out = FlashOutbox()
    files = flash.files(name)
    try:
        out.dropped = int(files.get("dropped", b"0"))
    except ValueError:
        out.dropped = 0
    segs = sorted((n for n in files if n.endswith(".seg") and n[:-4].isdigit()), key=lambda n: int(n[:-4]))
    for seg in segs:
        data = files[seg]
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
