"""`iot gateway` / `python -m gateway` as a process: config errors, credentials kept out of logs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.gateway.conftest import GatewayFactory
from tests.services import IOT, REPO


def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.unit
def test_invalid_setting_exits_1_naming_the_variable() -> None:
    result = _run([str(IOT), "gateway"], IOT_GATEWAY_MAX_IN_FLIGHT="lots")
    assert result.returncode == 1
    assert "SettingsError: IOT_GATEWAY_MAX_IN_FLIGHT" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.unit
def test_python_dash_m_gateway_runs_the_same_command() -> None:
    result = _run([sys.executable, "-m", "gateway"], IOT_MQTT_URL="ftp://nowhere")
    assert result.returncode == 1
    assert "SettingsError: IOT_MQTT_URL" in result.stderr


@pytest.mark.integration
def test_mqtt_and_kafka_secrets_never_appear_in_the_log(gateways: GatewayFactory) -> None:
    gateway = gateways(IOT_MQTT_USERNAME="gateway-user", IOT_MQTT_PASSWORD="s3cret-mqtt-pw")
    assert gateway.terminate() == 0
    log = gateway.log()
    assert "gateway-user" in log
    assert "s3cret-mqtt-pw" not in log
    assert "mqtt_password=***" in log
