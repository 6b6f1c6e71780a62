"""A gateway that cannot work says so within seconds, names what to check, and never lingers as a
process that looks up and receives nothing (issue #19): a broker or Kafka it cannot reach is logged
with its address and retried; a dead MQTT network thread or a filter the client refuses ends the
process non-zero, so a supervisor starts it again or the operator sees the variable."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.service import EXIT_MQTT_THREAD_DIED
from tests.gateway.conftest import GatewayFactory, GatewayProcess, PrivateBroker, Publisher, free_port
from tests.support import wait_for

pytestmark = pytest.mark.integration


def exit_code(gateway: GatewayProcess, timeout: float) -> int:
    assert gateway.proc is not None
    try:
        return gateway.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the gateway still runs after {timeout}s:\n{gateway.log()[-3000:]}") from None


# A gateway process whose MQTT network thread fails on the first PUBLISH from the board
# `kills-the-thread`. Nothing a board or the broker sends can end that thread any more (every callback
# is guarded and paho 2.2 turns undecodable packets into a protocol error), so the failure is injected
# where paho would raise: a bug of paho's, or ours, that the guards do not see.
_INJECTED = """
import sys
from gateway import paho_client

class InjectedFault(Exception):
    pass

handle = paho_client.BatchingClient._handle_publish

def failing(self):
    if bytes(self._in_packet["packet"]).find(b"/kills-the-thread/") >= 0:
        raise InjectedFault("paho's network thread fails here")
    return handle(self)

paho_client.BatchingClient._handle_publish = failing
from iot.app.cli import main
sys.exit(main(["gateway"]))
"""


class InjectedGateway(GatewayProcess):
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(env, log_path)
        self.argv = [sys.executable, "-c", _INJECTED]


def test_a_dead_mqtt_network_thread_ends_the_process_non_zero(
    gateways: GatewayFactory, publisher: Publisher
) -> None:
    # Before: the thread died, the process lived on with iot_gateway_mqtt_connected 1, for good.
    made = gateways(start=False)
    gateway = InjectedGateway(made.env, made.log_path)
    gateways.made.append(gateway)
    gateway.start()
    publisher.publish_raw(f"sensors/{gateways.place}/kills-the-thread/reading", b"{}")
    assert exit_code(gateway, 20) == EXIT_MQTT_THREAD_DIED
    log = gateway.log()
    assert "thread_crashed" in log and "InjectedFault" in log
    assert "mqtt_thread_died" in log and "supervisor" in log


def test_a_topic_filter_the_client_refuses_stops_the_gateway_naming_the_variable(
    gateways: GatewayFactory,
) -> None:
    # Before: paho raised in on_connect, the network thread died and the process stayed up.
    gateway = gateways(start=False, IOT_GATEWAY_TOPIC_FILTER="sensors/#/reading")
    gateway.start(wait_ready=False)
    assert exit_code(gateway, 20) == 1
    assert "IOT_GATEWAY_TOPIC_FILTER" in gateway.log()


def test_an_unreachable_broker_is_logged_within_seconds_then_reached_when_it_starts(
    gateways: GatewayFactory, tmp_path: Path
) -> None:
    # Before: not one line in 25 s.
    broker = PrivateBroker(tmp_path / "mosquitto")  # its port is chosen, nothing listens on it yet
    gateway = gateways(start=False, IOT_MQTT_URL=broker.url)
    started = time.monotonic()
    gateway.start(wait_ready=False)
    wait_for(lambda: "mqtt_unreachable" in gateway.log(), 10, "mqtt_unreachable in the log")
    assert time.monotonic() - started < 10
    line = next(x for x in gateway.log().splitlines() if "mqtt_unreachable" in x)
    assert f"broker={broker.url}" in line and "IOT_MQTT_URL" in line and "refused" in line.lower()
    assert gateway.metric("iot_gateway_mqtt_connected") == 0.0
    wait_for(lambda: (gateway.metric("iot_gateway_mqtt_connect_failures_total") or 0) >= 2, 15, "retries")
    try:
        broker.start()
        wait_for(lambda: gateway.metric("iot_gateway_mqtt_connected") == 1.0, 30, "connected once it runs")
        assert "mqtt_reachable" in gateway.log()
    finally:
        broker.kill()


def test_an_unreachable_kafka_is_logged_within_seconds_with_its_bootstrap(gateways: GatewayFactory) -> None:
    # Before: the first line came after 10 s (the topic check's timeout).
    bootstrap = f"127.0.0.1:{free_port()}"
    gateway = gateways(start=False, IOT_KAFKA_BOOTSTRAP=bootstrap)
    started = time.monotonic()
    gateway.start(wait_ready=False)
    wait_for(lambda: "kafka_unreachable" in gateway.log(), 10, "kafka_unreachable in the log")
    assert time.monotonic() - started < 8, "not within seconds"
    assert f"bootstrap={bootstrap}" in next(
        x for x in gateway.log().splitlines() if "kafka_unreachable" in x or "topics_unchecked" in x
    )
    assert gateway.alive()
