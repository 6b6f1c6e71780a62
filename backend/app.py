"""The Faust runtime around the window engine: consumption, partition assignment, changelog-backed state
tables, the repartition by place, and the idle timer.

Per batch (a list of records from the fetch loop, transport.BatchQueue): the batch path of
backend/batches.py (decode → engine → write outputs → persist changed key states to the table and its
changelog → ack the records; the last three while the agent computes its next batch,
backend/inflight.py). Faust flushes the changelog before it commits offsets, so
after `kill -9` a key's restored state either holds a replayed record (then its fence skips it) or does
not (then it is counted again into the same idempotent outputs).

Table writes bypass `table[key] = ...`: that form writes the changelog to the partition of Faust's
"current event", which in a batch is the last event of the batch, not the key's own; and the idle timer
runs outside any event. Each key state records its partition and is written there explicitly. This is
also why the store is Faust's memory store (recovered from the compacted changelog at start): the
RocksDB store looks the partition up from the current event on every read and write.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import faust

from iot import contract, heap, log
from iot.env import writable_dir
from iot.topics import CONTRACT_TOPICS, TOPIC_PARTITIONS, TopicAdmin, TopicSpec

from . import startup, topics, transport
from .batches import Batches, Scope, now_ms
from .engine import ScopeEngine
from .errors import ConfigError
from .kafka_auth import faust_broker, faust_credentials
from .kafka_sink import KafkaSink
from .metrics import BackendMetrics
from .mongo_sink import MongoSink
from .monitor import QuietMonitor
from .records import (
    FORWARD_BYTES,
    PLACE,
    SENSOR,
)
from .settings import Settings
from .watchdog import StallWatch

_log = log.get("backend")
WATCH_EVERY_S = 2.0
READINGS_PARTITIONS = TOPIC_PARTITIONS[contract.TOPIC_READINGS]
STREAM_BUFFER = 4096


def _record_bytes(message: Any) -> int:
    value: bytes | None = message.value
    return len(value) if value else 1


class BackendRuntime:
    def __init__(self, settings: Settings, metrics: BackendMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or BackendMetrics()
        self.sink = MongoSink(settings.mongo_uri, self.metrics, source_topic=settings.source_topic)
        self.kafka = KafkaSink(settings.kafka)
        self.app = self._make_app()
        self.readings_topic = self.app.topic(
            settings.source_topic, key_serializer="raw", value_serializer="raw"
        )
        self.place_topic = self.app.topic(
            settings.place_topic, key_serializer="raw", value_serializer="raw", partitions=READINGS_PARTITIONS
        )
        self.batches = Batches(settings, self.sink, self.kafka, self.metrics, _Partitions(self.app))
        grace_ms = settings.grace_s * 1000
        idle_ms = int(settings.idle_timeout_s * 1000)
        for name, topic in ((SENSOR, settings.source_topic), (PLACE, settings.place_topic)):
            table = self.app.Table(f"{name}-state", partitions=READINGS_PARTITIONS)
            engine = ScopeEngine(
                name,
                settings.specs,
                grace_ms,
                idle_ms,
                self._loader(table),
                self.batches.lander.pacer.interval_ms,
                allowed_lateness_ms=settings.allowed_lateness_s * 1000,
                max_clock_ahead_ms=settings.max_clock_ahead_s * 1000,
                source_topic=settings.source_topic,
            )
            self.batches.add_scope(name, topic, table, engine)
        self.scopes = self.batches.scopes
        self.stall_watch = StallWatch(settings.stall_s, self.metrics)
        self.positions = self.batches.watermarks.positions
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
            # Faust's stream queues; the readings and place topics bypass them (transport.BatchQueue).
            # They also hold table recovery's changelog records, a key's whole state each (~17 KB):
            # not sized by the batch.
            stream_buffer_maxsize=STREAM_BUFFER,
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
            # not from its Faust stream: Faust's per-record path cost more than the windows. Each
            # record is acked once its batch is written and its state persisted, as the stream did.
            # A place record is a bundle of readings: its batches and queue are bounded in bytes, a
            # batch about `batch_max` forwarded readings.
            size = s.batch_max if scope.name == SENSOR else s.batch_max * FORWARD_BYTES
            weigh = None if scope.name == SENSOR else _record_bytes
            queue = transport.batch_queue(self.app, scope.topic, 4 * size, weigh)
            ack_one = self.app.consumer.ack

            def ack(messages: Any) -> None:
                for message in messages:
                    ack_one(message)

            async def windows(_stream: Any) -> None:  # Faust's agent signature
                # Faust's stalled-stream check (the aiokafka driver's verify_event_path) reads when each
                # partition last delivered to a stream; the batch path bypasses the streams, so it says
                # so here, per batch. Without it, a worker still behind 5 minutes after its start logged
                # "Stream has not started processing" every few seconds for every partition it was busy
                # with (3,538 lines in a 3,000-board soak).
                inbound = self.app.monitor.stream_inbound_time
                while True:
                    messages = await queue.get(size, within)
                    now = time.monotonic()
                    for tp in {message.tp for message in messages}:
                        inbound[tp] = now
                    # Returns once the batch is computed and its landing started; the landing acks
                    # the records only once every one was counted or dead-lettered, written and
                    # persisted (batches.py): no offset is committed before.
                    await self.batches.guarded(scope, messages, ack)

            return windows

        async def idle_tick() -> None:
            await self._tick()

        async def release_free_memory() -> None:
            heap.release_free_memory()

        async def watch_stalls() -> None:
            # Its own timer: the idle tick skips rebalances and can wait on an outage for a while.
            consumer: Any = self.app.consumer  # transport._Consumer (transport.install)
            self.stall_watch.observe(
                self.app.rebalancing, consumer.commit_since(), len(consumer.assignment())
            )

        async def on_rebalance(_sender: Any, /, *args: Any, **kwargs: Any) -> None:  # Faust's receiver
            await self.batches.rebalanced()

        self.app.agent(self.readings_topic, name="sensor-windows")(agent(self.scopes[SENSOR]))
        self.app.agent(self.place_topic, name="place-windows")(agent(self.scopes[PLACE]))
        self.app.timer(s.tick_s)(idle_tick)
        # A backlog's buffers must not stay in the RSS once it drained (iot/heap.py).
        self.app.timer(heap.EVERY_S)(release_free_memory)
        self.app.timer(WATCH_EVERY_S)(watch_stalls)
        self.app.on_partitions_revoked.connect(on_rebalance)
        self.app.on_partitions_assigned.connect(on_rebalance)

    async def _tick(self) -> None:
        if self.app.rebalancing:
            return
        now = now_ms()
        assigned = self.app.consumer.assignment()
        for scope in self.scopes.values():
            partitions = {tp.partition for tp in assigned if tp.topic == scope.topic}
            if not partitions:
                continue
            behind = self.batches.watermarks.behind(scope.topic, assigned)
            if scope.name == PLACE:
                scope.engine.holds = self.batches.watermarks.holds(time.monotonic())
            await self.batches.expire(scope, now, partitions, behind)
        for tp in assigned:
            pos = self.positions.get(tp)
            if pos is not None:
                high = self.app.consumer.highwater(tp)
                if high is not None:
                    self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(high - pos - 1, 0))

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
        startup.wait_for_services(self.settings)
        startup.fold_kafka_client_logs(self.settings.kafka.bootstrap)
        wanted = {t.name: t for t in (*CONTRACT_TOPICS, *self.subscribed_topics())}
        TopicAdmin(self.settings.kafka).ensure(wanted.values(), wait_visible=True)
        self.sink.ensure_indexes()
        self.metrics.serve(self.settings.metrics_port, self.settings.metrics_host)
        _log.info("backend_starting", **self.settings.describe(), metrics_port=self.settings.metrics_port)
        worker = faust.Worker(self.app, loglevel="WARNING", quiet=True, override_logging=False)
        worker.execute_from_commandline()
        return 0


class _Partitions:
    """The consumer's partitions for the batch path (Faust's consumer, made when first asked for)."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    def assignment(self) -> Any:
        return self._app.consumer.assignment()

    def highwater(self, tp: Any) -> int | None:
        high: int | None = self._app.consumer.highwater(tp)
        return high
