"""The log limit for repeated bad input: once per key, then at most once per interval with a count."""

from __future__ import annotations

import pytest

from gateway.ratelimit import LogLimit
from tests.support import FakeClock

pytestmark = pytest.mark.unit


def test_first_of_each_key_is_logged_then_once_per_interval_with_what_was_left_out() -> None:
    clock = FakeClock()
    limit = LogLimit(interval_s=60, clock=clock)
    assert limit.check("a") == 0
    assert limit.check("b") == 0
    assert [limit.check("a") for _ in range(5)] == [None] * 5
    clock.now += 59.9
    assert limit.check("a") is None
    clock.now += 0.1
    assert limit.check("a") == 6
    assert limit.check("a") is None
    clock.now += 60
    assert limit.check("a") == 1
    assert limit.check("b") == 0


def test_made_up_keys_cannot_grow_it_without_bound() -> None:
    limit = LogLimit(interval_s=60, max_keys=100, clock=FakeClock())
    assert all(limit.check(f"board-{i}") == 0 for i in range(10_000))
    assert len(limit._keys) <= 100
