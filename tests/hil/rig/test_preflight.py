"""A stopped stack meets `iot hil run` and `iot hil check` with one line that names what is down and
what to run, before any board is powered (it was 388 lines of librdkafka's `%3|…|FAIL|` and then a
StackError that never said `iot stack up`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hil import paths
from iot.harness.ports import free_ports

pytestmark = pytest.mark.unit
RIG = paths.REPO / "hil" / "rigs" / "virtual.yaml"


def _iot_hil(*args: str) -> subprocess.CompletedProcess[str]:
    kafka, mongo = free_ports(2)  # nothing listens there: the stack is "down"
    env = {
        **os.environ,
        "IOT_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka}",
        "IOT_MONGO_URI": f"mongodb://127.0.0.1:{mongo}",
    }
    return subprocess.run(
        [sys.executable, "-m", "iot.app.cli", "hil", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=paths.REPO,
        timeout=120,
        check=False,
    )


def test_hil_run_on_a_stopped_stack_says_so_in_one_line(tmp_path: Path) -> None:
    """A bench against the product's services (services: running) needs its broker, Kafka and
    MongoDB; the CI rig (services: start) brings its own broker and Kafka and needs MongoDB."""
    (broker,) = free_ports(1)
    bench = tmp_path / "bench.yaml"
    bench.write_text(
        RIG.read_text()
        .replace("broker: private", f"broker: mqtt://127.0.0.1:{broker}")
        .replace("services: start ", "services: running ")
    )
    done = _iot_hil("run", str(bench), "--report", str(tmp_path / "report"))
    assert done.returncode == 1
    (line,) = (done.stdout + done.stderr).splitlines()  # and nothing of librdkafka's
    assert line.startswith(f"HilError: MQTT broker at 127.0.0.1:{broker}, Kafka at 127.0.0.1:")
    assert ", MongoDB at 127.0.0.1:" in line
    assert line.endswith("do not answer: run `iot stack up`, or start the compose stack (docs/COMPOSE.md)")
    assert not (tmp_path / "report" / "boards").exists(), "no board was made"
    done = _iot_hil("run", str(RIG), "--report", str(tmp_path / "report"))
    (line,) = (done.stdout + done.stderr).splitlines()
    assert line.startswith("HilError: MongoDB at 127.0.0.1:") and "Kafka" not in line


def test_hil_check_names_the_services_that_are_down() -> None:
    done = _iot_hil("check", str(RIG))
    assert done.returncode == 1
    failed = [line for line in done.stdout.splitlines() if "FAILED" in line]
    assert failed[0].startswith("services FAILED: MongoDB at 127.0.0.1:") and "iot stack up" in failed[0]
    assert done.stdout.splitlines()[-1] == "hil check virtual: FAILED (1 problem)"
    assert "%3|" not in done.stdout + done.stderr
