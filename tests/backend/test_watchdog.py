"""The stall watch (backend/watchdog.py): how long the current rebalance and the oldest pending commit
have lasted, and one logged, counted exit when either outlasts the limit. Pure logic, on a fake clock."""

from __future__ import annotations

import logging

import pytest

from backend.metrics import BackendMetrics
from backend.watchdog import EX_TEMPFAIL, StallWatch
from tests.support import FakeClock

pytestmark = pytest.mark.unit


def sample(metrics: BackendMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def stalled_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("consumer_stalled")]


def test_a_rebalance_past_the_limit_is_logged_counted_and_exits_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, exits, metrics = FakeClock(), [], BackendMetrics()
    watch = StallWatch(60, metrics, linger_s=15, clock=clock, exit_later=lambda s, c: exits.append((s, c)))
    seen = []
    with caplog.at_level(logging.ERROR, logger="backend"):
        for step, rebalancing in enumerate([False, True, True, True, True, True]):
            clock.now = 1000.0 + step * 30
            seen.append(watch.observe(rebalancing, None, partitions=12)["rebalance"])
        assert len(stalled_lines(caplog)) == 1
        caplog.clear()
        clock.now += 30
        watch.observe(True, None, partitions=12)  # still stalled: nothing more
    assert seen == [0.0, 0.0, 30.0, 60.0, 90.0, 120.0]
    assert exits == [(15, EX_TEMPFAIL)]
    assert sample(metrics, "iot_backend_stalls_total", wait="rebalance") == 1
    assert sample(metrics, "iot_backend_rebalance_seconds") == 150.0
    assert not stalled_lines(caplog)


def test_a_commit_pending_past_the_limit_is_a_stall_too(caplog: pytest.LogCaptureFixture) -> None:
    clock, exits, metrics = FakeClock(), [], BackendMetrics()
    watch = StallWatch(60, metrics, clock=clock, exit_later=lambda s, c: exits.append((s, c)))
    with caplog.at_level(logging.ERROR, logger="backend"):
        # Commits that finish within the limit, one after another, then one that never returns.
        for step, since in enumerate([None, 1000.0, 1030.0, None, 1090.0, 1090.0, 1090.0]):
            clock.now = 1000.0 + step * 30
            watch.observe(False, since, partitions=6)
    (line,) = stalled_lines(caplog)
    assert line.startswith("consumer_stalled wait=commit seconds=90.0 limit_s=60 partitions=6")
    assert exits == [(15.0, EX_TEMPFAIL)]
    assert sample(metrics, "iot_backend_stalls_total", wait="commit") == 1
    assert sample(metrics, "iot_backend_commit_wait_seconds") == 90.0


def test_waits_that_end_in_time_never_exit(caplog: pytest.LogCaptureFixture) -> None:
    clock, exits, metrics = FakeClock(), [], BackendMetrics()
    watch = StallWatch(60, metrics, clock=clock, exit_later=lambda s, c: exits.append((s, c)))
    with caplog.at_level(logging.ERROR, logger="backend"):
        # Three rebalances of 50 s each, 150 s of rebalancing in all, and commits of 25 s each.
        for step in range(12):
            clock.now = 1000.0 + step * 25
            watch.observe(step % 3 != 2, clock.now - 25 if step % 2 else None, partitions=6)
    assert exits == []
    assert sample(metrics, "iot_backend_stalls_total", wait="rebalance") is None
    assert sample(metrics, "iot_backend_rebalance_seconds") == 0.0
    assert not caplog.records


def test_the_stall_log_says_what_happened_and_what_to_do(caplog: pytest.LogCaptureFixture) -> None:
    clock, metrics = FakeClock(), BackendMetrics()
    watch = StallWatch(60, metrics, clock=clock, exit_later=lambda _s, _c: None)
    with caplog.at_level(logging.ERROR, logger="backend"):
        watch.observe(True, None, partitions=6)
        clock.now += 61
        watch.observe(True, None, partitions=6)
    (line,) = stalled_lines(caplog)
    assert line.startswith("consumer_stalled wait=rebalance seconds=61.0 limit_s=60 partitions=6")
    assert f"exit_code={EX_TEMPFAIL}" in line and "action=" in line and "supervisor" in line
