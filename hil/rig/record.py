"""The test record of a run (OpenHTF's idea): timed steps, measurements with limits, outcomes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass
class Measurement:
    name: str
    value: float
    limit: float | None  # upper limit (None: informational)
    unit: str = ""
    outcome: str = PASSED
    low: float | None = None

    @classmethod
    def check(
        cls, name: str, value: float, limit: float | None, unit: str = "", low: float | None = None
    ) -> Measurement:
        ok = (limit is None or value <= limit) and (low is None or value >= low)
        return cls(name, value, limit, unit, PASSED if ok else FAILED, low)


@dataclass
class StepRecord:
    name: str
    where: str
    started: float  # epoch s
    ended: float = 0.0
    outcome: str = PASSED
    detail: str = ""
    measurements: list[Measurement] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return max(0.0, self.ended - self.started)


@dataclass
class CaseRecord:
    """One scenario on one board: a JUnit testcase."""

    scenario: str
    board: str
    device: str
    kind: str
    port: str
    started: float
    ended: float = 0.0
    outcome: str = PASSED
    detail: str = ""
    firmware: str = ""
    steps: list[StepRecord] = field(default_factory=list)
    console: str = ""

    @property
    def seconds(self) -> float:
        return max(0.0, self.ended - self.started)


@dataclass
class BoardEvent:
    """A point or span on a board's timeline: stimuli, faults, readings, windows."""

    board: str
    kind: str  # reading, window, fault, stimulus, step
    start: float
    end: float
    label: str


@dataclass
class RunRecord:
    rig: str
    run_id: str
    started: float
    ended: float = 0.0
    cases: list[CaseRecord] = field(default_factory=list)
    events: list[BoardEvent] = field(default_factory=list)
    boards: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.ended - self.started, 1)
        out["summary"] = self.summary()
        return out

    def summary(self) -> dict[str, int]:
        counts = {PASSED: 0, FAILED: 0, SKIPPED: 0}
        for c in self.cases:
            counts[c.outcome] += 1
        return counts
