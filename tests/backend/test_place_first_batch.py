"""The place scope's first batch after a start is held like every later one (tests/backend/memory.py).

The runtime counted a place batch under the engine's `holds`, which only the idle tick or a previous
batch set: a first place batch that beat the first tick was counted with no hold at all. When the first
sensor batches read one source partition deep before another (a backlog, 10,000-reading batches), the
first partition's readings closed windows the second one still fed, and its readings then amended them
(1 of 3 `bench/peers.py` rounds)."""

from __future__ import annotations

import pytest

from backend.records import PLACE
from iot import contract
from iot.harness.payloads import reading

from .memory import PARTITIONS, Pipeline, partition_of

pytestmark = pytest.mark.unit
T0 = 1_750_000_000_000


def _two_devices_on_two_partitions() -> tuple[str, str]:
    first = "hold-a"
    for n in range(100):
        other = f"hold-b{n}"
        if partition_of(other) != partition_of(first):
            return first, other
    raise AssertionError(f"no second device on another of {PARTITIONS} partitions")


def test_a_first_place_batch_before_any_tick_closes_no_window_a_partition_not_read_yet_feeds() -> None:
    pipe = Pipeline(batch_max=1000)
    a, b = _two_devices_on_two_partitions()
    for device in (a, b):  # 30 s of one place from each device; windows are 2 s and 4 s here
        for seq in range(30):
            payload = {**reading("hold-p", device, seq, T0 + seq * 1000), "received_at": T0 + seq * 1000}
            pipe.produce(contract.encode(payload), device.encode())
    # One sensor batch per source partition (a's partition first, then b's), then one place batch with
    # both bundles and their watermarks records: the first place batch, and no idle tick ran before it.
    pipe.run()
    finals = [d for d in pipe.sink.windows[PLACE].values() if d.get("final")]
    assert finals, "the watermarks records after b's batch let the windows both devices passed close"
    amended = sorted(d["_id"] for d in finals if d.get("revision", 0))
    assert amended == [], f"windows closed before b's readings and amended: {amended[:5]}"
    assert all(d["count"] == 2 * (d["end"] - d["start"]) // 1000 for d in finals if d["kind"] == "tumbling")
