"""Helpers shared by the tests: waiting on conditions with a deadline, unique ids."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from iot.app.stack.private import commit_end_offsets, free_ports, listening

T = TypeVar("T")

# Re-exported: the tests' names for the product's private-service helpers.
__all__ = [
    "commit_end_offsets",
    "failed",
    "free_ports",
    "listening",
    "payload_v1",
    "scrape",
    "unique",
    "wait_for",
]


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `condition` until it returns a truthy value or `timeout` seconds pass (then fail)."""
    deadline = time.monotonic() + timeout
    last: T = condition()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value {last!r}")
        time.sleep(interval)
        last = condition()
    return last


def failed(request: Any) -> bool:
    """True when the test behind a fixture's `request` failed (phase reports from tests/conftest.py)."""
    report = getattr(request.node, "rep_call", None)
    return report is not None and bool(report.failed)


def unique(prefix: str) -> str:
    """An id that matches the contract's id pattern and is unique per call."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def payload_v1(
    place: str, device: str, seq: int, ts: int | None = None, boot: int = 0, **over: Any
) -> dict[str, Any]:
    """A valid payload v1 reading (contract defaults), with any field overridden."""
    reading: dict[str, Any] = {
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
    reading.update(over)
    return reading


def scrape(url: str) -> dict[str, float]:
    """Every sample of a Prometheus text endpoint, by `name{labels}`; empty when it does not answer."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return {}
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
