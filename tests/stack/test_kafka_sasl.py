"""Kafka's SASL_SSL listener (IOT_KAFKA_SASL_PORT, SCRAM-SHA-512 over TLS with the stack's CA) and
the product's clients on it: a gateway and a backend configured only with the listener's client
variables (<state>/kafka/sasl-client.env) carry readings from MQTT to MongoDB, every Kafka connection
they hold goes to the SASL_SSL port, and a wrong password stops each with one line naming the variable.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pymongo import MongoClient

from iot import contract, readings_store
from iot.app.stack.config import StackConfig
from iot.app.stack.manager import Stack
from iot.app.stack.services import sasl_connection, sasl_env_file
from iot.harness import payloads
from iot.harness.ports import free_ports
from iot.harness.stack import private_services
from iot.kafka import KafkaConnection
from tests.accounts import log_in
from tests.services import IOT, REPO, ServiceProcess
from tests.support import unique, wait_for

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
SHARED_MQTT = contract.ENV_DEFAULTS["IOT_MQTT_URL"]
SHARED_MONGO = contract.ENV_DEFAULTS["IOT_MONGO_URI"].rsplit("/", 1)[0]
READINGS = 40


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A Kafka of its own with the SASL_SSL listener beside the plain one (the stack's probes and topic
    creation use the plain one; the product's clients below never do)."""
    plain, controller, sasl = free_ports(3)
    variables = {
        "IOT_KAFKA_BOOTSTRAP": f"{HOST}:{plain}",
        "IOT_KAFKA_CONTROLLER_PORT": str(controller),
        "IOT_KAFKA_SASL_PORT": str(sasl),
        "IOT_KAFKA_HEAP": "256m",
    }
    with private_services(tmp_path_factory.mktemp("sasl") / "stack", ["kafka"], variables) as private:
        yield Stack(StackConfig.from_env(private.env))


def client_env(stack: Stack, **over: str) -> dict[str, str]:
    """The environment a user gives a service for the SASL listener: the stack's client variables
    file, and nothing else of Kafka's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOT_KAFKA_")}
    for line in sasl_env_file(stack.cfg).read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not name.startswith("#"):
            env[name] = value
    env.update(over)
    return env


class Service(ServiceProcess):
    def __init__(self, command: str, port_variable: str, env: dict[str, str], log_path: Path) -> None:
        self.command, self.port_variable = command, port_variable
        super().__init__(env, log_path)


def kafka_peer_ports(pid: int) -> set[int]:
    """The remote ports of a process's established TCP connections (its sockets' inodes looked up in
    /proc/net/tcp of its network namespace)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        found = re.fullmatch(r"socket:\[(\d+)\]", target)
        if found:
            inodes.add(found.group(1))
    ports = set()
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            cols = row.split()
            if cols[9] in inodes and cols[3] == "01":  # 01: ESTABLISHED
                ports.add(int(cols[2].rsplit(":", 1)[1], 16))
    return ports


def publish(place: str, device: str, count: int) -> None:
    client = log_in(mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("pub"), protocol=mqtt.MQTTv5))
    host, port = SHARED_MQTT.removeprefix("mqtt://").rsplit(":", 1)
    client.connect(host, int(port))
    client.loop_start()
    try:
        infos = [
            client.publish(
                contract.reading_topic(place, device),
                contract.encode(payloads.reading(place, device, seq)),
                1,
            )
            for seq in range(count)
        ]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


