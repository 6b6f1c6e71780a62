"""What one aggregation scope of the batch path (backend/batches.py) is made of, and what that path
needs of Faust's consumer and tables: protocols, so the tests' in-memory pipeline stands in for them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .engine import ScopeEngine
from .intake import Decoded

__all__ = ["Partitions", "Scope", "Table"]


class Partitions(Protocol):
    """What the batch path needs to know of the consumer's partitions (Faust's consumer)."""

    def assignment(self) -> Any: ...

    def highwater(self, tp: Any) -> int | None: ...


class Table(Protocol):
    """What the batch path needs of a scope's state table (a Faust table: its in-memory `data` and
    `send_changelog`, app.py)."""

    @property
    def data(self) -> Any: ...

    def send_changelog(self, partition: int, key: Any, value: Any) -> Any: ...


@dataclass(slots=True)
class Scope:
    """What one aggregation scope is made of: its input topic, its state table, its engine, the lock
    that keeps its batches and its idle timer apart, and how its input records decode."""

    name: str
    topic: str
    table: Table
    engine: ScopeEngine
    decode: Callable[[Sequence[Any], int], Decoded]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
