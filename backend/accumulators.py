"""Exact accumulators of one window: count, sum, min and max per metric, the devices seen and the
replay fence.

Sums are kept exactly (an integer numerator over a power of two), so a mean does not depend on the
order readings arrived in: a replay, a restart or two workers give bit-identical means. Both the
window state (backend/windows.py) and an amendment of a stored document (backend/stored.py) are built
from these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from iot.contract import METRICS


class MetricAcc:
    """count / exact sum / min / max of one metric in one window."""

    __slots__ = ("count", "exp", "max", "min", "num")

    def __init__(self) -> None:
        self.count = 0
        self.num = 0  # the sum is num / 2**exp, exactly
        self.exp = 0
        self.min: float | None = None
        self.max: float | None = None

    def add(self, value: float) -> None:
        n, d = value.as_integer_ratio()
        e = d.bit_length() - 1  # d is a power of two for every finite float
        if e > self.exp:
            self.num <<= e - self.exp
            self.exp = e
        self.num += n << (self.exp - e)
        self.count += 1
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value

    def merge(self, other: MetricAcc) -> None:
        """Add another accumulator's values (exactly: the same sum as adding its values one by one)."""
        if not other.count:
            return
        if other.exp > self.exp:
            self.num <<= other.exp - self.exp
            self.exp = other.exp
        self.num += other.num << (self.exp - other.exp)
        self.count += other.count
        if self.min is None or (other.min is not None and other.min < self.min):
            self.min = other.min
        if self.max is None or (other.max is not None and other.max > self.max):
            self.max = other.max

    @property
    def mean(self) -> float | None:
        # int / int is correctly rounded in Python, so this is the exact mean rounded once.
        return self.num / (self.count << self.exp) if self.count else None

    def summary(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "min": self.min, "max": self.max}

    def to_json(self) -> list[Any]:
        # The numerator can exceed 2**53: keep it as a decimal string so no JSON reader rounds it.
        return [self.count, str(self.num), self.exp, self.min, self.max]

    def exact(self) -> dict[str, Any]:
        """The exact sum, for the window document: what an amendment needs beyond the summary."""
        return {"num": str(self.num), "exp": self.exp}

    @classmethod
    def from_json(cls, data: Sequence[Any]) -> MetricAcc:
        acc = cls()
        acc.count, acc.num, acc.exp, acc.min, acc.max = (
            int(data[0]),
            int(data[1]),
            int(data[2]),
            data[3],
            data[4],
        )
        return acc


class WindowAcc:
    """Everything one window has accumulated: readings counted, per-metric accumulators, devices seen,
    and the highest input offset counted (the fence that makes an amendment replayed after a crash
    idempotent: a reading at or below it is already in)."""

    __slots__ = ("count", "devices", "metrics", "offset")

    def __init__(self) -> None:
        self.count = 0
        self.metrics: dict[str, MetricAcc] = {m: MetricAcc() for m in METRICS}
        self.devices: set[str] = set()
        self.offset = -1

    def add(self, reading: Mapping[str, Any], offset: int = -1) -> None:
        self.count += 1
        if offset > self.offset:
            self.offset = offset
        self.devices.add(reading["device"])
        for name, acc in self.metrics.items():
            value = reading[name]
            if value is not None:
                # MetricAcc.add, inlined: a call per metric was a fifth of this (4 per reading, twice).
                n, d = value.as_integer_ratio()
                e = d.bit_length() - 1
                if e > acc.exp:
                    acc.num <<= e - acc.exp
                    acc.exp = e
                acc.num += n << (acc.exp - e)
                acc.count += 1
                if acc.min is None or value < acc.min:
                    acc.min = value
                if acc.max is None or value > acc.max:
                    acc.max = value

    def merge(self, other: WindowAcc) -> None:
        self.count += other.count
        if other.offset > self.offset:
            self.offset = other.offset
        self.devices |= other.devices
        for name, acc in self.metrics.items():
            acc.merge(other.metrics[name])

    def copy(self) -> WindowAcc:
        acc = WindowAcc()
        acc.merge(self)
        return acc

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.count,
            "d": sorted(self.devices),
            "m": {name: acc.to_json() for name, acc in self.metrics.items()},
            "o": self.offset,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WindowAcc:
        acc = cls()
        acc.count = int(data["n"])
        acc.devices = set(data["d"])
        acc.metrics = {name: MetricAcc.from_json(data["m"][name]) for name in METRICS}
        acc.offset = int(data.get("o", -1))
        return acc
