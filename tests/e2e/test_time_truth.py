"""Bad board clocks through the real gateway and backend (Mosquitto → gateway → Kafka → backend →
MongoDB): a reading dated ten years ahead, once from one board and on every reading of another, is
re-stamped by the gateway with its receive time (time_valid false, the claim kept in device_ts); no
window lands in the future and every other window of the boards and of their place stays exact.

The oracle (tests/backend/conftest.py) runs over the readings as the gateway stamped them: for a
re-stamped reading that is its receive time, which the test checks separately.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest

from iot import contract, readings_store
from iot.app.stack.config import StackConfig
from iot.harness.children import Children
from iot.harness.kafka import commit_end_offsets
from iot.harness.metrics import scrape
from iot.harness.mqtt import MqttLogin
from iot.harness.ports import free_ports
from tests.backend.conftest import (
    GRACE_MS,
    HOPPING_MS,
    STEP_MS,
    TUMBLING_MS,
    as_comparable,
    expected_windows,
    make_reading,
)
from tests.support import wait_for

pytestmark = [pytest.mark.integration]
CFG = StackConfig.from_env()
TEN_YEARS_MS = 10 * 365 * 86_400_000
N = 30  # readings per board


@dataclass
class Run:
    db: Any
    place: str
    good: list[str]
    one_bad: str  # one reading ten years ahead
    all_bad: str  # every reading ten years ahead
    claims: dict[tuple[str, int], int]  # (device, seq) -> the ts the board claimed
    gateway_metrics: str

    @property
    def devices(self) -> list[str]:
        return [*self.good, self.one_bad, self.all_bad]


def _publish(readings: list[dict[str, Any]]) -> None:
    client = MqttLogin.from_env().client()
    try:
        infos = [
            client.publish(contract.reading_topic(r["place"], r["device"]), contract.encode(r), qos=1)
            for r in readings
        ]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tag = f"tt{uuid.uuid4().hex[:8]}"
    tmp: Path = tmp_path_factory.mktemp(tag)
    place = f"{tag}-place"
    good = [f"{tag}-good0", f"{tag}-good1"]
    one_bad, all_bad = f"{tag}-onebad", f"{tag}-allbad"
    gw_port, be_port = free_ports(2)
    env = {
        "IOT_MQTT_URL": CFG.mqtt_url,
        "IOT_KAFKA_BOOTSTRAP": CFG.kafka_bootstrap,
        "IOT_MONGO_URI": f"mongodb://{CFG.host}:{CFG.mongo_port}/{tag}",
        "IOT_WINDOW_TUMBLING_S": str(TUMBLING_MS // 1000),
        "IOT_WINDOW_HOPPING_S": str(HOPPING_MS // 1000),
        "IOT_WINDOW_HOP_STEP_S": str(STEP_MS // 1000),
        "IOT_WINDOW_GRACE_S": str(GRACE_MS // 1000),
        "IOT_GATEWAY_GROUP": tag,
        "IOT_GATEWAY_CLIENT_ID": f"{tag}-gw",
        "IOT_GATEWAY_TOPIC_FILTER": contract.reading_topic(place, "+"),
        "IOT_BACKEND_APP_ID": tag,
        "IOT_BACKEND_IDLE_TIMEOUT_S": "2",
        "IOT_BACKEND_DATA_DIR": str(tmp / "backend"),
    }
    children = Children(tmp / "logs")
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(CFG.host, CFG.mongo_port, tz_aware=True)
    gateway_metrics = f"http://127.0.0.1:{gw_port}/metrics"
    try:
        children.start_gateway("gateway", env, gw_port)
        commit_end_offsets(CFG.kafka_bootstrap, tag, contract.TOPIC_READINGS)
        children.start_backend("backend", env, be_port)
        # Real, recent event time (the gateway compares ts with its clock): the last N seconds.
        now = int(time.time() * 1000)
        t0 = now - N * 1000
        claims: dict[tuple[str, int], int] = {}
        readings = []
        for k in range(N):
            for dev in [*good, one_bad, all_bad]:
                r = make_reading(place, dev, k, t0 + k * 1000)
                if dev == all_bad or (dev == one_bad and k == N // 2):
                    r["ts"] += TEN_YEARS_MS
                    claims[(dev, k)] = r["ts"]
                readings.append(r)
        _publish(readings)
        out = Run(client[tag], place, good, one_bad, all_bad, claims, gateway_metrics)
        coll = readings_store.collection(out.db)
        counts: list[int] = []

        def stored() -> bool:
            # The backend reads the shared iot.readings: other runs' readings land in this database
            # too; only this run's boards are counted and compared.
            counts.append(readings_store.count(coll, out.devices))
            return counts[-1] == len(readings)

        try:
            wait_for(stored, 90, f"{len(readings)} readings stored")
        except AssertionError as exc:
            raise AssertionError(f"{exc} (stored: {counts[-1]}; see {tmp / 'logs'})") from None
        yield out
    finally:
        children.stop_all()
        client.drop_database(tag)
        client.close()


def _stored(run: Run) -> list[dict[str, Any]]:
    """The readings as the gateway stamped them, ts back to epoch ms for the oracle."""
    out = []
    for d in readings_store.readings(readings_store.collection(run.db), run.devices):
        r = {k: v for k, v in d.items() if k != "_id"}
        r["ts"] = int(d["ts"].timestamp() * 1000)
        r["received_at"] = int(d["received_at"].timestamp() * 1000)
        out.append(r)
    return out


def test_readings_ten_years_ahead_are_restamped_with_receive_time_and_keep_the_claim(run: Run) -> None:
    stored = {(r["device"], r["seq"]): r for r in _stored(run)}
    for key, claim in run.claims.items():
        r = stored[key]
        assert r["time_valid"] is False and r["device_ts"] == claim and r["ts"] == r["received_at"], key
    others = [r for key, r in stored.items() if key not in run.claims]
    assert others and all(r["time_valid"] and "device_ts" not in r for r in others)
    m = scrape(run.gateway_metrics)
    counted = {
        dev: m.get(f'iot_gateway_clock_ahead_total{{device="{dev}",place="{run.place}"}}', 0)
        for dev in run.devices
    }
    assert counted == {run.good[0]: 0, run.good[1]: 0, run.one_bad: 1, run.all_bad: N}


@pytest.mark.parametrize("scope", ["sensor", "place"])
def test_every_window_of_the_boards_and_their_place_is_exact_and_none_in_the_future(
    run: Run, scope: str
) -> None:
    coll = contract.COLL_SENSOR_WINDOWS if scope == "sensor" else contract.COLL_PLACE_WINDOWS
    want = expected_windows(_stored(run), scope)

    def all_final() -> bool:
        return run.db[coll].count_documents({"_id": {"$in": list(want)}, "final": True}) == len(want)

    wait_for(all_final, 90, f"{len(want)} final {scope} windows", interval=0.3)
    mine = {"device": {"$in": run.devices}} if scope == "sensor" else {"place": run.place}
    got = {d["_id"]: as_comparable(d) for d in run.db[coll].find(mine)}
    assert got == want
    horizon = int(time.time() * 1000) + 86_400_000
    assert all(d["start"] < horizon for d in got.values())
    # The board with one bad reading kept all its other readings in their own windows.
    if scope == "sensor":
        one_bad_total = sum(
            d["count"] for d in got.values() if d["device"] == run.one_bad and d["kind"] == "tumbling"
        )
        assert one_bad_total == N


def test_no_reading_went_to_the_dlq_as_late(run: Run) -> None:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": CFG.kafka_bootstrap, "group.id": f"tt-{uuid.uuid4().hex}"})
    try:
        meta = consumer.list_topics(contract.TOPIC_DLQ, timeout=10).topics[contract.TOPIC_DLQ]
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(contract.TOPIC_DLQ, p), timeout=10)
            for p in meta.partitions
        }
        starts = [TopicPartition(contract.TOPIC_DLQ, p, max(lo, hi - 5000)) for p, (lo, hi) in ends.items()]
        consumer.assign(starts)
        topics = {contract.reading_topic(run.place, d) for d in run.devices}
        mine = []
        pending = {tp.partition for tp in starts if ends[tp.partition][1] > tp.offset}
        deadline = time.monotonic() + 20
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            record = json.loads(msg.value() or b"{}")
            if record.get("topic") in topics:
                mine.append(record)
            part, offset = msg.partition(), msg.offset()
            if part is not None and offset is not None and offset + 1 >= ends[part][1]:
                pending.discard(part)
        assert not pending, "could not read the DLQ to its end"
    finally:
        consumer.close()
    assert mine == []
