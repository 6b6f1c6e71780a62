"""The soak's end: it may account only once every window its readings fall in exists and is final.

The short soak once failed with 600 sensor windows "absent" (200 boards x 1 tumbling + 2 hopping
windows): the backend stores a key's readings before it writes their windows, and the drain waited
only for "no window is open", which held while each board's last windows did not exist yet."""

from __future__ import annotations

import random
from typing import Any

import pytest

from iot.harness.oracle import slot_ms, window_starts, windows_complete, windows_of_slots

pytestmark = pytest.mark.unit
SPECS = (("tumbling", 30, 30), ("hopping", 60, 30))


def _oracle(readings: dict[str, list[int]]) -> set[tuple[str, str, int, int]]:
    return {
        (key, kind, size, start)
        for key, stamps in readings.items()
        for ts in stamps
        for kind, size, step in SPECS
        for start in window_starts(ts, size * 1000, step * 1000)
    }


def test_expected_windows_from_slots_are_the_windows_of_every_reading() -> None:
    rng = random.Random(13)
    base = 1_764_000_000_000
    readings = {f"dev{k}": [base + rng.randrange(0, 600_000) for _ in range(50)] for k in range(20)}
    slot = slot_ms(SPECS)
    slots = {key: {ts // slot for ts in stamps} for key, stamps in readings.items()}
    assert slot == 30_000
    assert windows_of_slots(slots, slot, SPECS) == _oracle(readings)


class FakeCollections:
    """count_documents over window documents held as {collection: [doc, ...]}."""

    def __init__(self, docs: dict[str, list[dict[str, Any]]]) -> None:
        self.docs = docs

    def count(self, coll: str, flt: dict[str, Any]) -> int:
        want_final = flt["final"] is True
        return sum(1 for d in self.docs[coll] if bool(d["final"]) == want_final)


def test_the_drain_waits_while_the_last_windows_are_absent_though_every_present_one_is_final() -> None:
    readings = {"dev0": [0, 10_000, 40_000, 70_000]}  # the last reading opens new windows
    expected = {"sensor_windows": len(_oracle(readings))}
    older = [{"final": True} for _ in _oracle({"dev0": [0, 10_000, 40_000]})]
    db = FakeCollections({"sensor_windows": older})
    assert not windows_complete(db.count, expected)
    db.docs["sensor_windows"] = [*older, {"final": False}, {"final": False}]
    assert not windows_complete(db.count, expected)
    db.docs["sensor_windows"] = [*older, {"final": True}, {"final": True}]
    assert windows_complete(db.count, expected)
