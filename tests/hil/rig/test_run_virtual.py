"""`iot hil run` on the shipped CI rig (hil/rigs/virtual.yaml, its timings cut short), through the real
CLI, against the native stack, beside the product's backend running on the same stack; then that
neither reached the other, and what its JUnit XML and JSON run record say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from hil import paths
from iot import contract, readings_store
from iot.harness import payloads
from iot.harness.children import Children, run
from iot.harness.kafka import commit_end_offsets
from iot.harness.ports import free_ports

pytestmark = [pytest.mark.hil, pytest.mark.integration]
RIG = paths.REPO / "hil" / "rigs" / "virtual.yaml"
# The short cut: the same scenarios and steps, the 60 s outage and two waits shorter.
SHORTER = {"cut_network": 10}
# Waits no check needs at full length, by scenario. The waits after a fault stay: readings of the 10 s
# after one are left out of the latency check and windows it touched are not demanded
# (hil/rig/checks.py AFTER_FAULT_S), so those 15 s and more are what gives latency samples and clear
# windows to check.
SHORTER_WAITS = {
    "flash_and_verify": 10,  # no fault: 10 s after the flash still give ~10 latency samples, 2 windows
    "device_revoked": 3,  # what the board kept while revoked: expect waits for it (no seq gap) anyway
}
MONGO_URI = os.environ.get("IOT_MONGO_URI", contract.ENV_DEFAULTS["IOT_MONGO_URI"])


def _short_cut(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    raw = yaml.safe_load(RIG.read_text())
    for scenario in raw["scenarios"]:
        for i, step in enumerate(scenario["steps"]):
            if isinstance(step, dict):
                ((name, arg),) = step.items()
                if name in SHORTER and isinstance(arg, (int, float)) and arg > 0:
                    scenario["steps"][i] = {name: min(arg, SHORTER[name])}
                if name == "wait" and isinstance(arg, (int, float)) and scenario["name"] in SHORTER_WAITS:
                    scenario["steps"][i] = {name: min(arg, SHORTER_WAITS[scenario["name"]])}
    # Kept, so the test can see what reached the run's database; dropped by the test.
    raw["stack"]["keep_database"] = True
    path = tmp_path / "virtual-short.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, raw


@dataclass
class Product:
    """The product running on the shared stack beside the rig: its backend (a group and database of
    its own, as `iot backend` would run with its defaults) and readings of a product board going into
    the shared `iot.readings` while the run goes on."""

    tag: str
    db: Any
    device: str
    kafka_start: dict[int, int]
    stop: threading.Event


@pytest.fixture
def product(tmp_path: Path) -> Iterator[Product]:
    tag = f"prod{uuid.uuid4().hex[:6]}"
    bootstrap = os.environ.get("IOT_KAFKA_BOOTSTRAP", contract.ENV_DEFAULTS["IOT_KAFKA_BOOTSTRAP"])
    (metrics_port,) = free_ports(1)
    env = {
        "IOT_KAFKA_BOOTSTRAP": bootstrap,
        "IOT_MONGO_URI": f"{MONGO_URI.rsplit('/', 1)[0]}/{tag}",
        "IOT_BACKEND_APP_ID": tag,
        "IOT_BACKEND_METRICS_PORT": str(metrics_port),
        "IOT_BACKEND_DATA_DIR": str(tmp_path / "product-backend"),
        "IOT_WINDOW_TUMBLING_S": "5",
        "IOT_WINDOW_GRACE_S": "1",
        "IOT_BACKEND_IDLE_TIMEOUT_S": "3",
    }
    start = end_offsets(bootstrap, contract.TOPIC_READINGS)
    commit_end_offsets(bootstrap, tag, contract.TOPIC_READINGS)
    children = Children(tmp_path / "product")
    backend = children.start("backend", ["backend"], env, metrics_port)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(MONGO_URI.rsplit("/", 1)[0])
    stop = threading.Event()
    device = f"{tag}-board"
    producer = Producer({"bootstrap.servers": bootstrap, "log_level": 0})

    def publish() -> None:
        for seq in range(2000):  # at most 2000 s: the run is over long before
            reading = {**payloads.reading("prodplace", device, seq), "received_at": int(time.time() * 1000)}
            producer.produce(contract.TOPIC_READINGS, json.dumps(reading).encode(), key=device.encode())
            producer.flush(5)
            if stop.wait(1.0):  # a production board's 1 Hz pace, not synchronisation
                return

    feeder = threading.Thread(target=publish, daemon=True)
    try:
        backend.wait_ready(backend.answers, 120, "serving metrics")
        feeder.start()
        yield Product(tag, client[tag], device, start, stop)
    finally:
        stop.set()
        if feeder.is_alive():
            feeder.join(10)
        children.stop_all()
        client.drop_database(tag)
        client.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"offsets-{uuid.uuid4().hex}"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        consumer.close()


def devices_in_kafka(bootstrap: str, start: dict[int, int]) -> set[str]:
    """Every device of a record in the shared iot.readings from `start` to its current end."""
    ends = end_offsets(bootstrap, contract.TOPIC_READINGS)
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"scan-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(contract.TOPIC_READINGS, p, o) for p, o in start.items()])
    seen: set[str] = set()
    left = {p: ends[p] for p in start if ends.get(p, 0) > start[p]}
    deadline = time.monotonic() + 60
    try:
        while left and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            seen.add(json.loads(msg.value() or b"{}").get("device", ""))
            if msg.offset() + 1 >= left.get(msg.partition(), 0):
                left.pop(msg.partition(), None)
    finally:
        consumer.close()
    assert not left, f"could not read iot.readings to its end in 60 s: {left}"
    return seen


def _iot_hil(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`iot hil ...`; stopped with SIGTERM if the test ends first, so the rig stops its boards,
    gateway, backend and broker (SIGKILL would leave them running)."""
    return run([sys.executable, "-m", "iot.app.cli", "hil", *args], timeout, cwd=paths.REPO)


