"""Memory a burst freed goes back to the OS: the services' RSS falls after a backlog drains instead of
staying at the burst's high-water mark."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from iot import heap

pytestmark = pytest.mark.unit


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _burst(kept: list[bytes]) -> None:
    """~200 MB in 2 KB blocks, the size of buffered readings, with one block in 64 still in use
    afterwards: the heap cannot shrink from its top, so free pages stay unless trimmed."""
    blocks = [bytes(2000) for _ in range(100_000)]
    kept.extend(blocks[::64])
    del blocks


@pytest.mark.parametrize("where", ["main thread", "another thread (its own arena)"])
def test_memory_freed_after_a_burst_is_returned_to_the_os(where: str) -> None:
    kept: list[bytes] = []
    before = _rss_mb()
    if where == "main thread":
        _burst(kept)
    else:
        t = threading.Thread(target=_burst, args=(kept,))
        t.start()
        t.join()
    high = _rss_mb()
    assert high - before > 150, f"the burst did not raise the RSS ({before:.0f} -> {high:.0f} MB)"
    assert heap.release_free_memory()
    after = _rss_mb()
    # What stays is the kept blocks (~3 MB) and the pages they sit in.
    assert after - before < 0.2 * (high - before), f"RSS {before:.0f} -> {high:.0f} -> {after:.0f} MB"
    assert len(kept) == 1563

