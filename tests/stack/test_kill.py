"""`iot stack kill`: SIGKILL one service of a private stack and bring it back on the same data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from iot.harness.ports import free_ports
from iot.harness.stack import private_services

pytestmark = pytest.mark.integration


def _rows(rows: list[dict[str, Any]], *names: str) -> list[dict[str, Any]]:
    return [next(r for r in rows if r["name"] == name) for name in names]


def test_kill_sigkills_one_service_and_up_brings_it_back(tmp_path: Path) -> None:
    mqtt, mqtts = free_ports(2)
    variables = {"IOT_MQTT_URL": f"mqtt://127.0.0.1:{mqtt}", "IOT_MQTT_TLS_PORT": str(mqtts)}
    with private_services(tmp_path / "stack", ["mosquitto"], variables) as stack:
        pid = stack.pid("mosquitto")
        assert pid is not None
        assert stack.kill("mosquitto") == pid
        assert not os.path.exists(f"/proc/{pid}/cmdline") or b"mosquitto" not in Path(
            f"/proc/{pid}/cmdline"
        ).read_bytes()
        status, tls_listener = _rows(stack.status(), "mosquitto", "mosquitto-tls")
        assert not status["healthy"] and status["pid"] is None
        assert not tls_listener["healthy"] and tls_listener["detail"] == "not running"
        assert stack.kill("mosquitto") is None
        stack.up(["mosquitto"])
        status, tls_listener = _rows(stack.status(), "mosquitto", "mosquitto-tls")
        assert status["healthy"] and status["pid"] not in (None, pid)
        assert tls_listener["healthy"] and tls_listener["pid"] == status["pid"]
