"""How often open windows are rewritten: as often as `IOT_BACKEND_OPEN_WRITE_S` asks, and no more
often than the worker can afford.

Open windows are progress views; readings, final windows and amendments are the data. Each open
rewrite is one `{_id}` statement on FerretDB (~1-5 ms: backend/mongo_sink.py), and there are about six
open windows per key, so their cost grows with the number of keys, not with the reading rate: measured
in the soak, 500 boards at 1 Hz spent 368 s of a 4 min run on sensor_windows rewrites and the backend
fell behind for good, while its reading inserts took 0.6 s. The pacer keeps the time spent on open
rewrites under a share of the wall clock: over each period (10 s, or two intervals if longer) it
compares that time with the budget and doubles the interval when over, halves it (down to the
configured one) when well under. With a large
fleet the interval grows past the window size, and windows are then written once, final (a batched
insert), which is what a backlog does already."""

from __future__ import annotations

from dataclasses import dataclass, field

BUDGET = 0.25  # at most this share of the wall clock goes to rewriting open windows
PERIOD_S = 10.0  # measured over this long before the interval moves
MAX_INTERVAL_S = 600.0


@dataclass
class OpenWritePacer:
    base_s: float
    budget: float = BUDGET
    period_s: float = PERIOD_S
    max_s: float = MAX_INTERVAL_S
    interval_s: float = field(init=False)
    _since: float | None = field(default=None, init=False)
    _spent: float = field(default=0.0, init=False)
    _deferred: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.interval_s = self.base_s
        self.max_s = max(self.max_s, self.base_s)

    @property
    def interval_ms(self) -> int:
        return int(self.interval_s * 1000)

    def record(self, spent_s: float, now_s: float, deferred: bool = False) -> float | None:
        """Count `spent_s` of open-window writing done by `now_s` (monotonic), and whether keys due were
        left for later (the engine's cap per call: more are due than the budget writes); returns the
        new interval when it moved at the end of a period, else None."""
        if self._since is None:
            self._since = now_s - spent_s
        self._spent += spent_s
        self._deferred = self._deferred or deferred
        elapsed = now_s - self._since
        # Over at least two intervals, so that a period always holds each key's rewrite.
        if elapsed < max(self.period_s, 2 * self.interval_s):
            return None
        share = self._spent / elapsed
        deferred, self._deferred = self._deferred, False
        self._since, self._spent = now_s, 0.0
        before = self.interval_s
        if share > self.budget or deferred:
            self.interval_s = min(self.max_s, max(self.interval_s, 0.5) * 2)
        elif share < self.budget / 4:
            half = self.interval_s / 2
            self.interval_s = half if half >= max(self.base_s, 0.5) else self.base_s
        return self.interval_s if self.interval_s != before else None
