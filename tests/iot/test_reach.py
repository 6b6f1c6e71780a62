"""A service a command needs, down: one line naming it and what to run; librdkafka's own lines go
through our logging at the level we choose instead of to the terminal."""

from __future__ import annotations

import subprocess
import sys

import pytest

from iot.harness.ports import free_ports
from iot.reach import Unreachable, check_kafka, check_mongo, check_tcp

pytestmark = pytest.mark.unit

# A consumer of a Kafka that is not there, logging at the level given, polled until its error
# callback reported a failed connection: librdkafka logs that failure (FAIL) before it queues the
# error, and poll() serves both in that order, so by then the log line has been handled (kept or not).
CLIENT = """
import sys, time
from confluent_kafka import Consumer
from iot import log
from iot.reach import KafkaClientLog
log.setup(sys.argv[2])
failed = []
c = Consumer(
    {"bootstrap.servers": sys.argv[1], "group.id": "g", "error_cb": failed.append}, logger=KafkaClientLog("t")
)
c.subscribe(["iot.readings"])
end = time.monotonic() + 30
while not failed and time.monotonic() < end:
    c.poll(0.2)
sys.exit(0 if failed else 3)
"""


def _client(level: str) -> str:
    (port,) = free_ports(1)
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, f"127.0.0.1:{port}", level],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout + done.stderr


def test_librdkafka_says_nothing_at_info_and_speaks_through_our_log_at_debug() -> None:
    quiet = _client("INFO")
    assert quiet == "", quiet[:2000]  # without the logger: a `%3|…|FAIL|` line per reconnect
    loud = _client("DEBUG").splitlines()
    # librdkafka's error (%3|…|FAIL|), logged at the level we chose with its own severity kept.
    fails = [line for line in loud if "severity=ERROR" in line and "Connection refused" in line]
    assert fails and all(" DEBUG t.librdkafka kafka_client_log " in line for line in fails)
    assert not any(line.startswith("%") for line in loud)


def test_a_service_that_is_down_is_one_line_with_what_to_run() -> None:
    kafka, mongo, mqtt = free_ports(3)
    for check, name, port in (
        (lambda: check_kafka(f"127.0.0.1:{kafka}", 2), "Kafka", kafka),
        (lambda: check_mongo(f"mongodb://u:secret@127.0.0.1:{mongo}/iot?authSource=x", 2), "MongoDB", mongo),
        (lambda: check_tcp("MQTT broker", "127.0.0.1", mqtt, 2), "MQTT broker", mqtt),
    ):
        with pytest.raises(Unreachable) as err:
            check()
        text = str(err.value)
        assert text.startswith(f"{name} at 127.0.0.1:{port} does not answer (") and "\n" not in text
        assert text.endswith("run `iot stack up`, or start the compose stack (docs/COMPOSE.md)")
        assert "secret" not in text
