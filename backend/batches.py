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

The place scope's windows are held until every source partition's input passed them
(backend/watermarks.py); the landing itself is backend/landing.py's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from iot import contract, log

from . import retry
from .amending import Amender
from .batch_io import Origin, Outputs
from .engine import ItemFailed, ScopeEngine
from .inflight import Landings
from .intake import Decoded, Intake
from .kafka_sink import KafkaSink
from .landing import Ack, Lander
from .metrics import BackendMetrics
from .mongo_sink import MongoSink, source_of
from .records import (
    BUNDLE_MAX,
    FORWARD_SLOTS,
    PLACE,
    SENSOR,
    Forward,
    dlq_record,
    encode_bundle,
    encode_forward,
    reading_id_of,
)
from .scope import Partitions, Scope, Table
from .settings import Settings
from .stored import conflict
from .watermarks import Watermarks

__all__ = ["Batches", "Scope", "now_ms"]

_log = log.get("backend")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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
        self.metrics = metrics
        self.intake = Intake(metrics)
        self.amender = Amender(sink, metrics, settings.mongo_host)
        self.scopes: dict[str, Scope] = {}
        self.watermarks = Watermarks(settings, partitions)
        self.lander = Lander(settings, sink, kafka, metrics, self.scopes)
        # Each scope's batch being written while its next one is computed (backend/inflight.py).
        self.landings = Landings()

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
        self.watermarks.rebalanced()

    # --- input ---------------------------------------------------------------------------------
    def decode_forwards(self, messages: Sequence[Any], now: int) -> Decoded:
        """Place repartition records (Intake.forwards), then the holds of the place scope's windows
        once the watermarks they carried are in."""
        received = time.monotonic()
        # The batch is counted under the holds before its own watermarks records (they cover the
        # readings ahead of them): computed here, not left to the last tick, which a first batch after
        # a start or a rebalance can beat (then nothing was held, and a deep first sensor batch closed
        # windows that partitions not read yet still fed: amendments in 1 of 3 backlog runs).
        marks = self.watermarks
        before = marks.holds(received)
        out = self.intake.forwards(messages, now, marks.place_marks, received)
        out.holds_before = before
        out.holds = marks.holds(received)
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
                delay = await self.lander.failed(
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
                    await self.lander.emit(scope, out, [], [])
                    self.lander.persist(scope.table, out.changed)
        except Exception as exc:
            await self._drop_cache(scope)
            await self.lander.failed(
                scope,
                "tick_failed",
                exc,
                action="a bug in the backend: report it with this log; the idle timer tries again",
            )
            return
        self.lander.count(scope.name, out)

    async def _drop_cache(self, scope: Scope) -> None:
        """After a failure: the scope's cache dropped once the batch before landed (the persisted
        states are the truth then)."""
        await self.landings.landed(scope.name)
        scope.engine.forget()

    async def _batch(self, scope: Scope, messages: Sequence[Any], ack: Ack) -> None:
        """One batch of either scope: decode -> engine -> amend the closed windows it reached -> compare
        duplicates; then, once the scope's batch before has landed, its own landing starts (Lander.land:
        write every output, persist the changed key states, acknowledge the records) and this
        returns, so the next batch is computed while this one is written."""
        now = now_ms()
        positions = self.watermarks.positions
        for msg in messages:
            positions[msg.tp] = msg.offset
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
                scope.name, self.lander.land(scope, out, forwards, decoded.rejected, states, messages, ack)
            )

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
        marks_of = self.watermarks.source_marks
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
        forwards.extend(self.watermarks.records())
        return forwards


def _origin(doc: Mapping[str, Any] | None) -> Origin | None:
    """The iot.readings record a stored reading was first stored from; (-1, -1) when the document does
    not say (so it is taken for another record's: a duplicate)."""
    return None if doc is None else source_of(doc)
