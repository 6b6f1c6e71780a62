"""Payload v1 readings (docs/CONTRACT.md) for tests and benchmarks."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["reading", "varied"]


def reading(
    place: str, device: str, seq: int, ts: int | None = None, boot: int = 0, **over: Any
) -> dict[str, Any]:
    """A valid payload v1 reading (now, unless `ts` says when), with any field overridden."""
    payload: dict[str, Any] = {
        "v": 1,
        "device": device,
        "place": place,
        "boot": boot,
        "seq": seq,
        "ts": int(time.time() * 1000) if ts is None else ts,
        "time_valid": True,
        "temperature": 21.5,
        "humidity": 45.0,
        "pressure": 1012.5,
        "luminosity": 300.0,
        "fw": "test-1.0",
    }
    payload.update(over)
    return payload


def varied(place: str, device: str, seq: int, ts: int, boot: int = 0, **over: Any) -> dict[str, Any]:
    """A reading whose metrics vary with seq, so window means, minima and maxima are not trivial."""
    metrics = {
        "temperature": 20.0 + (seq % 7) * 0.37,
        "humidity": 40.0 + (seq % 5) * 1.1,
        "pressure": 1000.0 + (seq % 3) * 0.25,
        "luminosity": 100.0 + seq * 0.5,
    }
    return reading(place, device, seq, ts=ts, boot=boot, **{**metrics, **over})