@pytest.mark.timeout(900)  # ~4 min alone; the whole suite on 2 shared cores measured past the 300 s default
def test_virtual_rig_passes_every_scenario_on_every_board_and_reports_it(
    tmp_path: Path, product: Product
) -> None:
    rig, raw = _short_cut(tmp_path)
    junit, report = tmp_path / "junit.xml", tmp_path / "report"
    proc = _iot_hil("run", str(rig), "--junit", str(junit), "--report", str(report), timeout=840)
    out = proc.stdout + proc.stderr
    done = report / "run.json"
    run_db = f"hil_{json.loads(done.read_text())['run_id']}" if done.exists() else ""
    try:
        assert proc.returncode == 0, out[-6000:]
        assert "stack private kafka on 127.0.0.1:" in out  # the run's readings never touch the shared one
        _check_apart(raw, product, product.db.client[run_db])
    finally:
        if run_db:
            product.db.client.drop_database(run_db)
    _check_reports(out, raw, junit, report, rig)


def _check_apart(raw: dict[str, Any], product: Product, run_db: Any) -> None:
    """Nothing of the run reached the product (its Kafka topic, its backend's database), nothing of
    the product reached the run (its database), though both ran at once on the same machine."""
    product.stop.set()
    bootstrap = os.environ.get("IOT_KAFKA_BOOTSTRAP", contract.ENV_DEFAULTS["IOT_KAFKA_BOOTSTRAP"])
    run_devices = {r["device"] for r in readings_store.readings(readings_store.collection(run_db))}
    assert run_devices and all(d.startswith("hil-") for d in run_devices), run_devices
    # The product's backend ran all along: the product board's readings are in its database.
    assert readings_store.count(readings_store.collection(product.db), [product.device]) >= 10
    assert readings_store.count(readings_store.collection(product.db), run_devices) == 0
    assert product.db[contract.COLL_SENSOR_WINDOWS].count_documents({"device": {"$regex": "^hil-"}}) == 0
    in_shared_kafka = devices_in_kafka(bootstrap, product.kafka_start)
    assert product.device in in_shared_kafka and not in_shared_kafka & run_devices
    assert readings_store.count(readings_store.collection(run_db), [product.device]) == 0
    places = {b.get("place") for b in raw["boards"]}
    assert set(run_db[contract.COLL_PLACE_WINDOWS].distinct("place")) <= places


