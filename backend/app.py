"""The Faust runtime around the window engine: consumption, partition assignment, changelog-backed state
tables, the repartition by place, and the idle timer.

Per batch (`stream.take_events`): decode → engine → write outputs (MongoDB, Kafka; awaited, retried) →
persist changed key states to the table and its changelog → Faust acks the events. Faust flushes the
changelog before it commits offsets, so after `kill -9` a key's restored state either holds a replayed
reading (then the reading is a duplicate and skipped) or does not (then it is counted again into the
same idempotent outputs).

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
from pathlib import Path
from typing import Any

import faust
from confluent_kafka.admin import AdminClient, NewTopic

from iot import contract, heap, log
from iot.topics import TOPIC_PARTITIONS, ensure_topics

from . import topics, transport
from .engine import Item, Outputs, ScopeEngine
from .errors import SinkError
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
    RejectedRecord,
    decode_forwarded,
    decode_reading,
    dlq_record,
    encode_bundle,
    encode_forward,
)
from .settings import Settings
from .windows import KeyState

_log = log.get("backend")
READINGS_PARTITIONS = TOPIC_PARTITIONS[contract.TOPIC_READINGS]
RETRY_MAX_S = 30.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ensure_backend_topics(settings: Settings) -> None:
    """The contract topics plus this app's repartition topic (and source topic when it is not the
    contract's), with the partition count of iot.readings."""
    ensure_topics(settings.kafka_bootstrap)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    existing = admin.list_topics(timeout=30).topics
    wanted = [t for t in (settings.place_topic, settings.source_topic) if t not in existing]
    if not wanted:
        return
    futures = admin.create_topics([NewTopic(t, READINGS_PARTITIONS, 1) for t in wanted])
    for name, fut in futures.items():
        try:
            fut.result(timeout=30)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise SinkError(f"creating topic {name} failed: {exc}") from exc


