"""Where the product finds the operator's and the gateway's passwords, and how it keeps them."""

from __future__ import annotations

from pathlib import Path

import pytest

from iot.broker import credentials
from iot.broker.credentials import GATEWAY, OPERATOR, Credentials
from iot.errors import ConfigError

pytestmark = pytest.mark.unit


def test_the_stack_file_is_written_0600_and_found_when_the_environment_says_nothing(tmp_path: Path) -> None:
    env = {"IOT_STACK_DIR": str(tmp_path)}
    path = credentials.stack_file(env)
    credentials.write_stack_file(
        path, {OPERATOR: Credentials("operator", "op-pw"), GATEWAY: Credentials("gateway", "gw-pw")}
    )
    assert path.stat().st_mode & 0o777 == 0o600
    assert credentials.find(OPERATOR, env) == Credentials("operator", "op-pw", str(path))
    assert credentials.find(GATEWAY, env) == Credentials("gateway", "gw-pw", str(path))
    # The environment wins.
    mine = credentials.find(GATEWAY, {**env, "IOT_MQTT_USERNAME": "gw2", "IOT_MQTT_PASSWORD": "x"})
    assert mine is not None and (mine.username, mine.password) == ("gw2", "x")
    assert credentials.find(OPERATOR, {"IOT_STACK_DIR": str(tmp_path / "none")}) is None


def test_a_credentials_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    credentials.write_stack_file(path, {OPERATOR: Credentials("operator", "op-pw")})
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        credentials.find(OPERATOR, {"IOT_STACK_DIR": str(tmp_path)})


def test_a_password_without_a_user_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="IOT_MQTT_OPERATOR_USERNAME"):
        credentials.find(OPERATOR, {"IOT_MQTT_OPERATOR_PASSWORD": "x"})


def test_passwords_stay_out_of_reprs_and_are_random() -> None:
    login = Credentials("operator", "s3cret-value")
    assert "s3cret-value" not in repr(login) and "s3cret-value" not in str(login)
    passwords = {credentials.new_password() for _ in range(100)}
    assert len(passwords) == 100 and all(len(p) == 32 for p in passwords)
