"""One batch path for both scopes, independent of Faust: a batch of input records in, every output
written, the changed key states persisted.

Per batch: decode each record (backend/intake.py, the one place where a record is isolated: a record
that is not a reading goes to the DLQ with its context) → the engine (an item it fails on goes to the
DLQ and the batch is processed again from the persisted states; so do identities its bounded
de-duplication memory forgot, once the `readings` collection answered them) → amend the closed windows
it reached (backend/amending.py: a stored document that is no window is rebuilt from the stored
readings) → compare duplicates with the copy counted first → write every output (MongoDB, Kafka; retried
until it lands) → persist the changed key states → acknowledge the records, so a batch's offsets are
committed only after each of its records was counted or dead-lettered. The last three steps are the
batch's *landing*: it runs while the scope's next batch is computed, one landing in flight per scope
(backend/inflight.py says what keeps that exact).

The place scope holds its windows until every source partition's input passed them: after each batch
the sensor scope sends every place partition a watermarks record (records.WATERMARKS_KEY) saying how
far each source partition it owns has come, and the place scope caps its keys' watermarks below the
lowest of those (ScopeEngine.holds), so a backlog read unevenly across source partitions is merged in
event-time order instead of amended (the idea of Kafka Streams' max.task.idle.ms; exactness does not
depend on it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from iot import contract, log
from iot.topics import TOPIC_PARTITIONS

from . import retry
from .amending import Amender
from .engine import ItemFailed, Origin, Outputs, ScopeEngine
from .inflight import Landings
from .intake import Decoded, Intake, PlaceMarks, where
from .kafka_sink import KafkaSink
from .metrics import BackendMetrics
from .mongo_sink import MongoSink, source_of
from .pacing import OpenWritePacer
from .records import (
    BUNDLE_MAX,
    FORWARD_SLOTS,
    PLACE,
    SENSOR,
    WATERMARKS_KEY,
    dlq_record,
    encode_bundle,
    encode_forward,
    encode_watermarks,
    reading_id_of,
)
from .settings import Settings
from .stored import conflict
from .windows import KeyState

_log = log.get("backend")
# A hold below every reading's ts (epoch ms are positive): no window closes under it.
HELD = -1
# (key, value, partition or None for the key's): a record for the place repartition topic.
Forward = tuple[str, bytes, int | None]
# (partition, key, value): a key's state as persisted (table and changelog), serialised at compute time.
State = tuple[int, str, dict[str, Any]]
# What acknowledges a batch's records once it landed (the agent's: Faust's consumer.ack per record).
Ack = Callable[[Sequence[Any]], None]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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


class Batches:
    """The batch path of both scopes over one MongoDB sink and one Kafka producer."""

    def __init__(
        self,
        settings: Settings,
        sink: MongoSink,
        kafka: KafkaSink,
        metrics: BackendMetrics,
        partitions: Partitions,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.kafka = kafka
        self.metrics = metrics
        self.partitions = partitions
        self.intake = Intake(metrics)
        self.amender = Amender(sink, metrics, settings.mongo_host)
        self.place_partitions = TOPIC_PARTITIONS[contract.TOPIC_READINGS]  # the repartition topic's
        # Open windows are rewritten every open_write_s, or less often when that costs too much.
        self.pacer = OpenWritePacer(settings.open_write_s)
        self.metrics.open_write_interval.set(self.pacer.interval_s)
        self.positions: dict[Any, int] = {}  # (topic, partition) -> last offset taken
        self.scopes: dict[str, Scope] = {}
        # The highest ts forwarded from each source partition (sensor scope), and the source
        # watermarks each place partition received: (place partition, source partition) ->
        # (watermark or None once caught up, monotonic time received). records.WATERMARKS_KEY.
        self.source_marks: dict[int, int] = {}
        self.place_marks: PlaceMarks = {}
        # Since the last rebalance (monotonic): for up to the idle timeout after it, a source partition
        # not read yet, and a place partition no watermarks reached yet, hold everything (HELD); after
        # that they hold nothing back.
        self.hold_since = time.monotonic()
        # Each scope's batch being written while its next one is computed (backend/inflight.py).
        self.landings = Landings()
        # A landing that fails (a bug: MongoDB and Kafka errors are retried inside `emit`) is tried
        # again after a backoff; the tests' in-memory pipeline turns this off to see the error.
        self.retry_landings = True

    def add_scope(self, name: str, topic: str, table: Table, engine: ScopeEngine) -> Scope:
        decode = self.intake.readings if name == SENSOR else self.decode_forwards
        scope = self.scopes[name] = Scope(name, topic, table, engine, decode)
        return scope

    async def rebalanced(self) -> None:
        """After a rebalance: the persisted states are the truth again, and the holds start over
        (what this worker reads now is counted from the assignment on). The landings in flight land
        first: their states are not persisted yet, and the sink's memory is theirs until then."""
        await self.landings.drain()
        for scope in self.scopes.values():
            scope.engine.forget()
        self.sink.forget()
        self.hold_since = time.monotonic()

    def behind(self, topic: str, assigned: Any) -> set[int]:
        """Partitions of `topic` with input not read yet (no idle close by wall clock alone there:
        ScopeEngine.expire). A partition not read since the start counts as caught up."""
        out = set()
        for tp in assigned:
            if tp.topic != topic:
                continue
            pos, high = self.positions.get(tp), self.partitions.highwater(tp)
            if pos is not None and high is not None and high - pos - 1 > 0:
                out.add(tp.partition)
        return out

    def holds(self, now_s: float) -> dict[int, int]:
        """Per place partition, the lowest source watermark it received that still holds: from a
        source partition behind (not caught up), received within the idle timeout (a worker that
        stopped sending them holds nothing back for longer). A place partition that no watermarks
        reached since the last rebalance is held (HELD) for up to the idle timeout."""
        stale = now_s - self.settings.idle_timeout_s
        holds: dict[int, int] = {}
        reached: set[int] = set()
        for (place_partition, _), (mark, received) in self.place_marks.items():
            if received < stale:
                continue
            reached.add(place_partition)
            if mark is None:
                continue
            held = holds.get(place_partition)
            if held is None or mark < held:
                holds[place_partition] = mark
        if now_s - self.hold_since < self.settings.idle_timeout_s:
            for tp in self.partitions.assignment():
                if tp.topic == self.settings.place_topic and tp.partition not in reached:
                    holds[tp.partition] = HELD
        return holds

    # --- input ---------------------------------------------------------------------------------
    def decode_forwards(self, messages: Sequence[Any], now: int) -> Decoded:
        """Place repartition records (Intake.forwards), then the holds of the place scope's windows
        once the watermarks they carried are in."""
        received = time.monotonic()
        # The batch is counted under the holds before its own watermarks records (they cover the
        # readings ahead of them): computed here, not left to the last tick, which a first batch after
        # a start or a rebalance can beat (then nothing was held, and a deep first sensor batch closed
        # windows that partitions not read yet still fed: amendments in 1 of 3 backlog runs).
        before = self.holds(received)
        out = self.intake.forwards(messages, now, self.place_marks, received)
        out.holds_before = before
        out.holds = self.holds(received)
        return out

    # --- batches -------------------------------------------------------------------------------
    async def guarded(self, scope: Scope, messages: Sequence[Any], ack: Ack) -> None:
        """`_batch` until it is computed and its landing started (it acknowledges the records once
        written and persisted). Records are isolated inside it; what still fails here fails for the
        batch as a whole (a bug): it is logged and counted, the scope's cache dropped once the batch
        before landed (the persisted states are the truth then), and the batch tried again after a
        backoff, its offsets uncommitted."""
        delay = retry.FIRST_S
        while True:
            try:
                await self._batch(scope, messages, ack)
                return
            except Exception as exc:
                await self._drop_cache(scope)
                delay = await self._failed(
                    scope,
                    "batch_failed",
                    exc,
                    action="a bug in the backend: report it with this log; the batch is retried and its"
                    " offsets are not committed meanwhile",
                    delay=delay,
                    records=len(messages),
                )

    async def expire(self, scope: Scope, now: int, partitions: set[int], behind: set[int]) -> None:
        """The idle timer's turn for one scope: close what went quiet, write it, persist the states.
        A failure here (a bug) is logged and counted and the scope's cache dropped (the persisted
        states are the truth); the next tick tries again."""
        try:
            async with scope.lock:
                # After the batch in flight: its writes first (in order), its new keys in the table.
                await self.landings.landed(scope.name)
                out = scope.engine.expire(now, partitions, list(scope.table.data.keys()), behind)
                if out.changed or out.open_docs:
                    await self.emit(scope, out, [], [])
                    self.persist(scope.table, out.changed)
        except Exception as exc:
            await self._drop_cache(scope)
            await self._failed(
                scope,
                "tick_failed",
                exc,
                action="a bug in the backend: report it with this log; the idle timer tries again",
            )
            return
        self.count(scope.name, out)

    async def _drop_cache(self, scope: Scope) -> None:
        """After a failure: the scope's cache dropped once the batch before landed (the persisted
        states are the truth then)."""
        await self.landings.landed(scope.name)
        scope.engine.forget()

    async def _failed(
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

    async def _batch(self, scope: Scope, messages: Sequence[Any], ack: Ack) -> None:
        """One batch of either scope: decode -> engine -> amend the closed windows it reached -> compare
        duplicates; then, once the scope's batch before has landed, its own landing starts (`_land`:
        write every output, persist the changed key states, acknowledge the records) and this
        returns, so the next batch is computed while this one is written."""
        now = now_ms()
        for msg in messages:
            self.positions[msg.tp] = msg.offset
        decoded = scope.decode(messages, now)
        async with scope.lock:
            out = await self._process(scope, decoded, now)
            if out.amends:
                # The windows amended may be the ones the batch in flight writes (and the sink's
                # memory of finals is updated by that write).
                await self.landings.landed(scope.name)
            await self.amender.amend(scope.name, scope.engine, out, decoded.rejected, now)
            await self._check_duplicates(scope, out, decoded, now)
            forwards = self._forwards(out) if scope.name == SENSOR else []
            # The states as of this batch: the next batch changes the same KeyState objects.
            states = [(st.partition, key, st.to_json()) for key, st in out.changed.items()]
            await self.landings.landed(scope.name)
            self.landings.start(
                scope.name, self._land(scope, out, forwards, decoded.rejected, states, messages, ack)
            )

    async def _land(
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
                delay = await self._failed(
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

    async def _process(self, scope: Scope, decoded: Decoded, now: int) -> Outputs:
        """The engine over the batch; again, from the persisted states, without an item it failed on
        (to the DLQ) or with the `readings` collection's answers it asked for."""
        items = decoded.items
        known: dict[str, Origin | None] = {}
        while True:
            try:
                out = scope.engine.process(items, now, known, decoded.holds, decoded.holds_before)
            except ItemFailed as failed:
                # Rolled back to the table's states: those of the batch in flight must be in it.
                await self.landings.landed(scope.name)
                scope.engine.rollback(failed.keys)
                item = items[failed.index]
                msg = decoded.record(
                    item.partition, item.offset // (FORWARD_SLOTS if scope.name == PLACE else 1)
                )
                value = (
                    msg.value if msg is not None and scope.name == SENSOR else encode_forward(item.reading)
                )
                decoded.rejected.append(self.intake.unprocessable(scope.name, failed.error, msg, value, now))
                items = [*items[: failed.index], *items[failed.index + 1 :]]
                continue
            if not out.lookups:
                return out
            # The look-up must see the readings the batch in flight writes, and the rollback reloads
            # the table's states, which hold that batch's only once it landed.
            await self.landings.landed(scope.name)
            scope.engine.rollback(out.keys)
            ids = sorted(out.lookups)
            found = await retry.until_done(
                "reading_lookup_failed",
                partial(self.sink.find_readings, ids),
                "check MongoDB (iot stack status); the batch waits, nothing is lost",
                scope=scope.name,
                mongo=self.settings.mongo_host,
            )
            self.metrics.lookups.labels(scope.name).inc(len(ids))
            decoded.stored.update(found)
            for rid in ids:
                known[rid] = _origin(found.get(rid))

    async def _check_duplicates(self, scope: Scope, out: Outputs, decoded: Decoded, now: int) -> None:
        """A duplicate whose values differ from the copy counted first is a conflicting duplicate: the
        first stays counted, the copy goes to the DLQ."""
        if not out.dup_checks:
            return
        firsts = {reading_id_of(i.reading): i.reading for i in out.readings}
        need = sorted({reading_id_of(i.reading) for i in out.dup_checks} - set(firsts) - set(decoded.stored))
        if need:
            await self.landings.landed(scope.name)  # a first copy may be in the batch in flight
            decoded.stored.update(
                await retry.until_done(
                    "reading_lookup_failed",
                    lambda: self.sink.find_readings(need),
                    "check MongoDB (iot stack status); the batch waits, nothing is lost",
                    scope=scope.name,
                    mongo=self.settings.mongo_host,
                )
            )
        for item in out.dup_checks:
            rid = reading_id_of(item.reading)
            first = firsts.get(rid) or decoded.stored.get(rid)
            differ = conflict(first, item.reading) if first is not None else []
            if not differ:
                continue
            partition, offset = item.source
            msg = decoded.record(partition, offset)
            self.metrics.rejected.labels(contract.REASON_CONFLICTING_DUPLICATE).inc()
            detail = f"{rid} was counted before with other {', '.join(differ)}; the first reading is kept"
            _log.warning(
                "conflicting_duplicate",
                reading=rid,
                fields=",".join(differ),
                partition=partition,
                offset=offset,
                action="sent to DLQ; a board re-used (boot, seq) for another reading: check its boot counter",
            )
            reading = item.reading
            decoded.rejected.append(
                dlq_record(
                    contract.REASON_CONFLICTING_DUPLICATE,
                    detail,
                    contract.reading_topic(reading["place"], reading["device"]),
                    msg.value if msg is not None else encode_forward(reading),
                    now,
                    contract.kafka_source(
                        self.settings.source_topic, partition, offset, msg.key if msg is not None else None
                    ),
                )
            )

    def _forwards(self, out: Outputs) -> list[Forward]:
        """The readings the sensor scope counted, for the place scope: each distinct reading once (with
        its origin), in input order, one bundle per place (records.BUNDLE_MAX); then, to every place
        partition, how far each source partition this worker owns has come (after the bundles: the
        same producer keeps them in order on each partition)."""
        by_place: dict[str, list[tuple[int, int, bytes]]] = {}
        marks_of = self.source_marks
        for item in out.readings:
            by_place.setdefault(item.reading["place"], []).append((item.partition, item.offset, item.forward))
            ts = item.reading["ts"]
            if ts > marks_of.get(item.partition, ts - 1):
                marks_of[item.partition] = ts
        forwards: list[Forward] = [
            (place, encode_bundle(items[i : i + BUNDLE_MAX]), None)
            for place, items in by_place.items()
            for i in range(0, len(items), BUNDLE_MAX)
        ]
        assigned = self.partitions.assignment()
        topic = self.settings.source_topic
        behind = self.behind(topic, assigned)
        waiting = time.monotonic() - self.hold_since < self.settings.idle_timeout_s
        marks: dict[int, int | None] = {}
        for tp in assigned:
            if tp.topic != topic:
                continue
            if tp in self.positions:
                marks[tp.partition] = marks_of.get(tp.partition, HELD) if tp.partition in behind else None
            else:
                # Not read since the assignment: held while it may still bring input (its highwater
                # unknown or above 0), for up to the idle timeout; an empty partition holds nothing.
                high = self.partitions.highwater(tp)
                marks[tp.partition] = HELD if waiting and (high is None or high > 0) else None
        value = encode_watermarks(marks)
        forwards.extend((WATERMARKS_KEY, value, q) for q in range(self.place_partitions))
        return forwards

    # --- outputs ---------------------------------------------------------------------------------
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
        Batches.persist_states(table, [(st.partition, key, st.to_json()) for key, st in changed.items()])

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


def _origin(doc: Mapping[str, Any] | None) -> Origin | None:
    """The iot.readings record a stored reading was first stored from; (-1, -1) when the document does
    not say (so it is taken for another record's: a duplicate)."""
    return None if doc is None else source_of(doc)
