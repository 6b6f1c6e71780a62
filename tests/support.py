"""Helpers shared by the tests: waiting on conditions with a deadline, unique ids, failed tests.

Launching the product, free ports, metrics, payloads, private brokers and stacks and the window oracle
are the harness's (iot/harness/), which the demo, the rig and the benchmarks share."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["FakeClock", "failed", "poll_until", "unique", "wait_for"]


def poll_until(condition: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    """Poll `condition` until it returns a truthy value or `timeout` seconds pass; its last value
    either way (falsy: the deadline passed), for a caller that reports rather than fails."""
    deadline = time.monotonic() + timeout
    last: T = condition()
    while not last and time.monotonic() <= deadline:
        time.sleep(interval)
        last = condition()
    return last


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `condition` until it returns a truthy value or `timeout` seconds pass (then fail)."""
    last = poll_until(condition, timeout, interval)
    if not last:
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value {last!r}")
    return last


def failed(request: Any) -> bool:
    """True when the test behind a fixture's `request` failed (phase reports from tests/conftest.py)."""
    report = getattr(request.node, "rep_call", None)
    return report is not None and bool(report.failed)


def unique(prefix: str) -> str:
    """An id that matches the contract's id pattern and is unique per call."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class FakeClock:
    """A monotonic clock a unit test moves by hand (`clock.now += 5`): pass it where time.monotonic goes."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
