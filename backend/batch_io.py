"""What a scope's engine (backend/engine.py) takes and gives per batch: input items, each with the
record it came from, and the outputs the runtime writes (backend/landing.py) before it persists the
changed key states."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .windows import KeyState, WindowKey

__all__ = ["Amendment", "Item", "Origin", "Outputs"]

Origin = tuple[int, int]  # (partition, offset) of an iot.readings record


class Item(NamedTuple):
    """One input item: a validated reading, the scope's input partition and offset it came from, its
    origin in iot.readings (the same record for the sensor scope: None), and (sensor scope) its
    encoding for the place scope."""

    reading: Mapping[str, Any]
    partition: int
    offset: int
    origin: Origin | None = None
    forward: bytes = b""

    @property
    def source(self) -> Origin:
        return self.origin if self.origin is not None else (self.partition, self.offset)


@dataclass(slots=True)
class Amendment:
    """Late readings (with their input offsets) to add to one closed window's stored document."""

    key: str
    place: str
    wkey: WindowKey
    readings: list[tuple[Mapping[str, Any], int]] = field(default_factory=list)


@dataclass(slots=True)
class Outputs:
    open_docs: list[dict[str, Any]] = field(default_factory=list)
    final_docs: list[dict[str, Any]] = field(default_factory=list)
    amends: dict[str, Amendment] = field(default_factory=dict)  # window _id -> what to add
    amended_docs: list[dict[str, Any]] = field(default_factory=list)  # filled by ScopeEngine.amend
    amended_readings: int = 0  # readings counted into closed windows (once per window)
    # Stored documents that are no window (amend): _id -> (document, what is wrong with it).
    corrupt: dict[str, tuple[Any, str]] = field(default_factory=dict)
    rebuilt: list[str] = field(default_factory=list)  # windows amend rebuilt from the stored readings
    readings: list[Item] = field(default_factory=list)  # the items counted (new distinct readings)
    late: list[dict[str, Any]] = field(default_factory=list)  # DLQ records
    duplicates: int = 0
    # Duplicates (sensor scope) whose values the runtime compares with the copy counted first.
    dup_checks: list[Item] = field(default_factory=list)
    # Identities the `readings` collection must answer before this batch can be processed.
    lookups: set[str] = field(default_factory=set)
    processed: int = 0
    # Keys whose open windows were due but left dirty: the call had written
    # engine.OPEN_DOCS_MAX already.
    open_deferred: int = 0
    changed: dict[str, KeyState] = field(default_factory=dict)  # key -> state to persist
    keys: set[str] = field(default_factory=set)  # every key the batch touched (for a rollback)
