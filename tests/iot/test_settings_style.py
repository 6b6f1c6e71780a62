"""One settings style: every variable declared once (name, default, what it does), read by one reader,
listed by each command's --help with its default; secrets never shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backend.cli import WINDOWS_VARIABLES
from backend.settings import VARIABLES as BACKEND
from gateway.settings import VARIABLES as GATEWAY
from hil.fleet import VARIABLES as BOARDS
from hil.rig.spec import VARIABLES as RIG
from iot import contract
from iot.app.cli import main
from iot.app.stack.config import VARIABLES as STACK
from iot.env import CONTRACT, EnvReader, Secret, Var, Variables, with_database
from iot.errors import ConfigError

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
COMMANDS = {
    ("gateway",): GATEWAY,
    ("backend",): BACKEND,
    ("windows",): WINDOWS_VARIABLES,
    ("stack",): STACK,
    ("boards",): BOARDS,
    ("hil", "run"): RIG,
}


def test_a_variable_read_anywhere_is_declared_for_a_command() -> None:
    declared = set(Variables(*COMMANDS.values()).names())
    read = set()
    # The product's commands (bench/ scripts take their own options, and the product's variables for
    # the services they start).
    for folder in ("gateway", "backend", "iot", "hil"):
        for path in (REPO / folder).rglob("*.py"):
            read |= set(re.findall(r"\bIOT_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    # IOT_SCRIPT is a constant (the `iot` console script's path), not a variable.
    assert sorted(read - declared - {"IOT_SCRIPT"}) == []


def test_commands_sharing_a_variable_share_its_one_declaration() -> None:
    Variables(*COMMANDS.values())  # raises when two commands declare one name differently


def test_the_contract_variables_take_their_defaults_from_the_contract() -> None:
    assert {v.name: v.default for v in CONTRACT} == dict(contract.ENV_DEFAULTS)
    for variables in COMMANDS.values():
        for var in variables:
            if var.name in contract.ENV_DEFAULTS:
                assert var.default == contract.ENV_DEFAULTS[var.name]


@pytest.mark.parametrize("command", list(COMMANDS), ids=" ".join)
def test_help_lists_every_variable_with_its_default(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for var in COMMANDS[command]:
        assert f"{var.name} ({var.display_default()})" in text


def test_a_default_is_written_once() -> None:
    reader = Variables(Var("IOT_X", "5", "x")).reader({})
    assert reader.integer("IOT_X") == 5
    assert reader.integer("IOT_X", 5) == 5  # the same value is no second default
    with pytest.raises(AssertionError, match="declared default"):
        reader.integer("IOT_X", 6)


def test_blank_counts_as_unset_and_errors_name_the_variable() -> None:
    reader = EnvReader({"IOT_WINDOW_GRACE_S": "  ", "IOT_WINDOW_TUMBLING_S": "soon"})
    assert reader.integer("IOT_WINDOW_GRACE_S") == 10
    with pytest.raises(ConfigError) as info:
        reader.integer("IOT_WINDOW_TUMBLING_S")
    assert info.value.field == "IOT_WINDOW_TUMBLING_S"
    assert str(info.value) == "IOT_WINDOW_TUMBLING_S: 'soon' is not an integer"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("sensors/+/+/reading", True),
        ("sensors/#", True),
        ("sensors/kitchen/+/reading", True),
        ("sensors/#/reading", False),
        ("sensors/a#", False),
        ("sensors/a+/reading", False),
        ("sensors/\x00", False),
    ],
)
def test_an_mqtt_filter_is_checked_as_a_broker_would(value: str, ok: bool) -> None:
    reader = EnvReader({"F": value})
    if ok:
        assert reader.mqtt_filter("F", "x") == value
    else:
        with pytest.raises(ConfigError, match=r"^F: "):
            reader.mqtt_filter("F", "x")


@pytest.mark.parametrize(
    "value",
    ["mongodb://127.0.0.1:abc/iot", "mongodb://h:99999/iot", "postgres://h/iot", "mongodb+srv://h:27017/iot"],
)
def test_a_mongo_uri_is_checked_without_connecting(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^IOT_MONGO_URI: "):
        EnvReader({"IOT_MONGO_URI": value}).mongo_uri()


def test_a_mongo_uri_error_never_shows_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        EnvReader({"IOT_MONGO_URI": "mongodb://user:hunter2@h:x/iot"}).mongo_uri()
    assert "hunter2" not in str(info.value)


def test_a_run_database_replaces_the_uri_database_and_keeps_the_rest() -> None:
    assert (
        with_database("mongodb://u:p@h:1/iot?authSource=admin", "hil_1")
        == "mongodb://u:p@h:1/hil_1?authSource=admin"
    )
    assert with_database("mongodb://h:1", "hil_1") == "mongodb://h:1/hil_1"


def test_a_secret_never_prints_itself() -> None:
    secret = EnvReader({"IOT_MQTT_PASSWORD": "hunter2"}).secret("IOT_MQTT_PASSWORD")
    assert secret == Secret("hunter2")
    assert "hunter2" not in f"{secret} {secret!r} {[secret]}"
    assert secret is not None and secret.reveal() == "hunter2"
