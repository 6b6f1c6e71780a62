"""A backend started while Kafka or MongoDB does not answer says so within seconds, naming the address
and what to check, and keeps trying with backoff (before: nothing at all in 25 s with Kafka away;
a client's error and exit after 10 s with MongoDB away)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from iot.harness.ports import free_ports
from tests.support import unique, wait_for

from .conftest import KAFKA, MONGO, Worker

pytestmark = pytest.mark.integration


def start(tmp_path: Path, **env: str) -> tuple[Worker, float]:
    port = free_ports(1)[0]
    base = {
        "PATH": "/usr/bin:/bin",
        "IOT_KAFKA_BOOTSTRAP": KAFKA,
        "IOT_MONGO_URI": f"{MONGO}/{unique('rb').replace('-', '_')}",
        "IOT_BACKEND_APP_ID": unique("unreach"),
        "IOT_BACKEND_METRICS_PORT": str(port),
        "IOT_BACKEND_DATA_DIR": str(tmp_path / "data"),
    }
    worker = Worker({**base, **env}, tmp_path / "backend.log")
    worker.start(ready=False)
    return worker, time.monotonic()


def attempts(worker: Worker, event: str) -> list[float]:
    """retry_in_s of each `event` line logged so far."""
    return [float(m) for m in re.findall(rf"{event} .*?retry_in_s=([0-9.]+)", worker.log())]


@pytest.mark.parametrize(
    ("event", "variable", "dead"),
    [
        ("kafka_unreachable", "IOT_KAFKA_BOOTSTRAP", "127.0.0.1:{port}"),
        ("mongodb_unreachable", "IOT_MONGO_URI", "mongodb://127.0.0.1:{port}/x"),
    ],
    ids=["kafka", "mongodb"],
)
def test_a_service_that_does_not_answer_is_named_within_seconds_and_retried(
    tmp_path: Path, event: str, variable: str, dead: str
) -> None:
    nobody = free_ports(1)[0]  # nothing listens there
    worker, started = start(tmp_path, **{variable: dead.format(port=nobody)})
    try:
        wait_for(lambda: worker.alive() and attempts(worker, event), 15, f"{event} in the log")
        assert time.monotonic() - started < 15
        line = next(ln for ln in worker.log().splitlines() if event in ln)
        assert f"127.0.0.1:{nobody}" in line and variable in line and "action=" in line, line
        wait_for(lambda: worker.alive() and len(attempts(worker, event)) >= 2, 20, "a second attempt")
        delays = attempts(worker, event)
        assert delays[1] > delays[0], delays  # backing off
        assert worker.alive()  # waiting, not stopped
    finally:
        worker.stop()
