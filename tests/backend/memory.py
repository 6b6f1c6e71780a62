"""The backend's batch path (backend/batches.py) run without services, for pure-logic and fuzz tests.

Its outputs go to in-memory stores with the write semantics of the real ones: `MemorySink` is MongoDB
as backend/mongo_sink.py writes it (readings inserted once by `_id`, a final window never overwritten
by an open or final write, amendments replaced whole), `MemoryKafka` the topics it produces to, and
`MemoryTable` a Faust table with its changelog (values stored as the JSON Kafka would carry). A
`Pipeline` feeds records partition by partition in batches, as the agents would (the next batch computed
while the one before lands, backend/inflight.py; offsets committed when a batch's landing acks it), and
can crash between writing a batch's outputs and committing its offsets (a restart reads the changelog,
not the memory).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from backend import settings as settings_mod
from backend.batches import Batches, Scope
from backend.engine import Item, ScopeEngine
from backend.metrics import BackendMetrics
from backend.mongo_sink import source_code
from backend.records import PLACE, SENSOR
from iot import contract

PARTITIONS = 3
SOURCE = "fuzz-src"


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


class MemorySink:
    """MongoDB as MongoSink writes it, over dicts; survives a restart of the pipeline. `corrupted`:
    window ids a test corrupted that no write has replaced since."""

    def __init__(self) -> None:
        self.readings: dict[str, dict[str, Any]] = {}
        self.windows: dict[str, dict[str, dict[str, Any]]] = {SENSOR: {}, PLACE: {}}
        self.corrupted: set[str] = set()

    def forget(self) -> None:
        pass

    def load_windows(self, scope: str, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        docs = self.windows[scope]
        return {i: copy.deepcopy(docs[i]) for i in ids if i in docs}

    def find_readings(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return {i: copy.deepcopy(self.readings[i]) for i in ids if i in self.readings}

    def window_readings(self, scope: str, key: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
        field_ = "device" if scope == SENSOR else "place"
        return [
            copy.deepcopy(r)
            for r in self.readings.values()
            if r.get(field_) == key and isinstance(r.get("ts"), int) and start_ms <= r["ts"] < end_ms
        ]

    def write_readings(self, items: Iterable[Item]) -> int:
        n = 0
        for item in items:
            r = item.reading
            rid = contract.reading_id(r["device"], r["boot"], r["seq"])
            if rid not in self.readings:
                doc = dict(r)
                doc["_id"] = rid
                doc["src"] = source_code(*item.source)
                self.readings[rid] = doc
            n += 1
        return n

    def write_windows(self, scope: str, docs: Iterable[Mapping[str, Any]]) -> int:
        stored = self.windows[scope]
        n = 0
        for doc in docs:
            current = stored.get(doc["_id"])
            if current is None or current.get("final") is not True:
                stored[doc["_id"]] = copy.deepcopy(dict(doc))
                self.corrupted.discard(doc["_id"])
            n += 1
        return n

    def write_amended(self, scope: str, docs: Iterable[Mapping[str, Any]]) -> int:
        n = 0
        for doc in docs:
            self.windows[scope][doc["_id"]] = copy.deepcopy(dict(doc))
            self.corrupted.discard(doc["_id"])
            n += 1
        return n


class MemoryKafka:
    """The topics the batch path produces to: windows, DLQ, and the place repartition topic (records
    appended to `place_log` per partition, as Kafka would assign them by key)."""

    def __init__(self, place_topic: str) -> None:
        self.place_topic = place_topic
        self.windows: list[tuple[str, dict[str, Any]]] = []
        self.dlq: list[dict[str, Any]] = []
        self.place_log: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in range(PARTITIONS)}

    def window(self, scope: str, doc: Mapping[str, Any]) -> None:
        self.windows.append((scope, json.loads(contract.encode(doc))))

    def dlq_record(self, record: Mapping[str, Any]) -> None:
        self.dlq.append(json.loads(contract.encode(record)))

    def forward(self, topic: str, key: str, value: bytes, partition: int | None = None) -> None:
        assert topic == self.place_topic
        self.place_log[partition_of(key) if partition is None else partition].append((key.encode(), value))

    def flush(self, timeout: float = 30.0) -> None:
        pass


class _KafkaFacade:
    """The KafkaSink interface over a MemoryKafka (its `dlq` is a method there, a list here)."""

    def __init__(self, kafka: MemoryKafka) -> None:
        self._k = kafka

    def window(self, scope: str, doc: Mapping[str, Any]) -> None:
        self._k.window(scope, doc)

    def dlq(self, record: Mapping[str, Any]) -> None:
        self._k.dlq_record(record)

    def forward(self, topic: str, key: str, value: bytes, partition: int | None = None) -> None:
        self._k.forward(topic, key, value, partition)

    def flush(self, timeout: float = 30.0) -> None:
        self._k.flush(timeout)


class MemoryTable:
    """A Faust table: `data` in memory and a changelog that holds what Kafka would (JSON)."""

    def __init__(self, changelog: dict[str, str]) -> None:
        self.changelog = changelog
        self.data: dict[str, Any] = {k: json.loads(v) for k, v in changelog.items()}
        self.dead = False  # its process was killed: nothing more reaches Kafka

    def send_changelog(self, _partition: int, key: Any, value: Any) -> None:
        if not self.dead:
            self.changelog[key] = json.dumps(value)


class _Partitions:
    """The consumer's view: every partition of both topics is this worker's; highwater is the end of
    each log."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe

    def assignment(self) -> set[TP]:
        topics = (SOURCE, self.pipe.settings.place_topic)
        return {TP(t, p) for t in topics for p in range(PARTITIONS)}

    def highwater(self, tp: TP) -> int | None:
        if tp.topic == SOURCE:
            return len(self.pipe.log[tp.partition])
        return len(self.pipe.kafka.place_log[tp.partition])