class BackendRuntime:
    def __init__(self, settings: Settings, metrics: BackendMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or BackendMetrics()
        self.sink = MongoSink(settings.mongo_uri, self.metrics)
        self.kafka = KafkaOut(settings.kafka_bootstrap)
        self.app = self._make_app()
        self.readings_topic = self.app.topic(
            settings.source_topic, key_serializer="raw", value_serializer="raw"
        )
        self.place_topic = self.app.topic(
            settings.place_topic, key_serializer="raw", value_serializer="raw", partitions=READINGS_PARTITIONS
        )
        self.sensor_table = self.app.Table("sensor-state", partitions=READINGS_PARTITIONS)
        self.place_table = self.app.Table("place-state", partitions=READINGS_PARTITIONS)
        grace_ms = settings.grace_s * 1000
        idle_ms = int(settings.idle_timeout_s * 1000)
        # Open windows are rewritten every open_write_s, or less often when that costs too much.
        self.pacer = OpenWritePacer(settings.open_write_s)
        self.metrics.open_write_interval.set(self.pacer.interval_s)
        open_ms = self.pacer.interval_ms
        self.engines = {
            scope: ScopeEngine(
                scope,
                settings.specs,
                grace_ms,
                idle_ms,
                self._loader(table),
                open_ms,
                allowed_lateness_ms=settings.allowed_lateness_s * 1000,
                max_clock_ahead_ms=settings.max_clock_ahead_s * 1000,
                offset_slots=FORWARD_SLOTS if scope == PLACE else 1,
            )
            for scope, table in ((SENSOR, self.sensor_table), (PLACE, self.place_table))
        }
        self.locks = {SENSOR: asyncio.Lock(), PLACE: asyncio.Lock()}
        self.positions: dict[Any, int] = {}
        self._wire()

    def _make_app(self) -> faust.App:
        s = self.settings
        # Faust creates its data dir without parents: on a fresh clone `.cache/` does not exist yet.
        Path(s.data_dir).mkdir(parents=True, exist_ok=True)
        app = faust.App(
            s.app_id,
            broker="kafka://" + s.kafka_bootstrap.replace(",", ";"),
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

        async def sensor_windows(stream: Any) -> None:
            async for events in stream.take_events(s.batch_max, within=within):
                await self._sensor_batch(events)

        async def place_windows(stream: Any) -> None:
            async for events in stream.take_events(s.batch_max, within=within):
                await self._place_batch(events)

        async def idle_tick() -> None:
            await self._tick()

        async def release_free_memory() -> None:
            heap.release_free_memory()

        def on_rebalance(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            for engine in self.engines.values():
                engine.forget()
            self.sink.forget()

        self.app.agent(self.readings_topic, name="sensor-windows")(sensor_windows)
        self.app.agent(self.place_topic, name="place-windows")(place_windows)
        self.app.timer(s.tick_s)(idle_tick)
        # A backlog's buffers must not stay in the RSS once it drained (iot/heap.py).
        self.app.timer(heap.EVERY_S)(release_free_memory)
        self.app.on_partitions_revoked.connect(on_rebalance)
        self.app.on_partitions_assigned.connect(on_rebalance)

    # --- batches -------------------------------------------------------------------------------
    async def _sensor_batch(self, events: Sequence[Any]) -> None:
        now = now_ms()
        batch: list[Item] = []
        rejected: list[dict[str, Any]] = []
        by_place: dict[str, list[bytes]] = {}
        for event in events:
            msg = event.message
            self.positions[msg.tp] = msg.offset
            value = event.value
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
                rejected.append(dlq_record(exc.reason, exc.detail, exc.topic, value or b"", now))
                continue
            batch.append((reading, msg.partition, msg.offset))
            # Every valid reading goes on, duplicates too: the place scope de-duplicates on its own, and
            # this keeps the forward independent of what the sensor state already holds after a crash.
            # Forwarded normalised, so the place stage parses it once without validating it again;
            # in bundles, one record per place (in input order) per batch (records.BUNDLE_MAX).
            by_place.setdefault(reading["place"], []).append(encode_forward(reading))
        forwards = [
            (place, encode_bundle(encoded[i : i + BUNDLE_MAX]))
            for place, encoded in by_place.items()
            for i in range(0, len(encoded), BUNDLE_MAX)
        ]
        async with self.locks[SENSOR]:
            out = self.engines[SENSOR].process(batch, now)
            await self._amend(SENSOR, out, now)
            await self._emit(SENSOR, out, forwards, rejected)
            self._persist(self.sensor_table, out.changed)
        self._count(SENSOR, out)

    async def _place_batch(self, events: Sequence[Any]) -> None:
        now = now_ms()
        batch: list[Item] = []
        rejected: list[dict[str, Any]] = []
        for event in events:
            msg = event.message
            self.positions[msg.tp] = msg.offset
            # Written by our own sensor agent after validation: only decoding is left to do. A bundle's
            # readings get consecutive input offsets of their own (records.FORWARD_SLOTS).
            base = msg.offset * FORWARD_SLOTS
            for index, item in enumerate(decode_forwarded(event.value)):
                if isinstance(item, RejectedRecord):
                    self.metrics.rejected.labels(item.reason).inc()
                    rejected.append(dlq_record(item.reason, item.detail, item.topic, event.value or b"", now))
                    continue
                batch.append((item, msg.partition, base + index))
        async with self.locks[PLACE]:
            out = self.engines[PLACE].process(batch, now)
            await self._amend(PLACE, out, now)
            await self._emit(PLACE, out, [], rejected)
            self._persist(self.place_table, out.changed)
        self._count(PLACE, out)

    async def _tick(self) -> None:
        if self.app.rebalancing:
            return
        now = now_ms()
        assigned = self.app.consumer.assignment()
        for scope, topic, table in (
            (SENSOR, self.settings.source_topic, self.sensor_table),
            (PLACE, self.settings.place_topic, self.place_table),
        ):
            partitions = {tp.partition for tp in assigned if tp.topic == topic}
            if not partitions:
                continue
            behind = self._behind(topic, assigned)
            async with self.locks[scope]:
                out = self.engines[scope].expire(now, partitions, list(table.data.keys()), behind)
                if out.changed or out.open_docs:
                    await self._emit(scope, out, [], [])
                    self._persist(table, out.changed)
            self._count(scope, out)
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
    async def _amend(self, scope: str, out: Outputs, now: int) -> None:
        """Load the closed windows the batch amends and apply the late readings to them. Closed windows
        live in MongoDB only (bounded memory), so this read is part of the batch; it is retried like a
        write, since skipping it would drop the readings."""
        if not out.amends:
            return
        delay = 0.5
        while True:
            try:
                stored = await asyncio.to_thread(self.sink.load_windows, scope, list(out.amends))
                break
            except SinkError as exc:
                _log.error(
                    "amendment_read_failed",
                    scope=scope,
                    error=str(exc)[:300],
                    retry_in_s=delay,
                    action="check MongoDB (iot stack status); the batch waits, nothing is lost",
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        self.engines[scope].amend(out, stored, now)
        if out.amended_docs:
            _log.info(
                "windows_amended",
                scope=scope,
                windows=len(out.amended_docs),
                created=sum(1 for d in out.amended_docs if d["revision"] == 0),
                readings=out.amended_readings,
            )

    async def _emit(
        self, scope: str, out: Outputs, forwards: list[tuple[str, bytes]], rejected: list[dict[str, Any]]
    ) -> None:
        """Write everything the batch produced; retry (idempotent) until it lands: losing it is worse."""
        delay = 0.5
        while True:
            try:
                open_s = await asyncio.to_thread(self._write, scope, out, forwards, rejected)
                self._pace(open_s)
                return
            except SinkError as exc:
                _log.error(
                    "output_write_failed",
                    scope=scope,
                    error=str(exc)[:300],
                    retry_in_s=delay,
                    action="check MongoDB/Kafka (iot stack status); the batch is retried, nothing is lost",
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _write(
        self, scope: str, out: Outputs, forwards: list[tuple[str, bytes]], rejected: list[dict[str, Any]]
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
        for place, value in forwards:
            self.kafka.forward(self.settings.place_topic, place, value)
        self.kafka.flush()
        return open_s

    def _pace(self, open_s: float) -> None:
        interval = self.pacer.record(open_s, time.monotonic())
        if interval is None:
            return
        for engine in self.engines.values():
            engine.open_write_ms = self.pacer.interval_ms
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

    def subscribed_topics(self) -> list[topics.TopicSpec]:
        s = self.settings
        return [
            topics.TopicSpec(s.source_topic, READINGS_PARTITIONS),
            topics.TopicSpec(s.place_topic, READINGS_PARTITIONS),
            *topics.faust_topics(self.app),
        ]

    def run(self) -> int:
        """Run the worker until SIGTERM/SIGINT."""
        ensure_backend_topics(self.settings)
        # Every topic the worker subscribes to, changelogs included, must be in the metadata before
        # Faust's consumer first reads it, or the assignment leaves a table's state behind (topics.py).
        topics.ensure_visible(self.settings.kafka_bootstrap, self.subscribed_topics())
        self.sink.ensure_indexes()
        self.metrics.serve(self.settings.metrics_port, self.settings.metrics_host)
        _log.info("backend_starting", **self.settings.describe(), metrics_port=self.settings.metrics_port)
        worker = faust.Worker(self.app, loglevel="WARNING", quiet=True, override_logging=False)
        worker.execute_from_commandline()
        return 0
