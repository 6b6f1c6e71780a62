"""Helpers for backend tests on the real stack: spawn `iot backend` workers on a private source topic
and Mongo database, produce readings the way the gateway does, read back windows, DLQ and metrics.

Isolation from other engineers' concurrent tests: every test gets its own Faust app id (so its own
consumer group, changelogs and repartition topic), its own source topic (so a fresh group reading from
the earliest offset sees only this test's readings) and its own Mongo database; shared output topics
(iot.windows.*, iot.readings.dlq) are read from their end at test start and filtered by our own ids.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from pymongo import MongoClient

from iot import contract
from iot.harness import oracle
from iot.harness.children import run
from iot.harness.oracle import as_comparable
from iot.harness.payloads import varied
from iot.harness.ports import free_port
from iot.kafka import KafkaConnection
from iot.topics import TOPIC_PARTITIONS, TopicAdmin, TopicSpec
from tests.services import IOT, REPO, ServiceProcess
from tests.support import failed, unique, wait_for

KAFKA = contract.ENV_DEFAULTS["IOT_KAFKA_BOOTSTRAP"]
# The server of IOT_MONGO_URI (its database part is replaced by one per test).
MONGO = os.environ.get("IOT_MONGO_URI", contract.ENV_DEFAULTS["IOT_MONGO_URI"]).rsplit("/", 1)[0]
PARTITIONS = TOPIC_PARTITIONS[contract.TOPIC_READINGS]
# Each window scope and the collection its documents go to.
SCOPES = (("sensor", contract.COLL_SENSOR_WINDOWS), ("place", contract.COLL_PLACE_WINDOWS))

# Small windows so a test sees many of them finalise in seconds.
TUMBLING_MS, HOPPING_MS, STEP_MS, GRACE_MS, IDLE_MS = 2000, 4000, 2000, 2000, 2000
# A fixed event-time origin, aligned to every window: event time in these tests never depends on now.
BASE_TS = 1_750_000_000_000 - 1_750_000_000_000 % HOPPING_MS


def make_reading(place: str, device: str, seq: int, ts: int, boot: int = 0, **metrics: Any) -> dict[str, Any]:
    """A reading whose metrics vary with seq, so means, minima and maxima are not trivial."""
    return varied(place, device, seq, ts, boot, **metrics)


class Worker(ServiceProcess):
    """One `iot backend` worker; ready once its metrics endpoint answers."""

    command = "backend"
    port_variable = "IOT_BACKEND_METRICS_PORT"

    def start(self, ready: bool = True) -> Worker:
        """Start it and, unless told not to, wait until its metrics endpoint answers."""
        super().start()
        if not ready:
            return self
        self.wait_ready(self.answers, 60, f"backend worker metrics on :{self.metrics_port}")
        return self


@dataclass
class BackendRig:
    """One test's backend deployment: app id, source topic, database, workers, and readers of outputs."""

    tmp: Path
    app_id: str = field(default_factory=lambda: unique("bk"))
    workers: list[Worker] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    # The stack's MongoDB server, or a private one a test may stop (iot.app.stack.private).
    mongo_server: str = MONGO

    def __post_init__(self) -> None:
        self.source = f"{self.app_id}-src"
        self.db_name = self.app_id.replace("-", "_")
        self.mongo: MongoClient[dict[str, Any]] = MongoClient(self.mongo_server, tz_aware=True)
        self.db = self.mongo[self.db_name]
        TopicAdmin(KafkaConnection(KAFKA)).ensure([TopicSpec(self.source, PARTITIONS)])
        # lz4 as the gateway produces by default (IOT_GATEWAY_KAFKA_COMPRESSION): Faust's client must read it.
        self.producer = Producer(
            {"bootstrap.servers": KAFKA, "enable.idempotence": True, "compression.type": "lz4"}
        )
        # Positions of the shared output topics now, so we read only what this test causes.
        self.outputs = {
            t: self._ends(t)
            for t in (contract.TOPIC_DLQ, contract.TOPIC_WINDOWS_SENSOR, contract.TOPIC_WINDOWS_PLACE)
        }

    def _ends(self, topic: str) -> list[TopicPartition]:
        c = Consumer({"bootstrap.servers": KAFKA, "group.id": unique("probe"), "enable.auto.commit": False})
        try:
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            tps = []
            for p in parts:
                _, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                tps.append(TopicPartition(topic, p, high))
            return tps
        finally:
            c.close()

    def env(self, index: int, metrics_port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IOT_")}
        env.update(
            IOT_KAFKA_BOOTSTRAP=KAFKA,
            IOT_MONGO_URI=f"{self.mongo_server}/{self.db_name}",
            IOT_WINDOW_TUMBLING_S=str(TUMBLING_MS // 1000),
            IOT_WINDOW_HOPPING_S=str(HOPPING_MS // 1000),
            IOT_WINDOW_HOP_STEP_S=str(STEP_MS // 1000),
            IOT_WINDOW_GRACE_S=str(GRACE_MS // 1000),
            IOT_BACKEND_APP_ID=self.app_id,
            IOT_BACKEND_SOURCE_TOPIC=self.source,
            IOT_BACKEND_METRICS_PORT=str(metrics_port),
            IOT_BACKEND_IDLE_TIMEOUT_S=str(IDLE_MS / 1000),
            IOT_BACKEND_DATA_DIR=str(self.tmp / f"data-{index}"),
            IOT_BACKEND_TICK_S="0.2",
            IOT_BACKEND_BATCH_WITHIN_MS="50",
            IOT_BACKEND_COMMIT_INTERVAL_S="0.5",
            IOT_BACKEND_SESSION_TIMEOUT_S="6",
            IOT_BACKEND_OPEN_WRITE_S="0.5",
        )
        env.update(self.extra_env)
        return env

    def worker(self, start: bool = True) -> Worker:
        index = len(self.workers)
        port = free_port()
        w = Worker(self.env(index, port), self.tmp / f"backend-{index}.log")
        self.workers.append(w)
        return w.start() if start else w

    def restart(self, w: Worker) -> Worker:
        w.metrics_port = free_port()
        return w.start()

    def produce(self, readings: Iterable[dict[str, Any]], partition_of: dict[str, int] | None = None) -> None:
        """Produce as the gateway does: payload v1 plus received_at, keyed by device."""
        for r in readings:
            value = contract.encode({**r, "received_at": int(time.time() * 1000)})
            if partition_of is None:
                self.producer.produce(self.source, value, r["device"].encode())
            else:
                self.producer.produce(
                    self.source, value, r["device"].encode(), partition=partition_of[r["device"]]
                )
        assert self.producer.flush(30) == 0

    def produce_raw(self, value: bytes, key: bytes = b"junk") -> None:
        self.producer.produce(self.source, value, key)
        assert self.producer.flush(30) == 0

    def end_offsets(self, topic: str) -> int:
        """Messages in a topic so far (sum of high watermarks); 0 if it does not exist yet."""
        c = Consumer({"bootstrap.servers": KAFKA, "group.id": unique("probe"), "enable.auto.commit": False})
        try:
            meta = c.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                return 0
            return sum(
                c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions
            )
        finally:
            c.close()

    def members_with_partitions(self, topic: str | None = None) -> int:
        """Members of this rig's consumer group that own partitions of `topic` (the source topic)."""
        topic = topic or self.source
        admin = AdminClient({"bootstrap.servers": KAFKA})
        desc = admin.describe_consumer_groups([self.app_id])[self.app_id].result(timeout=10)
        return sum(1 for m in desc.members if any(tp.topic == topic for tp in m.assignment.topic_partitions))

    def docs(self, collection: str) -> dict[str, dict[str, Any]]:
        return {d["_id"]: d for d in self.db[collection].find()}

    def read_output(self, topic: str, timeout: float = 5.0) -> list[tuple[bytes, bytes]]:
        """Every (key, value) produced to a shared topic since this rig was made."""
        c = Consumer({"bootstrap.servers": KAFKA, "group.id": unique("reader"), "enable.auto.commit": False})
        try:
            starts = self.outputs[topic]
            ends = {tp.partition: c.get_watermark_offsets(tp, timeout=10)[1] for tp in starts}
            c.assign(starts)
            pending = {tp.partition for tp in starts if ends[tp.partition] > tp.offset}
            out: list[tuple[bytes, bytes]] = []
            deadline = time.monotonic() + timeout
            while pending and time.monotonic() < deadline:
                msg = c.poll(0.5)
                if msg is None or msg.error():
                    continue
                out.append((msg.key() or b"", msg.value() or b""))
                part, offset = msg.partition(), msg.offset()
                if part is not None and offset is not None and offset + 1 >= ends[part]:
                    pending.discard(part)
            return out
        finally:
            c.close()

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.producer.flush(10)
        self.mongo.drop_database(self.db_name)
        self.mongo.close()
        admin = AdminClient({"bootstrap.servers": KAFKA})
        mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(self.app_id)]
        if mine:
            for fut in admin.delete_topics(mine, operation_timeout=30).values():
                with contextlib.suppress(Exception):  # a topic already gone is what we wanted
                    fut.result(timeout=30)


@contextlib.contextmanager
def backend_rig(tmp: Path, request: pytest.FixtureRequest, mongo_server: str = MONGO) -> Iterator[BackendRig]:
    """A rig for one test, closed after it; when the test failed, each worker's counters and log tail."""
    r = BackendRig(tmp, mongo_server=mongo_server)
    yield r
    if failed(request):
        for i, w in enumerate(r.workers):
            counts = {
                k: v for k, v in w.metrics().items() if k.startswith("iot_backend_") and "_created" not in k
            }
            print(f"--- backend worker {i} metrics: {counts}")
            print(f"--- backend worker {i} log (tail) ---\n{w.log()[-8000:]}")
    r.close()


@pytest.fixture
def rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BackendRig]:
    with backend_rig(tmp_path, request) as r:
        yield r


# --- the oracle (iot/harness/oracle.py) with this suite's window sizes ----------------------------
def expected_windows(
    readings: Iterable[dict[str, Any]],
    scope: str,
    tumbling_ms: int = TUMBLING_MS,
    hopping_ms: int = HOPPING_MS,
    step_ms: int = STEP_MS,
) -> dict[str, dict[str, Any]]:
    return oracle.expected_windows(readings, scope, tumbling_ms, hopping_ms, step_ms)


def iot_windows(db_name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`iot windows ARGS` on this suite's database `db_name` of the shared MongoDB, nothing else set."""
    env = {"IOT_MONGO_URI": f"{MONGO}/{db_name}", "PATH": "/usr/bin:/bin"}
    return run([str(IOT), "windows", *args], 60, env=env, cwd=REPO)


def wait_all_final(
    rig: BackendRig, expected: dict[str, dict[str, Any]], collection: str, timeout: float
) -> None:
    def done() -> bool:
        got = rig.docs(collection)
        return all(i in got and got[i]["final"] for i in expected)

    wait_for(done, timeout, f"{len(expected)} final documents in {collection}", interval=0.2)


def assert_windows_equal(rig: BackendRig, expected: dict[str, dict[str, Any]], collection: str) -> None:
    got = {i: as_comparable(d) for i, d in rig.docs(collection).items()}
    assert set(got) == set(expected), f"extra {set(got) - set(expected)}, missing {set(expected) - set(got)}"
    for i, doc in expected.items():
        assert got[i] == doc, f"{collection} {i}"


def assert_results_of_one_run(rig: BackendRig, readings: list[dict[str, Any]], timeout: float) -> None:
    """Every sensor and place window of `readings` final (within `timeout` each) and equal to the oracle's:
    what one clean run over them gives, whatever happened to the workers on the way."""
    for scope, collection in SCOPES:
        expected = expected_windows(readings, scope)
        wait_all_final(rig, expected, collection, timeout)
        assert_windows_equal(rig, expected, collection)
