"""The sink's memory of the final documents it wrote (the base of the next amendment) is compact: a
full cache is a bound the backend's memory reaches and holds, so it must be small per window."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import pytest

from backend.accumulators import WindowAcc
from backend.mongo_sink import FINAL_CACHE, MongoSink
from backend.records import SENSOR, window_doc
from backend.windows import WindowKey

pytestmark = pytest.mark.unit

T0 = 1_750_000_000_000
MINUTE = 60_000


def final_doc(device: int, start: int) -> dict[str, Any]:
    """A sensor's final tumbling window over a minute of readings, as the engine writes it."""
    acc = WindowAcc()
    for s in range(60):
        acc.add(
            {
                "device": f"soak-{device:05d}",
                "temperature": 21.0 + s * 0.013,
                "humidity": 45.1 + s * 0.017,
                "pressure": 1001.3 + s * 0.0011,
                "luminosity": 300.0 + s * 1.5,
                "ts": start + s * 1000,
                "seq": s,
            },
            s,
        )
    return window_doc(SENSOR, f"soak-{device:05d}", "place-01", WindowKey("tumbling", MINUTE, MINUTE, start),
                      acc, True, start + MINUTE + 10_000)


def test_a_remembered_final_window_keeps_under_1_2_kb_and_comes_back_equal() -> None:
    sink = MongoSink("mongodb://127.0.0.1:1/x", timeout_ms=100)  # never connects: memory only
    try:
        n = 2_000
        expected = {d["_id"]: d for d in (final_doc(i, T0) for i in range(5))}
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(n):
                # The engine builds each document, hands it on and drops it: what stays is the cache's.
                sink._remember_final(SENSOR, final_doc(i, T0))
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        per_window = held / n  # a cache of the documents themselves holds ~2.8 KB each
        assert per_window < 1_200, f"{per_window:.0f} bytes a remembered window"
        got = sink.load_windows(SENSOR, list(expected))
        assert got == expected
    finally:
        sink.close()


def test_the_cache_forgets_the_oldest_beyond_its_bound() -> None:
    sink = MongoSink("mongodb://127.0.0.1:1/x", timeout_ms=100)
    try:
        for i in range(FINAL_CACHE + 3):
            sink._remember_final(SENSOR, {"_id": f"w{i}", "final": True, "start": i, "end": i,
                                          "updated_at": i})
        assert len(sink._finals[SENSOR]) == FINAL_CACHE
        assert "w0" not in sink._finals[SENSOR] and f"w{FINAL_CACHE + 2}" in sink._finals[SENSOR]
    finally:
        sink.close()
