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
    where: str  # its key path in the rig file
    started: float  # epoch s
    ended: float = 0.0
    outcome: str = PASSED
    detail: str = ""
    measurements: list[Measurement] = field(default_factory=list)
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return max(0.0, self.ended - self.started)

    @property
    def label(self) -> str:
        """The step as a reader says it: `sensor_fault sensor=bme280 kind=nack seconds=8`."""
        return " ".join([self.name, *(f"{k}={_show(v)}" for k, v in self.args.items() if v is not None)])


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


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
class BoardSeries:
    """What a board measured against what the rig imposed, per metric, for the report's plots:
    readings (epoch s, value), the scripted environment at the same instants (virtual boards; before
    the sensors' noise), and the final tumbling windows' means (start, end, mean)."""

    board: str
    readings: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    expected: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    windows: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)


@dataclass
class RunRecord:
    rig: str
    run_id: str
    started: float
    ended: float = 0.0
    cases: list[CaseRecord] = field(default_factory=list)
    events: list[BoardEvent] = field(default_factory=list)
    boards: list[dict[str, Any]] = field(default_factory=list)
    # date, host, rig file, firmware directory and version, commit: where and what this run was
    meta: dict[str, str] = field(default_factory=dict)
    series: list[BoardSeries] = field(default_factory=list)
    consoles: dict[str, str] = field(default_factory=dict)  # board id -> its whole console (the tail)

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
