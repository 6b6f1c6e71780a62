"""`iot demo` (what `make demo` runs): the whole chain comes up, windows appear, and everything it
started stops again."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pymongo
import pytest

from iot import contract
from iot.app.stack.config import StackConfig
from iot.harness import metrics
from iot.harness.kafka import commit_end_offsets
from iot.harness.mqtt import MqttLogin
from iot.harness.ports import free_ports, listening
from tests.accounts import remove_boards
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hil]
IOT = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "iot")
CFG = StackConfig.from_env()
DEVICES = ("demo-kitchen-01", "demo-garage-01")
PLACES = ("kitchen", "garage")
DEMO_LOG = CFG.state_dir / "demo" / "demo.log"


def _demo_log(start: int) -> str:
    """What this demo wrote to its log, which every demo appends to, from byte `start` on."""
    try:
        with DEMO_LOG.open("rb") as f:
            f.seek(start)
            return f.read().decode()
    except FileNotFoundError:
        return ""


def _final_devices(db: Any) -> set[str]:
    windows = db[contract.COLL_SENSOR_WINDOWS]
    return set(windows.distinct("device", {"device": {"$in": list(DEVICES)}, "final": True}))


def _places(db: Any) -> set[str]:
    return set(db[contract.COLL_PLACE_WINDOWS].distinct("place"))


def _service_pid(tag: str, command: str) -> int | None:
    """The pid of this demo's `iot <command>` (its environment carries the test's tag), if it runs."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if command.encode() in argv[1:3] and f"IOT_BACKEND_APP_ID={tag}".encode() in environ:
            return int(proc.name)
    return None


def test_demo_shows_windows_of_its_boards_restarts_a_dead_backend_and_stops_everything_it_started(
    tmp_path: Path,
) -> None:
    tag = f"demo{uuid.uuid4().hex[:8]}"
    gateway_port, backend_port = free_ports(2)
    env = {
        **os.environ,
        # Its own consumer group, database and MQTT session, so the shared stack's history is not replayed.
        "IOT_BACKEND_APP_ID": tag,
        "IOT_MONGO_URI": f"mongodb://{CFG.host}:{CFG.mongo_port}/{tag}",
        "IOT_GATEWAY_GROUP": tag,
        "IOT_GATEWAY_CLIENT_ID": f"{tag}-gw",
        "IOT_GATEWAY_METRICS_PORT": str(gateway_port),
        "IOT_BACKEND_METRICS_PORT": str(backend_port),
        "COLUMNS": "200",
    }
    commit_end_offsets(CFG.kafka_bootstrap, tag, contract.TOPIC_READINGS)
    log_start = DEMO_LOG.stat().st_size if DEMO_LOG.exists() else 0
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(CFG.host, CFG.mongo_port)
    backend = f"http://127.0.0.1:{backend_port}/metrics"
    try:
        demo = subprocess.Popen(
            [
                IOT,
                "demo",
                # A cap only: the test stops the demo as soon as it has seen what it checks.
                "--duration",
                "300",
                "--boards",
                "2",
                "--places",
                "2",
                "--window",
                "4",
                "--hop-window",
                "8",
                "--hop-step",
                "4",
                "--grace",
                "1",
                "--interval",
                "0.5",
                "--keep-stack",
            ],
            env=env,
            # From an empty directory, as on a fresh clone: nothing it needs may be assumed to exist.
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # The backend dies (as its stall watch makes it exit, or the OOM killer): the demo starts it
            # again, as compose's restart policy does, and it windows the boards' readings again.
            first = wait_for(lambda: _service_pid(tag, "backend"), 120, "the demo's backend")
            wait_for(lambda: (metrics.total(backend, "iot_backend_readings_total") or 0) > 0, 90, "readings")
            os.kill(first, signal.SIGKILL)
            wait_for(
                lambda: _service_pid(tag, "backend") not in (None, first), 30, "the backend started again"
            )
            wait_for(
                lambda: (metrics.total(backend, "iot_backend_readings_total") or 0) > 0, 90, "readings again"
            )
            # What the checks below read of the running demo, there before it is stopped (it ran a fixed
            # 45 s, mostly waiting after all of this had happened): a final window of each board in
            # MongoDB, and the screen showing a final window (logged after that update).
            wait_for(lambda: _final_devices(client[tag]) == set(DEVICES), 120, "a final window of each board")
            wait_for(lambda: "demo_first_window" in _demo_log(log_start), 60, "a final window on the screen")
            # Stopped as a service manager stops it: SIGTERM takes Ctrl-C's path (iot/app/demo.py).
            demo.send_signal(signal.SIGTERM)
            stdout, stderr = demo.communicate(timeout=180)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait(10)
        result = subprocess.CompletedProcess(demo.args, demo.returncode, stdout, stderr)
        log = _demo_log(log_start)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + log[-3000:]
        assert "first window after" in result.stdout
        # The screen: the last final window with its min–max, each reading counted once.
        assert "final" in result.stdout and "–" in result.stdout
        assert "windowed by the backend" in result.stdout
        # The demo's log lines go to its file, not over the live view.
        assert "INFO" not in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]
        for child in ("boards", "backend", "gateway"):
            assert f"child_stopped child={child} code=0" in log, f"{child} did not stop cleanly"
        assert 'child_exited child=backend code=-9 reason="killed by SIGKILL"' in log, log[-3000:]
        assert "child_restarted child=backend" in log
        assert not listening(gateway_port) and not listening(backend_port), "a demo service still listens"
        windows = client[tag][contract.COLL_SENSOR_WINDOWS]
        final = list(windows.find({"device": {"$regex": "^demo-"}, "final": True}))
        assert {w["device"] for w in final} == set(DEVICES)
        assert all(w["count"] > 0 and w["temperature"]["count"] > 0 for w in final)
        assert _places(client[tag]) == set(PLACES)
    finally:
        client.drop_database(tag)
        client.close()
        MqttLogin.from_env().forget_session(f"{tag}-gw")
        remove_boards(list(DEVICES))
