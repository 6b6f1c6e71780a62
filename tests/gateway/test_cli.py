"""`iot gateway` / `python -m gateway` as a process: config errors, credentials kept out of logs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from iot.broker.credentials import GATEWAY
from tests.accounts import login
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
    # The stack's own gateway account (the broker refuses any other login), given as the variables.
    account = login(GATEWAY)
    assert account is not None, "the stack has no gateway account: `iot stack up` makes it"
    gateway = gateways(**account.as_env(GATEWAY))
    assert gateway.terminate() == 0
    log = gateway.log()
    assert account.username in log
    assert account.password not in log
    assert "mqtt_password=***" in log
