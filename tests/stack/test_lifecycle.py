"""`iot stack up/down` on a private stack (own ports and state folder), so the shared one is untouched."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from iot.harness.ports import free_ports, listening
from iot.topics import TOPIC_PARTITIONS

pytestmark = pytest.mark.integration
IOT = str(Path(__file__).resolve().parents[2] / ".venv/bin/iot")


def private_env(state: Path) -> dict[str, str]:
    mqtt, mqtts, kafka, ctrl, mongo, prom, node, fdbg = free_ports(8)
    return {
        **os.environ,
        "IOT_STACK_DIR": str(state),
        "IOT_MQTT_URL": f"mqtt://127.0.0.1:{mqtt}",
        "IOT_MQTT_TLS_PORT": str(mqtts),
        "IOT_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka}",
        "IOT_KAFKA_CONTROLLER_PORT": str(ctrl),
        "IOT_MONGO_URI": f"mongodb://127.0.0.1:{mongo}/iot",
        "IOT_PROMETHEUS_PORT": str(prom),
        "IOT_NODE_EXPORTER_PORT": str(node),
        "IOT_FERRETDB_DEBUG_PORT": str(fdbg),
    }


def ports_of(env: dict[str, str]) -> list[int]:
    return [
        int(env["IOT_MQTT_URL"].rsplit(":", 1)[1]),
        int(env["IOT_MQTT_TLS_PORT"]),
        int(env["IOT_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1]),
        int(env["IOT_KAFKA_CONTROLLER_PORT"]),
        int(env["IOT_MONGO_URI"].rsplit(":", 1)[1].split("/")[0]),
        int(env["IOT_PROMETHEUS_PORT"]),
        int(env["IOT_NODE_EXPORTER_PORT"]),
        int(env["IOT_FERRETDB_DEBUG_PORT"]),
    ]


def iot(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IOT, "stack", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def private(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = private_env(tmp_path / "stack")
    yield env
    iot(env, "down")


def test_up_from_nothing_is_healthy_idempotent_and_down_frees_every_port(private: dict[str, str]) -> None:
    first = iot(private, "up")
    assert first.returncode == 0, first.stderr
    # `up` returned, so a client's very first look at the metadata shows every contract topic with
    # every partition led: a consumer assigning partitions now must not find a topic without any.
    probe = Consumer({"bootstrap.servers": private["IOT_KAFKA_BOOTSTRAP"], "group.id": "lifecycle-probe"})
    try:
        meta = probe.list_topics(timeout=10).topics
    finally:
        probe.close()
    for name, parts in TOPIC_PARTITIONS.items():
        led = [p for p in meta[name].partitions.values() if p.error is None and p.leader >= 0]
        assert len(led) == parts, (name, meta[name].partitions)
    status = iot(private, "status", "--json")
    rows = json.loads(status.stdout)
    assert status.returncode == 0
    assert len(rows) == 6 and all(r["healthy"] for r in rows), rows
    assert [r["name"] for r in rows][:2] == ["mosquitto", "mosquitto-tls"]
    pids = {r["name"]: r["pid"] for r in rows if r["name"] != "mosquitto-tls"}

    second = iot(private, "up")
    assert second.returncode == 0, second.stderr
    assert "service_started" not in second.stderr, "a second up must not start anything"
    again = json.loads(iot(private, "status", "--json").stdout)
    assert {r["name"]: r["pid"] for r in again if r["name"] != "mosquitto-tls"} == pids

    # A changed command line (here the Kafka heap; after a pull, a new FerretDB build) restarts that
    # service alone, rather than leaving the old one running unnoticed.
    third = iot({**private, "IOT_KAFKA_HEAP": "384m"}, "up")
    assert third.returncode == 0, third.stderr
    assert "service_restarting" in third.stderr and "service=kafka" in third.stderr, third.stderr
    assert "-Xms384m" in third.stderr  # the reason names the first argument that changed
    restarted = {r["name"]: r["pid"] for r in json.loads(iot(private, "status", "--json").stdout)}
    assert restarted["kafka"] != pids["kafka"]
    assert {n: p for n, p in restarted.items() if n not in ("kafka", "mosquitto-tls")} == {
        n: p for n, p in pids.items() if n != "kafka"
    }
    pids = {n: p for n, p in restarted.items() if n != "mosquitto-tls"}

    down = iot(private, "down")
    assert down.returncode == 0, down.stderr
    still = [p for p in ports_of(private) if listening(p)]
    assert still == [], f"ports still listening after down: {still}"
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    after = json.loads(iot(private, "status", "--json").stdout)
    assert not any(r["healthy"] for r in after)


def test_port_already_taken_names_the_service_and_starts_nothing(private: dict[str, str]) -> None:
    kafka_port = int(private["IOT_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", kafka_port))
        squatter.listen()
        result = iot(private, "up")
    assert result.returncode == 1
    assert "kafka" in result.stderr and f"port {kafka_port}" in result.stderr
    assert "already in use" in result.stderr
    mqtt_port = int(private["IOT_MQTT_URL"].rsplit(":", 1)[1])
    assert not listening(mqtt_port), "mosquitto was started although the stack could not come up"


def test_service_that_dies_at_start_is_named_with_its_log_and_rolled_back(private: dict[str, str]) -> None:
    # A 1 MB heap is too small for the JVM: Kafka exits at once, after Mosquitto already started.
    env = {**private, "IOT_KAFKA_HEAP": "1m"}
    started = time.monotonic()
    result = iot(env, "up")
    assert result.returncode == 1
    assert "kafka exited during start-up" in result.stderr
    assert "heap" in result.stderr.lower(), "the error should carry the tail of Kafka's log"
    assert time.monotonic() - started < 120
    mqtt_port = int(private["IOT_MQTT_URL"].rsplit(":", 1)[1])
    assert not listening(mqtt_port), "mosquitto was left running after kafka failed"
    pidfiles = list(Path(private["IOT_STACK_DIR"]).glob("*/pid"))
    assert pidfiles == []


def test_bad_port_variable_is_reported_by_name(tmp_path: Path) -> None:
    env = {**os.environ, "IOT_STACK_DIR": str(tmp_path), "IOT_PROMETHEUS_PORT": "ninety"}
    result = iot(env, "status")
    assert result.returncode != 0
    assert "IOT_PROMETHEUS_PORT" in result.stderr
