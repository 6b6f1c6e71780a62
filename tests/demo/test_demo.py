"""`iot demo` (what `make demo` runs): the whole chain comes up, windows appear, and everything it
started stops again."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pymongo
import pytest

from iot import contract
from iot.app.stack.config import StackConfig
from iot.harness.kafka import commit_end_offsets
from iot.harness.mqtt import MqttLogin
from iot.harness.ports import free_ports, listening
from tests.accounts import remove_boards

pytestmark = [pytest.mark.integration, pytest.mark.hil]
IOT = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "iot")
CFG = StackConfig.from_env()


def test_demo_shows_windows_of_its_boards_and_stops_everything_it_started(tmp_path: Path) -> None:
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
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(CFG.host, CFG.mongo_port)
    try:
        result = subprocess.run(
            [
                IOT,
                "demo",
                "--duration",
                "25",
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
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        log = (CFG.state_dir / "demo" / "demo.log").read_text()
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + log[-3000:]
        assert "first window after" in result.stdout
        # The screen: the last final window with its min–max, each reading counted once.
        assert "final" in result.stdout and "–" in result.stdout
        assert "windowed by the backend" in result.stdout
        # The demo's log lines go to its file, not over the live view.
        assert "INFO" not in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]
        for child in ("boards", "backend", "gateway"):
            assert f"child_stopped child={child} code=0" in log, f"{child} did not stop cleanly"
        assert not listening(gateway_port) and not listening(backend_port), "a demo service still listens"
        windows = client[tag][contract.COLL_SENSOR_WINDOWS]
        final = list(windows.find({"device": {"$regex": "^demo-"}, "final": True}))
        assert {w["device"] for w in final} == {"demo-kitchen-01", "demo-garage-01"}
        assert all(w["count"] > 0 and w["temperature"]["count"] > 0 for w in final)
        places = client[tag][contract.COLL_PLACE_WINDOWS].distinct("place")
        assert set(places) == {"kitchen", "garage"}
    finally:
        client.drop_database(tag)
        client.close()
        MqttLogin.from_env().forget_session(f"{tag}-gw")
        remove_boards(["demo-kitchen-01", "demo-garage-01"])
