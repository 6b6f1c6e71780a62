"""A computed batch lands, and the idle timer's windows are written: every output written (MongoDB,
Kafka; retried until done), the open windows' rewrite interval paced, the changed key states
persisted (table and changelog), the outputs counted, and (a batch's) its records acknowledged.
backend/inflight.py keeps one landing in flight per scope and says what keeps that exact;
backend/batches.py computes the scope's next batch meanwhile.

What fails as a whole here or in the batch path (a bug: MongoDB and Kafka errors are retried inside
`emit`) is reported one way (`failed`): counted, logged with what to do, retried after a backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from iot import log

from . import retry
from .batch_io import Outputs
from .intake import where
from .kafka_sink import KafkaSink
from .metrics import BackendMetrics
from .mongo_sink import MongoSink
from .pacing import OpenWritePacer
from .records import Forward
from .scope import Scope
from .settings import Settings
from .windows import KeyState

__all__ = ["Ack", "Lander", "State"]

_log = log.get("backend")
# (partition, key, value): a key's state as persisted (table and changelog), serialised at compute time.
State = tuple[int, str, dict[str, Any]]
# What acknowledges a batch's records once it landed (the agent's: Faust's consumer.ack per record).
Ack = Callable[[Sequence[Any]], None]


@dataclass(eq=False)
class Lander:
    """Writes what both scopes' batches and idle ticks produce over one MongoDB sink and one Kafka
    producer."""

    settings: Settings
    sink: MongoSink
    kafka: KafkaSink
    metrics: BackendMetrics
    scopes: Mapping[str, Scope]  # whose engines the pacer's interval goes to
    # A landing that fails (a bug: MongoDB and Kafka errors are retried inside `emit`) is tried again
    # after a backoff; the tests' in-memory pipeline turns this off to see the error.
    retry_landings: bool = True
    # Open windows are rewritten every open_write_s, or less often when that costs too much.
    pacer: OpenWritePacer = field(init=False)

    def __post_init__(self) -> None:
        self.pacer = OpenWritePacer(self.settings.open_write_s)
        self.metrics.open_write_interval.set(self.pacer.interval_s)

    async def land(
        self,
        scope: Scope,
        out: Outputs,
        forwards: list[Forward],
        rejected: list[dict[str, Any]],
        states: list[State],
        messages: Sequence[Any],
        ack: Ack,
    ) -> None:
        """A computed batch lands: every output written (retried inside `emit` while MongoDB or Kafka
        fail; a bug here is retried after a backoff, the outputs are idempotent), then its states
        persisted, then its records acknowledged."""
        delay = retry.FIRST_S
        while True:
            try:
                await self.emit(scope, out, forwards, rejected)
                break
            except Exception as exc:
                if not self.retry_landings:
                    raise
                delay = await self.failed(
                    scope,
                    "batch_failed",
                    exc,
                    action="a bug in the backend: report it with this log; the batch's writes are retried"
                    " and its offsets (and the next batch's) are not committed meanwhile",
                    delay=delay,
                    records=len(messages),
                    stage="write",
                )
        self.persist_states(scope.table, states)
        self.count(scope.name, out)
        ack(messages)

    async def emit(
        self, scope: Scope, out: Outputs, forwards: list[Forward], rejected: list[dict[str, Any]]
    ) -> None:
        """Write everything the batch produced; retried (idempotent) until it lands: losing it is worse."""
        open_s = await retry.until_done(
            "output_write_failed",
            lambda: self._write(scope.name, out, forwards, rejected),
            "check MongoDB/Kafka (iot stack status); the batch is retried, nothing is lost",
            scope=scope.name,
        )
        self._pace(open_s, out.open_deferred > 0)

    def _write(
        self, scope: str, out: Outputs, forwards: list[Forward], rejected: list[dict[str, Any]]
    ) -> float:
        """Write the batch's outputs; returns the seconds spent rewriting open windows (the pacer's)."""
        self.sink.write_readings(out.readings)
        self.sink.write_windows(scope, out.final_docs)
        # A window both open and final in one batch is written final only (as one call did before).
        finals = {d["_id"] for d in out.final_docs}
        opens = [d for d in out.open_docs if d["_id"] not in finals]
        started = time.perf_counter()
        self.sink.write_windows(scope, opens)
        open_s = time.perf_counter() - started
        self.sink.write_amended(scope, out.amended_docs)
        for doc in out.final_docs + out.amended_docs:
            self.kafka.window(scope, doc)
        for record in out.late:
            self.kafka.dlq(record)
        for record in rejected:
            self.kafka.dlq(record)
        for key, value, partition in forwards:
            self.kafka.forward(self.settings.place_topic, key, value, partition)
        self.kafka.flush()
        return open_s

    def _pace(self, open_s: float, deferred: bool) -> None:
        interval = self.pacer.record(open_s, time.monotonic(), deferred)
        if interval is None:
            return
        for scope in self.scopes.values():
            scope.engine.open_write_ms = self.pacer.interval_ms
        self.metrics.open_write_interval.set(interval)
        _log.info(
            "open_write_interval",
            seconds=round(interval, 2),
            configured_s=self.settings.open_write_s,
            budget=self.pacer.budget,
            why="open-window rewrites cost more than their share of the worker's time (or more keys are"
            " due than a batch or tick writes)"
            if interval > self.settings.open_write_s
            else "back within budget",
        )

    @staticmethod
    def persist(table: Any, changed: Mapping[str, KeyState]) -> None:
        Lander.persist_states(table, [(st.partition, key, st.to_json()) for key, st in changed.items()])

    @staticmethod
    def persist_states(table: Any, states: Sequence[State]) -> None:
        for partition, key, value in states:
            table.data[key] = value
            table.send_changelog(partition, key, value)

    def count(self, scope: str, out: Outputs) -> None:
        m = self.metrics
        if out.processed:
            m.readings.labels(scope).inc(out.processed)
        if out.duplicates:
            m.duplicates.labels(scope).inc(out.duplicates)
        if out.late:
            m.late.labels(scope).inc(len(out.late))
        for doc in out.amended_docs:
            m.amended.labels(scope, doc["place"]).inc()
        if out.amended_readings:
            m.amended_readings.labels(scope).inc(out.amended_readings)
        m.count_final(scope, out.final_docs)
        for doc in out.amended_docs:
            m.show_window(scope, doc)

    async def failed(
        self,
        scope: Scope,
        event: str,
        exc: Exception,
        *,
        action: str,
        delay: float | None = None,
        **fields: Any,
    ) -> float:
        """A batch, a landing or a tick that failed as a whole (a bug): counted, logged as `event` with
        `fields` and what to do, and, when it is retried after `delay`, waited out; returns the next
        delay (doubled, at most retry.MAX_S)."""
        self.metrics.batch_failures.labels(scope.name).inc()
        error = f"{type(exc).__name__}: {exc}"[:300]
        retrying = {} if delay is None else {"retry_in_s": delay}
        _log.error(
            event, scope=scope.name, **fields, error=error, **retrying, action=action, where=where(exc)
        )
        if delay is None:
            return 0.0
        await asyncio.sleep(delay)
        return min(delay * 2, retry.MAX_S)
