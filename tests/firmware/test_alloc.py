"""Heap allocations of the hot path, counted on the MicroPython unix port (deterministic, not
timing): a QoS 1 publish allocates nothing, and a reading nothing but its JSON.

Measured before (firmware/mqtt.py slicing a memoryview per write and read call, a memoryview per
packet header, a range per publish; the outbox two new lists per reading): 224 bytes per publish,
672 per reading (JSON 288, outbox 160)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.firmware import unixport

pytestmark = pytest.mark.unit

HARNESS = Path(__file__).parent / "mpy" / "alloc_harness.py"


def test_a_qos1_publish_allocates_nothing_and_a_reading_only_its_json(
    tmp_path: Path,
) -> None:
    got = unixport.run_json(HARNESS.read_text(), tmp_path, heap="1M")  # gc is off while counting
    assert got["publish"] == 0  # packet built in the preallocated buffer, written without slices
    # The reading's JSON (dict to str to bytes, 288 bytes on the 64-bit unix port) is the one
    # allocation a reading has to make: the outbox reuses its RAM and in-flight records.
    assert got["encode"] > 0 and got["reading"] == got["encode"]