def _check_reports(out: str, raw: dict[str, Any], junit: Path, report: Path, rig: Path) -> None:
    boards = [b["id"] for b in raw["boards"]]
    scenarios = [s["name"] for s in raw["scenarios"]]
    assert f"scenario 1/{len(scenarios)} flash_and_verify" in out and "hil run " in out  # progress as it goes
    suite = ET.parse(junit).getroot()
    cases = suite.findall("testcase")
    assert sorted((c.get("name"), c.get("classname")) for c in cases) == sorted(
        (s, f"hil.virtual.{b}") for s in scenarios for b in boards
    )
    assert suite.get("failures") == "0" and suite.get("skipped") == "0"
    first_update = min(i for i, s in enumerate(scenarios) if s.startswith("ota_"))
    for case in cases:
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        # What the board ran at the end of the scenario: the flashed version until the first update,
        # then newer ones (an update is one patch up; a rollback or a refusal keeps what it ran).
        version = tuple(int(p) for p in props["firmware_version"].split("."))
        flashed = tuple(int(p) for p in raw["firmware"]["version"].split("."))
        if scenarios.index(str(case.get("name"))) < first_update:
            assert version == flashed, props
        else:
            assert version > flashed, props
        assert props["board_id"] in boards and props["port"].endswith("/tty")

    record = json.loads((report / "run.json").read_text())
    assert record["summary"] == {"passed": len(boards) * len(scenarios), "failed": 0, "skipped": 0}
    for case in record["cases"]:
        assert all(s["outcome"] == "passed" and s["ended"] >= s["started"] for s in case["steps"])
        assert case["console"], f"no console log for {case['board']} {case['scenario']}"
        expect = [s for s in case["steps"] if s["name"] == "expect"][-1]
        measured = {m["name"]: m for m in expect["measurements"]}
        # Every reading published reached Kafka and MongoDB once; no seq went missing; no (device, boot,
        # seq) was used for two readings (across the updates too).
        for name in ("missing_in_kafka", "missing_in_mongo", "seq_gaps", "ids_reused"):
            assert measured[name]["value"] == 0 and measured[name]["limit"] == 0
        assert measured["readings_published"]["value"] >= 5
        assert measured["mongo_copies_max"]["value"] == 1
        assert all(m["outcome"] == "passed" for m in measured.values())
        if expect["args"]["windows"]:  # (the fleet scenarios check delivery only: windows: false)
            assert any(n.startswith("window_mean_error_") for n in measured), measured.keys()
    outage = next(c for c in record["cases"] if c["scenario"] == "outage_60s")
    assert [s["name"] for s in outage["steps"]][:1] == ["cut_network"]
    assert 9 <= outage["steps"][0]["ended"] - outage["steps"][0]["started"] < 20
    assert {e["kind"] for e in record["events"]} >= {"reading", "window", "fault", "step"}
    assert "<svg" in (report / "report.html").read_text()
    # What ran where, a plot of each board against its scripted environment, its console as a file.
    assert record["meta"]["rig_file"] == str(rig) and record["meta"]["host"] and record["meta"]["commit"]
    assert suite.get("timestamp") and suite.get("hostname") == record["meta"]["host"]
    for series in record["series"]:
        for metric in ("temperature", "humidity", "pressure", "luminosity"):
            assert len(series["readings"][metric]) >= 20 and series["windows"][metric]
            assert len(series["expected"][metric]) >= len(series["readings"][metric])  # nulls in faults
        assert (report / "console" / f"{series['board']}.log").read_text().strip()
    fault = next(c for c in record["cases"] if c["scenario"] == "sensor_fault_and_environment")
    assert any(s["args"] == {"sensor": "bme280", "kind": "nack", "seconds": 8} for s in fault["steps"])


@pytest.mark.timeout(400)
def test_a_board_failing_a_step_is_broken_and_its_later_scenarios_are_skipped(tmp_path: Path) -> None:
    rig = tmp_path / "rig.yaml"
    rig.write_text(
        yaml.safe_dump(
            {
                "rig": "breaks",
                "stack": {"broker": "private", "services": "start"},
                "firmware": {"version": "0.0.0-not-this-one"},
                "board_config": {"interval_s": 1, "health_every_s": 2},
                "boards": [{"id": "a", "place": "kitchen"}],
                "scenarios": [
                    {"name": "verify", "steps": ["verify_version"]},
                    {"name": "later", "steps": [{"wait": 1}]},
                ],
            }
        )
    )
    proc = _iot_hil("run", str(rig), "--report", str(tmp_path / "r"), timeout=360)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cases = {c["scenario"]: c for c in json.loads((tmp_path / "r" / "run.json").read_text())["cases"]}
    assert cases["verify"]["outcome"] == "failed"
    assert "0.0.0-not-this-one" in cases["verify"]["detail"]
    assert cases["later"]["outcome"] == "skipped" and "broken earlier" in cases["later"]["detail"]
    junit = ET.parse(tmp_path / "r" / "junit.xml").getroot()
    assert junit.get("failures") == "1" and junit.get("skipped") == "1"
    # The run's own database is gone with it (a failed run too: the report holds what it measured).
    run_id = json.loads((tmp_path / "r" / "run.json").read_text())["run_id"]
    assert f"stack dropped database hil_{run_id}" in proc.stdout + proc.stderr
    with pymongo.MongoClient(MONGO_URI, serverSelectionTimeoutMS=10_000) as mongo:
        assert f"hil_{run_id}" not in mongo.list_database_names()