def test_gateway_and_backend_carry_readings_to_mongodb_only_through_sasl_ssl(
    kafka: Stack, tmp_path: Path
) -> None:
    tag = unique("sasl")
    gw_port, be_port = free_ports(2)
    env = client_env(
        kafka,
        IOT_MQTT_URL=SHARED_MQTT,
        IOT_MONGO_URI=f"{SHARED_MONGO}/{tag.replace('-', '_')}",
        IOT_GATEWAY_CLIENT_ID=tag,
        IOT_GATEWAY_GROUP=tag,
        IOT_GATEWAY_TOPIC_FILTER=f"sensors/{tag}/+/reading",
        IOT_GATEWAY_METRICS_PORT=str(gw_port),
        IOT_GATEWAY_SESSION_EXPIRY_S="60",
        IOT_BACKEND_APP_ID=tag,
        IOT_BACKEND_METRICS_PORT=str(be_port),
        IOT_BACKEND_DATA_DIR=str(tmp_path / "backend"),
    )
    assert env["IOT_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["IOT_KAFKA_BOOTSTRAP"] == f"{HOST}:{kafka.cfg.kafka_sasl_port}"
    gateway = Service("gateway", "IOT_GATEWAY_METRICS_PORT", env, tmp_path / "gateway.log")
    backend = Service("backend", "IOT_BACKEND_METRICS_PORT", env, tmp_path / "backend.log")
    mongo: MongoClient[dict[str, Any]] = MongoClient(env["IOT_MONGO_URI"], serverSelectionTimeoutMS=10_000)
    try:
        gateway.start()
        backend.start()
        gateway.wait_ready(
            lambda: gateway.metric("iot_gateway_mqtt_connected") == 1.0, 60, "gateway connected"
        )
        backend.wait_ready(backend.answers, 120, "backend metrics (topics made and seen over SASL_SSL)")
        publish(tag, "dev-1", READINGS)
        readings = readings_store.collection(mongo.get_default_database())
        wait_for(lambda: readings_store.count(readings) == READINGS, 120, f"{READINGS} readings in MongoDB")
        assert sorted(d["seq"] for d in readings_store.every_copy(readings)) == list(range(READINGS))
        # Where they talk to Kafka: the SASL_SSL listener, never the plain one.
        for service in (gateway, backend):
            assert service.proc is not None
            peers = kafka_peer_ports(service.proc.pid)
            assert kafka.cfg.kafka_sasl_port in peers, (service.command, peers)
            assert kafka.cfg.kafka_port not in peers, (service.command, peers)
        assert gateway.terminate() == 0
        assert backend.terminate() == 0
        password = env["IOT_KAFKA_SASL_PASSWORD"]
        assert password not in gateway.log() + backend.log()
    except BaseException:
        print(f"--- gateway ---\n{gateway.log()[-4000:]}\n--- backend ---\n{backend.log()[-4000:]}")
        raise
    finally:
        gateway.stop()
        backend.stop()
        mongo.drop_database(mongo.get_default_database().name)
        mongo.close()


@pytest.mark.parametrize("command", ["gateway", "backend"])
def test_a_wrong_password_stops_the_service_naming_the_variable(
    kafka: Stack, tmp_path: Path, command: str
) -> None:
    wrong = unique("wrong-password")
    env = client_env(
        kafka,
        IOT_KAFKA_SASL_PASSWORD=wrong,
        IOT_GATEWAY_METRICS_PORT="0",
        IOT_BACKEND_METRICS_PORT="0",
        IOT_BACKEND_DATA_DIR=str(tmp_path / "backend"),
        IOT_GATEWAY_CLIENT_ID=unique("sasl-wrong"),
    )
    result = subprocess.run(
        [str(IOT), command], env=env, cwd=REPO, capture_output=True, text=True, timeout=90, check=False
    )
    output = result.stdout + result.stderr
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert result.returncode == 1, output
    assert last.startswith("KafkaAuthError: IOT_KAFKA_SASL_PASSWORD: "), output
    assert f"IOT_KAFKA_SASL_USERNAME={env['IOT_KAFKA_SASL_USERNAME']}" in last
    assert "Traceback" not in output
    assert wrong not in output


def test_the_stack_reports_the_sasl_listener_and_its_client_variables(kafka: Stack) -> None:
    (row,) = [s for s in kafka.status(["kafka"]) if s.name == "kafka-sasl"]
    assert row.healthy, row.detail
    assert row.port == kafka.cfg.kafka_sasl_port
    env_file = sasl_env_file(kafka.cfg)
    assert env_file.stat().st_mode & 0o077 == 0  # the password's file is its owner's only
    conn = KafkaConnection.from_env(client_env(kafka))
    assert conn == sasl_connection(kafka.cfg)
