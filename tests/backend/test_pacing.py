"""The open-window pacer: open rewrites keep to their share of the worker's time, whatever the fleet."""

from __future__ import annotations

import pytest

from backend.pacing import OpenWritePacer

pytestmark = pytest.mark.unit


def _run(pacer: OpenWritePacer, cost_per_round_s: float, seconds: float, start: float = 0.0) -> float:
    """Feed the pacer as the worker would: one round of open rewrites per interval (each costing
    `cost_per_round_s`, e.g. keys x 6 windows x 4 ms), batches of nothing in between every 0.5 s."""
    now, next_round = start, start
    while now < start + seconds:
        now += 0.5
        if now >= next_round:
            pacer.record(cost_per_round_s, now)
            next_round = now + pacer.interval_s
        else:
            pacer.record(0.0, now)
    return now


def test_cheap_open_rewrites_keep_the_configured_interval() -> None:
    pacer = OpenWritePacer(5.0)
    _run(pacer, cost_per_round_s=0.05, seconds=120)  # 1% of the time
    assert pacer.interval_s == 5.0


def test_open_rewrites_costing_more_than_the_budget_are_spaced_until_they_fit() -> None:
    # 2,000 keys x 6 open windows x 4 ms = 48 s per round: at 5 s that is ten times the wall clock.
    pacer = OpenWritePacer(5.0)
    _run(pacer, cost_per_round_s=48.0, seconds=3600)
    assert 48.0 / pacer.interval_s <= pacer.budget
    assert pacer.interval_s <= 4 * 48.0 / pacer.budget  # spaced enough, not pushed to the ceiling


# 0.0 (rewrite at every tick) must come back as 0.0 exactly, not as a tiny float.
@pytest.mark.parametrize(
    ("configured", "loaded", "loaded_s", "unloaded"), [(5.0, 48.0, 1800, 0.02), (0.0, 3.0, 120, 0.0)]
)
def test_interval_comes_back_to_the_configured_one_when_the_load_goes(
    configured: float, loaded: float, loaded_s: int, unloaded: float
) -> None:
    pacer = OpenWritePacer(configured)
    now = _run(pacer, cost_per_round_s=loaded, seconds=loaded_s)
    assert pacer.interval_s > configured
    _run(pacer, cost_per_round_s=unloaded, seconds=1800, start=now)
    assert pacer.interval_s == configured


def test_interval_never_passes_its_ceiling() -> None:
    pacer = OpenWritePacer(5.0, max_s=60.0)
    _run(pacer, cost_per_round_s=1000.0, seconds=3600)
    assert pacer.interval_s == 60.0


def test_keys_left_over_by_the_engines_cap_space_the_interval_even_when_cheap() -> None:
    """The engine writes a capped number of open documents per call: when keys due are left over, the
    interval is too short for the fleet even though the time spent stays within the budget."""
    pacer = OpenWritePacer(5.0)
    now = 0.0
    for _ in range(40):
        now += 0.5
        pacer.record(0.01, now, deferred=True)
    assert pacer.interval_s > 5.0
    spaced = pacer.interval_s
    for _ in range(400):
        now += 0.5
        pacer.record(0.01, now)
    assert pacer.interval_s < spaced  # back towards the configured interval once nothing is left over
