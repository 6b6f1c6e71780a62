"""Heap allocations of the hot path, counted on the MicroPython unix port (deterministic, not
timing): a QoS 1 publish allocates nothing; a reading allocates its JSON and its outbox entry.

Measured before the change (firmware/mqtt.py slicing a memoryview per write and read call, a
memoryview per packet header, a range per publish): 224 bytes per publish, 672 per reading."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.firmware import unixport

pytestmark = pytest.mark.unit

HARNESS = Path(__file__).parent / "mpy" / "alloc_harness.py"


def test_a_qos1_publish_allocates_nothing_and_a_reading_only_its_json_and_outbox_entry(
    tmp_path: Path,
) -> None:
    got = unixport.run_json(HARNESS.read_text(), tmp_path, heap="1M")  # gc is off while counting
    assert got["publish"] == 0  # packet built in the preallocated buffer, written without slices
    # The reading's JSON (dict to str to bytes, ~290 bytes on the 64-bit unix port) is the one
    # allocation a reading has to make; the outbox's RAM entry and its in-flight record add two
    # small lists (160 bytes here).
    assert got["reading"] - got["encode"] <= 160