def partition_of(key: str) -> int:
    return zlib.crc32(key.encode()) % PARTITIONS


@dataclass
class Pipeline:
    """Both scopes over the memory stores. Records are appended to `log` (iot.readings, by partition);
    `run` processes what is not committed yet, in batches of `batch_max` per partition, and the place
    scope's input the sensor scope produced; `crash` restarts from the changelogs and committed
    offsets, losing whatever the batch in flight had not persisted."""

    env: dict[str, str] = field(default_factory=dict)
    batch_max: int = 7
    sink: MemorySink = field(default_factory=MemorySink)
    log: dict[int, list[Message]] = field(default_factory=lambda: {p: [] for p in range(PARTITIONS)})
    changelogs: dict[str, dict[str, str]] = field(default_factory=lambda: {SENSOR: {}, PLACE: {}})
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    now: int = 0

    def __post_init__(self) -> None:
        self.settings = settings_mod.load(
            {
                "IOT_WINDOW_TUMBLING_S": "2",
                "IOT_WINDOW_HOPPING_S": "4",
                "IOT_WINDOW_HOP_STEP_S": "2",
                "IOT_WINDOW_GRACE_S": "1",
                "IOT_BACKEND_SOURCE_TOPIC": SOURCE,
                "IOT_BACKEND_APP_ID": "fuzz",
                **self.env,
            }
        )
        self.kafka = MemoryKafka(self.settings.place_topic)
        self.start()

    def start(self) -> None:
        s = self.settings
        self.generation = getattr(self, "generation", 0) + 1
        self.tables: list[MemoryTable] = []
        self.batches = Batches(
            s,
            self.sink,  # type: ignore[arg-type]
            _KafkaFacade(self.kafka),  # type: ignore[arg-type]
            BackendMetrics(),
            _Partitions(self),
        )
        self.batches.watermarks.place_partitions = PARTITIONS
        # A landing's error fails the test (at the next batch or drain) instead of being retried.
        self.batches.lander.retry_landings = False
        for name, topic in ((SENSOR, SOURCE), (PLACE, s.place_topic)):
            table = MemoryTable(self.changelogs[name])
            self.tables.append(table)
            engine = ScopeEngine(
                name,
                s.specs,
                s.grace_s * 1000,
                int(s.idle_timeout_s * 1000),
                table.data.get,
                0,
                allowed_lateness_ms=s.allowed_lateness_s * 1000,
                max_clock_ahead_ms=None,
                source_topic=SOURCE,
            )
            self.batches.add_scope(name, topic, table, engine)

    def produce(self, value: bytes | None, key: bytes | None, partition: int | None = None) -> Message:
        if partition is None:
            partition = partition_of(key.decode("utf-8", "replace")) if key is not None else 0
        log = self.log[partition]
        msg = Message(SOURCE, partition, len(log), key, value)
        log.append(msg)
        return msg

    async def crash(self) -> None:
        """kill -9 once the batch in flight's outputs were written: what was not persisted or committed
        is gone; MongoDB and Kafka keep theirs."""
        for table in self.tables:
            table.dead = True
        generation = self.generation
        self.generation = -1  # acks of the dead process are lost
        await self.batches.landings.drain()
        self.generation = generation
        self.start()

    def ack(self, topic: str, messages: Iterable[Message]) -> None:
        """The agent's ack: the batch's offsets may be committed (in order: landings are)."""
        for msg in messages:
            key = (topic, msg.partition)
            assert self.committed.get(key, 0) == msg.offset, "acked out of order"
            self.committed[key] = msg.offset + 1

    def run(self, crash_after: int | None = None) -> None:
        """Process every uncommitted record of both scopes; with `crash_after`, crash once after that
        many batches (outputs written, offsets not committed)."""
        asyncio.run(self._run(crash_after))

    async def _run(self, crash_after: int | None) -> None:
        done = 0
        taken = dict(self.committed)  # what was handed to the agents (committed lags by a landing)
        drained = False
        while True:
            progressed = False
            for name, topic, logs in (
                (SENSOR, SOURCE, self.log),
                (PLACE, self.settings.place_topic, self._place_messages()),
            ):
                scope = self.batches.scopes[name]
                for partition, messages in logs.items():
                    start = taken.get((topic, partition), 0)
                    batch = messages[start : start + self.batch_max]
                    if not batch:
                        continue
                    progressed = True
                    self.now += 100
                    taken[(topic, partition)] = start + len(batch)
                    await self._batch(scope, batch)
                    done += 1
                    if crash_after is not None and done == crash_after:
                        crash_after = None
                        await self.crash()
                        taken = dict(self.committed)
                        break
            if progressed:
                drained = False
            elif drained:
                return
            else:
                # The last landings bring the place scope its input.
                await self.batches.landings.drain()
                drained = True

    async def _batch(self, scope: Scope, messages: list[Message]) -> None:
        # The batch path without `guarded`'s retry: an exception escaping it fails the test.
        topic, generation = messages[0].topic, self.generation

        def ack(acked: Any) -> None:
            if self.generation == generation:
                self.ack(topic, acked)

        await self.batches._batch(scope, messages, ack)

    def _place_messages(self) -> dict[int, list[Message]]:
        topic = self.settings.place_topic
        return {
            p: [Message(topic, p, i, k, v) for i, (k, v) in enumerate(records)]
            for p, records in self.kafka.place_log.items()
        }

    def close_all(self) -> None:
        """Every key idle for long (and the idle timeout past): every window final (the idle timer)."""
        asyncio.run(self._close_all())

    async def _close_all(self) -> None:
        for name in (SENSOR, PLACE):
            scope = self.batches.scopes[name]
            # A key not seen since a restart starts its idle time at the first tick that sees it.
            for tick in (10**13, 2 * 10**13):
                if name == PLACE:
                    # As the idle timer sees them once the idle timeout has passed: a source partition
                    # not read since a restart holds nothing back any more.
                    later = time.monotonic() + self.settings.idle_timeout_s + 1
                    scope.engine.holds = self.batches.watermarks.holds(later)
                await self.batches.expire(scope, tick, set(range(PARTITIONS)), set())
