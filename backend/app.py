"""The Faust runtime around the window engine: consumption, partition assignment, changelog-backed state
tables, the repartition by place, and the idle timer.

Per batch (a list of records from the fetch loop, transport.BatchQueue): decode → engine → write
outputs (MongoDB, Kafka; awaited, retried) → persist changed key states to the table and its changelog
→ the agent acks the records. Faust flushes the changelog before it commits offsets, so after
`kill -9` a key's restored state either holds a replayed reading (then the reading is a duplicate and
skipped) or does not (then it is counted again into the same idempotent outputs).

Table writes bypass `table[key] = ...`: that form writes the changelog to the partition of Faust's
"current event", which in a batch is the last event of the batch, not the key's own; and the idle timer
runs outside any event. Each key state records its partition and is written there explicitly. This is
also why the store is Faust's memory store (recovered from the compacted changelog at start): the
RocksDB store looks the partition up from the current event on every read and write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust

from iot import contract, heap, log
from iot.env import writable_dir
from iot.topics import CONTRACT_TOPICS, TOPIC_PARTITIONS, TopicAdmin, TopicSpec

from . import retry, topics, transport
from .engine import Item, Outputs, ScopeEngine
from .errors import ConfigError
from .kafka_auth import faust_broker, faust_credentials
from .kafka_out import KafkaOut
from .metrics import BackendMetrics
from .mongo_sink import MongoSink
from .monitor import QuietMonitor
from .pacing import OpenWritePacer
from .records import (
    BUNDLE_MAX,
    FORWARD_SLOTS,
    PLACE,
    SENSOR,
    WATERMARKS_KEY,
    RejectedRecord,
    decode_forwarded,
    decode_reading,
    decode_watermarks,
    dlq_record,
    encode_bundle,
    encode_forward,
    encode_watermarks,
)
from .settings import Settings
from .windows import KeyState

_log = log.get("backend")
_WATERMARKS_KEY = WATERMARKS_KEY.encode()
# A hold below every reading's ts (epoch ms are positive): no window closes under it.
HELD = -1
READINGS_PARTITIONS = TOPIC_PARTITIONS[contract.TOPIC_READINGS]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class Decoded:
    """One batch of input records as the engine takes them, the DLQ records of those it rejected, and
    (sensor scope) what to forward to the place scope."""

    items: list[Item] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    # (key, value, partition or None for the key's): the place bundles, then the source watermarks.
    forwards: list[tuple[str, bytes, int | None]] = field(default_factory=list)
    # (place scope) the holds of its windows once the batch is in (ScopeEngine.process)
    holds: dict[int, int] | None = None


@dataclass(slots=True)
class Scope:
    """What one aggregation scope is made of: its input topic, its state table, its engine, the lock
    that keeps its batches and its idle timer apart, and how its input records decode."""

    name: str
    topic: str
    table: Any
    engine: ScopeEngine
    decode: Callable[[Sequence[Any], int], Decoded]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class BackendRuntime:
    def __init__(self, settings: Settings, metrics: BackendMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or BackendMetrics()
        self.sink = MongoSink(settings.mongo_uri, self.metrics)
        self.kafka = KafkaOut(settings.kafka)
        self.app = self._make_app()
        self.readings_topic = self.app.topic(
            settings.source_topic, key_serializer="raw", value_serializer="raw"
        )
        self.place_topic = self.app.topic(
            settings.place_topic, key_serializer="raw", value_serializer="raw", partitions=READINGS_PARTITIONS
        )
        grace_ms = settings.grace_s * 1000
        idle_ms = int(settings.idle_timeout_s * 1000)
        # Open windows are rewritten every open_write_s, or less often when that costs too much.
        self.pacer = OpenWritePacer(settings.open_write_s)
        self.metrics.open_write_interval.set(self.pacer.interval_s)

        def scope(name: str, topic: str, decode: Callable[[Sequence[Any], int], Decoded]) -> Scope:
            table = self.app.Table(f"{name}-state", partitions=READINGS_PARTITIONS)
            engine = ScopeEngine(
                name,
                settings.specs,
                grace_ms,
                idle_ms,
                self._loader(table),
                self.pacer.interval_ms,
                allowed_lateness_ms=settings.allowed_lateness_s * 1000,
                max_clock_ahead_ms=settings.max_clock_ahead_s * 1000,
            )
            return Scope(name, topic, table, engine, decode)

        self.scopes = {
            SENSOR: scope(SENSOR, settings.source_topic, self._decode_readings),
            PLACE: scope(PLACE, settings.place_topic, self._decode_forwards),
        }
        self.positions: dict[Any, int] = {}
        # The highest ts forwarded from each source partition (sensor stage), and the source
        # watermarks each place partition received: (place partition, source partition) ->
        # (watermark or None once caught up, monotonic time received). records.WATERMARKS_KEY.
        self.source_marks: dict[int, int] = {}
        self.place_marks: dict[tuple[int, int], tuple[int | None, float]] = {}
        # Since the last rebalance (monotonic): for up to the idle timeout after it, a source partition
        # not read yet, and a place partition no watermarks reached yet, hold everything (HELD); after
        # that they hold nothing back (the idea of Kafka Streams' max.task.idle.ms).
        self.hold_since = time.monotonic()
        self._wire()

    def _make_app(self) -> faust.App:
        s = self.settings
        # Faust creates its data dir without parents: on a fresh clone `.cache/` does not exist yet.
        writable_dir("IOT_BACKEND_DATA_DIR", s.data_dir, ConfigError)
        app = faust.App(
            s.app_id,
            broker=faust_broker(s.kafka),
            broker_credentials=faust_credentials(s.kafka),
            store="memory://",
            datadir=s.data_dir,
            web_enabled=s.web_port > 0,
            web_port=s.web_port or 6066,
            web_bind="127.0.0.1",
            consumer_auto_offset_reset=s.offset_reset,
            broker_commit_interval=s.commit_interval_s,
            # A worker killed with -9 holds its partitions until its session expires: keep that short.
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=max(s.session_timeout_s / 5, 0.5),
            broker_max_poll_records=s.batch_max,
            stream_buffer_maxsize=max(4096, 2 * s.batch_max),
            table_standby_replicas=0,
            topic_partitions=READINGS_PARTITIONS,
            topic_replication_factor=1,
            # Table changelogs: JSON keys (str) and JSON values (KeyState.to_json()).
            key_serializer="json",
            value_serializer="json",
            # Faust's per-message statistics are for views and sensors this worker does not run.
            monitor=QuietMonitor(),
        )
        # Rewinds partitions without a committed offset too when Faust seeks after a rebalance.
        transport.install(app)
        return app

    @staticmethod
    def _loader(table: Any) -> Callable[[str], Mapping[str, Any] | None]:
        def load(key: str) -> Mapping[str, Any] | None:
            value: Mapping[str, Any] | None = table.data.get(key)
            return value

        return load

    def _wire(self) -> None:
        s = self.settings
        within = s.batch_within_ms / 1000

        def agent(scope: Scope) -> Callable[[Any], Any]:
            # The agent reads its topic's records from the fetch loop in lists (transport.BatchQueue),
            # not from its Faust stream: Faust's per-record path cost more than the windows. It acks
            # each record once its batch is written and its state persisted, as the stream did.
            queue = transport.batch_queue(self.app, scope.topic, 4 * s.batch_max)
            ack = self.app.consumer.ack

            async def windows(stream: Any) -> None:
                while True:
                    messages = await queue.get(s.batch_max, within)
                    await self._batch(scope, messages)
                    for message in messages:
                        ack(message)

            return windows

        async def idle_tick() -> None:
            await self._tick()

        async def release_free_memory() -> None:
            heap.release_free_memory()

        def on_rebalance(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            for scope in self.scopes.values():
                scope.engine.forget()
            self.sink.forget()
            # The holds start over: what this worker reads now is counted from the assignment on.
            self.hold_since = time.monotonic()

        self.app.agent(self.readings_topic, name="sensor-windows")(agent(self.scopes[SENSOR]))
        self.app.agent(self.place_topic, name="place-windows")(agent(self.scopes[PLACE]))
        self.app.timer(s.tick_s)(idle_tick)
        # A backlog's buffers must not stay in the RSS once it drained (iot/heap.py).
        self.app.timer(heap.EVERY_S)(release_free_memory)
        self.app.on_partitions_revoked.connect(on_rebalance)
        self.app.on_partitions_assigned.connect(on_rebalance)

    # --- input ---------------------------------------------------------------------------------
    def _decode_readings(self, messages: Sequence[Any], now: int) -> Decoded:
        """iot.readings records: validated here; every valid reading is also forwarded to the place
        scope."""
        out = Decoded()
        by_place: dict[str, list[bytes]] = {}
        for msg in messages:
            value = msg.value
            try:
                reading = decode_reading(value)
            except RejectedRecord as exc:
                self.metrics.rejected.labels(exc.reason).inc()
                _log.warning(
                    "reading_rejected",
                    reason=exc.reason,
                    detail=exc.detail,
                    partition=msg.partition,
                    offset=msg.offset,
                    action="sent to DLQ; fix the producer of this record",
                )
                out.rejected.append(dlq_record(exc.reason, exc.detail, exc.topic, value or b"", now))
                continue
            out.items.append((reading, msg.partition, msg.offset))
            ts = reading["ts"]
            if ts > self.source_marks.get(msg.partition, ts - 1):
                self.source_marks[msg.partition] = ts
            # Every valid reading goes on, duplicates too: the place scope de-duplicates on its own, and
            # this keeps the forward independent of what the sensor state already holds after a crash.
            # Forwarded normalised, so the place stage parses it once without validating it again;
            # in bundles, one record per place (in input order) per batch (records.BUNDLE_MAX).
            by_place.setdefault(reading["place"], []).append(encode_forward(reading))
        out.forwards = [
            (place, encode_bundle(encoded[i : i + BUNDLE_MAX]), None)
            for place, encoded in by_place.items()
            for i in range(0, len(encoded), BUNDLE_MAX)
        ]
        # Then, to every place partition, how far each source partition this worker owns has come
        # (after the bundles: the same producer keeps them in order on each partition).
        assigned = self.app.consumer.assignment()
        topic = self.settings.source_topic
        behind = self._behind(topic, assigned)
        waiting = time.monotonic() - self.hold_since < self.settings.idle_timeout_s
        marks: dict[int, int | None] = {}
        for tp in assigned:
            if tp.topic != topic:
                continue
            if tp in self.positions:
                marks[tp.partition] = (
                    self.source_marks.get(tp.partition, HELD) if tp.partition in behind else None
                )
            else:
                # Not read since the assignment: held while it may still bring input (its highwater
                # unknown or above 0), for up to the idle timeout; an empty partition holds nothing.
                high = self.app.consumer.highwater(tp)
                marks[tp.partition] = HELD if waiting and (high is None or high > 0) else None
        value = encode_watermarks(marks)
        out.forwards.extend((WATERMARKS_KEY, value, q) for q in range(READINGS_PARTITIONS))
        return out

    def _decode_forwards(self, messages: Sequence[Any], now: int) -> Decoded:
        """Place repartition records, written by our own sensor scope after validation: only decoding
        is left to do. A bundle's readings get consecutive input offsets of their own
        (records.FORWARD_SLOTS)."""
        out = Decoded()
        received = time.monotonic()
        for msg in messages:
            if msg.key == _WATERMARKS_KEY:
                try:
                    marks = decode_watermarks(msg.value)
                except RejectedRecord as exc:
                    self.metrics.rejected.labels(exc.reason).inc()
                    out.rejected.append(dlq_record(exc.reason, exc.detail, exc.topic, msg.value or b"", now))
                    continue
                for source, mark in marks.items():
                    self.place_marks[msg.partition, source] = (mark, received)
                continue
            base = msg.offset * FORWARD_SLOTS
            for index, item in enumerate(decode_forwarded(msg.value)):
                if isinstance(item, RejectedRecord):
                    self.metrics.rejected.labels(item.reason).inc()
                    out.rejected.append(
                        dlq_record(item.reason, item.detail, item.topic, msg.value or b"", now)
                    )
                    continue
                out.items.append((item, msg.partition, base + index))
        out.holds = self._holds(received)
        return out

    def _holds(self, now_s: float) -> dict[int, int]:
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
            for tp in self.app.consumer.assignment():
                if tp.topic == self.settings.place_topic and tp.partition not in reached:
                    holds[tp.partition] = HELD
        return holds

    # --- batches -------------------------------------------------------------------------------
    async def _batch(self, scope: Scope, messages: Sequence[Any]) -> None:
        """One batch of either scope: decode -> engine -> amend the closed windows it reached ->
        write every output (MongoDB, Kafka) -> persist the changed key states. The agent acknowledges
        the records after this returns."""
        now = now_ms()
        for msg in messages:
            self.positions[msg.tp] = msg.offset
        decoded = scope.decode(messages, now)
        async with scope.lock:
            out = scope.engine.process(decoded.items, now, decoded.holds)
            await self._amend(scope, out, now)
            await self._emit(scope, out, decoded.forwards, decoded.rejected)
            self._persist(scope.table, out.changed)
        self._count(scope.name, out)

    async def _tick(self) -> None:
        if self.app.rebalancing:
            return
        now = now_ms()
        assigned = self.app.consumer.assignment()
        for scope in self.scopes.values():
            partitions = {tp.partition for tp in assigned if tp.topic == scope.topic}
            if not partitions:
                continue
            behind = self._behind(scope.topic, assigned)
            if scope.name == PLACE:
                scope.engine.holds = self._holds(time.monotonic())
            async with scope.lock:
                out = scope.engine.expire(now, partitions, list(scope.table.data.keys()), behind)
                if out.changed or out.open_docs:
                    await self._emit(scope, out, [], [])
                    self._persist(scope.table, out.changed)
            self._count(scope.name, out)
        for tp in assigned:
            pos = self.positions.get(tp)
            if pos is not None:
                high = self.app.consumer.highwater(tp)
                if high is not None:
                    self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(high - pos - 1, 0))

    def _behind(self, topic: str, assigned: Any) -> set[int]:
        """Partitions of `topic` with input not read yet (no idle close by wall clock alone there:
        ScopeEngine.expire). A partition not read since the start counts as caught up."""
        out = set()
        for tp in assigned:
            if tp.topic != topic:
                continue
            pos, high = self.positions.get(tp), self.app.consumer.highwater(tp)
            if pos is not None and high is not None and high - pos - 1 > 0:
                out.add(tp.partition)
        return out

    # --- outputs -------------------------------------------------------------------------------
    async def _amend(self, scope: Scope, out: Outputs, now: int) -> None:
        """Load the closed windows the batch amends and apply the late readings to them. Closed windows
        live in MongoDB only (bounded memory), so this read is part of the batch; it is retried like a
        write, since skipping it would drop the readings."""
        if not out.amends:
            return
        ids = list(out.amends)
        stored = await retry.until_done(
            "amendment_read_failed",
            lambda: self.sink.load_windows(scope.name, ids),
            "check MongoDB (iot stack status); the batch waits, nothing is lost",
            scope=scope.name,
        )
        scope.engine.amend(out, stored, now)
        if out.amended_docs:
            _log.info(
                "windows_amended",
                scope=scope.name,
                windows=len(out.amended_docs),
                created=sum(1 for d in out.amended_docs if d["revision"] == 0),
                readings=out.amended_readings,
            )

    async def _emit(
        self,
        scope: Scope,
        out: Outputs,
        forwards: list[tuple[str, bytes, int | None]],
        rejected: list[dict[str, Any]],
    ) -> None:
        """Write everything the batch produced; retried (idempotent) until it lands: losing it is worse."""
        open_s = await retry.until_done(
            "output_write_failed",
            lambda: self._write(scope.name, out, forwards, rejected),
            "check MongoDB/Kafka (iot stack status); the batch is retried, nothing is lost",
            scope=scope.name,
        )
        self._pace(open_s)

    def _write(
        self,
        scope: str,
        out: Outputs,
        forwards: list[tuple[str, bytes, int | None]],
        rejected: list[dict[str, Any]],
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

    def _pace(self, open_s: float) -> None:
        interval = self.pacer.record(open_s, time.monotonic())
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
            why="open-window rewrites cost more than their share of the worker's time"
            if interval > self.settings.open_write_s
            else "back within budget",
        )

    @staticmethod
    def _persist(table: Any, changed: Mapping[str, KeyState]) -> None:
        for key, state in changed.items():
            value = state.to_json()
            table.data[key] = value
            table.send_changelog(state.partition, key, value)

    def _count(self, scope: str, out: Outputs) -> None:
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
        for doc in out.final_docs:
            m.finalized.labels(scope, doc["kind"]).inc()
        for doc in out.final_docs + out.amended_docs:
            m.show_window(scope, doc)

    def subscribed_topics(self) -> list[TopicSpec]:
        """Every topic the worker reads: the source and repartition topics (co-partitioned with the
        tables) and what Faust would make itself (changelogs, leader topic)."""
        s = self.settings
        return [
            TopicSpec(s.source_topic, READINGS_PARTITIONS, exact_partitions=True),
            TopicSpec(s.place_topic, READINGS_PARTITIONS, exact_partitions=True),
            *topics.faust_topics(self.app),
        ]

    def run(self) -> int:
        """Run the worker until SIGTERM/SIGINT."""
        # The contract topics it writes, and every topic it subscribes to, changelogs included, seen
        # in the metadata before Faust's consumer first reads it, or the assignment leaves a table's
        # state behind (backend/topics.py).
        wanted = {t.name: t for t in (*CONTRACT_TOPICS, *self.subscribed_topics())}
        TopicAdmin(self.settings.kafka).ensure(wanted.values(), wait_visible=True)
        self.sink.ensure_indexes()
        self.metrics.serve(self.settings.metrics_port, self.settings.metrics_host)
        _log.info("backend_starting", **self.settings.describe(), metrics_port=self.settings.metrics_port)
        worker = faust.Worker(self.app, loglevel="WARNING", quiet=True, override_logging=False)
        worker.execute_from_commandline()
        return 0
