"""A scope's batch written while its next batch is computed: one landing in flight per scope.

The sensor scope used to spend most of its batch time awaiting its own writes (FerretDB, the Kafka
flush) while the event loop sat idle: 68 % at first, and in a 250k backlog the worker's main thread
was still blocked ~40 % of the span once the worker's CPU per reading had halved (issue #24). Now
`Batches._batch` computes batch N+1 (decode, engine, amendments) while batch N *lands*: its outputs
written (MongoDB, Kafka), then its key states persisted (table + changelog), then its records
acknowledged (offsets may be committed). It paid once the worker's CPU no longer filled the box
(backend/README.md, "Beside its peers": 1.26x in the same runs; before the collector's tuning it
was 0.67-0.99x).

Depth one: a scope's batch N+1 starts its landing only once batch N's landed (`landed`), so at
most one landing runs per scope while at most one batch is computed beside it. That already hides
the shorter of the two (compute or write) behind the longer; a deeper queue would hide nothing more
(one writer per scope keeps the writes in order, so writes cannot go faster than one at a time) and
would hold more records unacknowledged and more outputs in memory.

What keeps this exact (each is a `landed` before it, in batches.py):
- the writes of a scope land in batch order, forwards and watermarks records included (one landing
  at a time, each flushing its Kafka records before it ends);
- a landing persists the states *as of its batch*: serialised when the batch was computed
  (`KeyState.to_json` copies), never a later batch's, and after its outputs were written;
- records are acknowledged by their landing only, after both; a landing that fails is retried (its
  outputs are idempotent) and the landing after it waits, so a later batch is never acknowledged first;
- whatever reads MongoDB (de-duplication look-ups, amendment bases, rebuilds, duplicates' first
  copies) and whatever reloads states from the table (`rollback`, `forget`: the engine's cache holds
  the batch in flight, the table does not yet) waits for the landing in flight first; so do the idle
  timer's writes and a rebalance (before `forget`, and Faust's revocation waits for the acks anyway).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Landings:
    """The landing in flight of each scope (an asyncio task), awaited before the next one starts."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, scope: str, landing: Coroutine[Any, Any, None]) -> None:
        """Start `scope`'s next landing; the one before must have landed (`landed`)."""
        if scope in self._tasks:
            landing.close()
            raise RuntimeError(f"scope {scope}: a landing is in flight already (await landed first)")
        self._tasks[scope] = asyncio.ensure_future(landing)

    def in_flight(self, scope: str) -> bool:
        return scope in self._tasks

    async def landed(self, scope: str) -> None:
        """Wait until `scope`'s landing in flight (if any) has landed. Shielded: a caller cancelled
        meanwhile (a stopping agent) does not cancel the writes halfway; they land, or the process
        ends and the records, never acknowledged, are read again."""
        task = self._tasks.get(scope)
        if task is None:
            return
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._tasks.get(scope) is task:
                del self._tasks[scope]

    async def drain(self) -> None:
        """Every scope's landing in flight landed."""
        for scope in list(self._tasks):
            await self.landed(scope)

    def abandon(self) -> list[asyncio.Task[None]]:
        """Forget the landings in flight without waiting (a test's kill -9: the caller decides what
        becomes of them)."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        return tasks
