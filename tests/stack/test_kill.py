"""`Stack.kill`: SIGKILL one service of a private stack and bring it back on the same data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from iot.app.stack.private import free_ports, private_services

pytestmark = pytest.mark.integration


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
        status, tls_listener = stack.status(["mosquitto"])
        assert not status.healthy and status.pid is None
        assert not tls_listener.healthy and tls_listener.detail == "not running"
        assert stack.kill("mosquitto") is None
        status, tls_listener = stack.up(["mosquitto"])
        assert status.healthy and status.pid not in (None, pid)
        assert tls_listener.healthy and tls_listener.pid == status.pid
