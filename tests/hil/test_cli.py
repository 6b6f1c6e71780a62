"""`iot boards` and `iot flash`: argument parsing, the flash plan, and a real fleet run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from hil import fleet
from hil.errors import RigConfigError
from hil.probe import Probe, clear_retained
from hil.virtual import vprofile
from iot.app.cli import build_parser, main
from iot.app.stack import tls
from iot.errors import ConfigError
from iot.harness.children import Child
from tests.accounts import remove_boards
from tests.support import unique, wait_for


@pytest.mark.unit
def test_boards_command_parses_count_places_and_interval() -> None:
    args = build_parser().parse_args(["boards", "--count", "20", "--places", "3", "--interval", "2.5"])
    assert (args.count, args.places, args.interval, args.env) == (20, 3, 2.5, "constant")
    assert args.func.__name__ == "run_boards"


@pytest.mark.unit
def test_boards_take_a_micropython_profile_and_an_unknown_one_is_named() -> None:
    assert build_parser().parse_args(["boards"]).profile == vprofile.DEFAULT
    args = build_parser().parse_args(["boards", "--profile", vprofile.OLDEST])
    plans = fleet.plan(2, 1, 2.0, "mqtt://127.0.0.1:1883", prefix="t", profile=args.profile)
    assert {p.spec["profile"] for p in plans} == {"1.22"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["boards", "--profile", "1.19"])
    with pytest.raises(RigConfigError, match="profile"):
        fleet.plan(1, 1, 2.0, "mqtt://127.0.0.1:1883", profile="1.19")


@pytest.mark.unit
def test_flash_command_requires_port_and_config() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["flash", "--port", "/dev/ttyUSB0"])


@pytest.mark.unit
def test_fleet_plan_spreads_boards_over_places_with_distinct_environments() -> None:
    plans = fleet.plan(7, 3, 2.0, "mqtt://127.0.0.1:1883", prefix="t")
    assert [p.place for p in plans] == ["kitchen", "garage", "office"] * 2 + ["kitchen"]
    assert len({p.device for p in plans}) == 7
    temps = {p.place: fleet.expected_values(p.place, 0)["temperature"] for p in plans}
    assert len(set(temps.values())) == 3
    with pytest.raises(RigConfigError, match="places"):
        fleet.plan(2, 3, 2.0, "mqtt://127.0.0.1:1883")
    with pytest.raises(RigConfigError, match="prefix"):  # matched as a whole, line break and all
        fleet.plan(2, 1, 2.0, "mqtt://127.0.0.1:1883", prefix="t\n")


@pytest.mark.unit
def test_day_environment_is_warmest_in_the_afternoon_and_dark_at_night() -> None:
    midnight = 1_800_000_000 - 1_800_000_000 % 86400
    afternoon = fleet.expected_values("office", midnight + 15 * 3600, "day")
    night = fleet.expected_values("office", midnight + 2 * 3600, "day")
    assert afternoon["temperature"] > night["temperature"]
    assert night["luminosity"] == 0.0 and afternoon["luminosity"] > 0


@pytest.mark.unit
def test_flash_dry_run_lists_firmware_and_config_with_main_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "board.json"
    config.write_text(
        json.dumps(
            {"device": "kitchen-1", "place": "kitchen", "mqtt_password": "pw", "mqtt_user": "kitchen-1"}
        )
    )
    assert main(["flash", "--port", "/dev/ttyUSB0", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    copied = [line.split(" -> :")[1] for line in out.splitlines() if line.startswith("would copy")]
    assert copied[-2:] == ["config.json", "main.py"]
    assert {"bme280.py", "bh1750.py", "mqtt.py", "outbox.py", "node.py", "board.py"} <= set(copied)
    assert "board=kitchen-1" in out and "dependencies=none" in out
    assert "pw" not in out.replace("/dev/tty", "")


@pytest.mark.unit
def test_flash_dry_run_with_mpy_copies_compiled_modules_but_main_as_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "board.json"
    config.write_text(json.dumps({"device": "kitchen-1", "place": "kitchen"}))
    assert main(["flash", "--port", "/dev/ttyUSB0", "--config", str(config), "--dry-run", "--mpy"]) == 0
    copied = [line.split(" -> :")[1] for line in capsys.readouterr().out.splitlines() if "would copy" in line]
    assert "node.mpy" in copied and "main.py" in copied and "node.py" not in copied


@pytest.mark.unit
def test_flash_with_a_bad_config_stops_before_copying_and_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "board.json"
    config.write_text(json.dumps({"device": "kitchen-1", "place": "kitchen", "broker": "http://x"}))
    assert main(["flash", "--port", "/dev/ttyUSB0", "--config", str(config), "--dry-run"]) == 1
    captured = capsys.readouterr()
    assert "RigConfigError: field 'broker'" in captured.err
    assert "would copy" not in captured.out


@pytest.mark.hil
@pytest.mark.integration
def test_iot_boards_runs_a_fleet_that_publishes_and_stops_cleanly_on_sigterm(
    tmp_path: Path, broker_url: str
) -> None:
    prefix = unique("vt")
    devices = {p.device for p in fleet.plan(3, 2, 0.5, broker_url, prefix=prefix)}
    with Probe(broker_url, ["sensors/+/+/#"], keep=lambda t: t.split("/")[2] in devices) as probe:
        boards = Child(
            "boards",
            [
                sys.executable,
                "-m",
                "iot.app.cli",
                "boards",
                "--count",
                "3",
                "--places",
                "2",
                "--interval",
                "0.5",
                "--prefix",
                prefix,
                "--state-dir",
                str(tmp_path / "fleet"),
            ],
            tmp_path / "boards.log",
            env=dict(os.environ, IOT_MQTT_URL=broker_url),
        ).start()
        try:
            wait_for(
                lambda: {m.topic.split("/")[2] for m in probe.messages("reading")} == devices,
                30,
                "readings from all 3 boards",
            )
        finally:
            code = boards.stop(30)  # SIGTERM: the fleet stops its boards cleanly
        out = boards.log()
        assert code == 0 and not boards.stopped_by_kill, out
        assert "boards stopped count=3" in out and "failed=none" in out
        offline = wait_for(
            lambda: (
                {m.topic.split("/")[2] for m in probe.messages("status") if m.payload == b"offline"}
                == devices
            ),
            10,
            "offline from every board",
        )
        assert offline
    clear_retained(
        broker_url, [(b.place, b.device) for b in fleet.plan(3, 2, 0.5, broker_url, prefix=prefix)]
    )
    manifest = json.loads((tmp_path / "fleet" / "boards.json").read_text())
    assert {b["device"] for b in manifest} == devices
    # `iot boards` gave them accounts on the stack's broker (its operator is in .stack/credentials.json).
    assert set(remove_boards(devices)) == devices, "a board ran without its account"


@pytest.mark.unit
def test_env_file_overrides_a_place_environment_and_bad_profiles_are_named(tmp_path: Path) -> None:
    ramp = {m: {"kind": "constant", "value": 1.0} for m in ("humidity", "pressure", "luminosity")}
    ramp["temperature"] = {"kind": "ramp", "from": 10, "to": 20, "start": 1000, "duration": 100}
    good = tmp_path / "env.json"
    good.write_text(json.dumps({"garage": ramp}))
    plans = fleet.plan(2, 2, 1.0, "mqtt://127.0.0.1:1883", environments=fleet.load_environments(good))
    garage = next(p for p in plans if p.place == "garage")
    assert garage.spec["env"]["temperature"]["kind"] == "ramp"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"garage": dict(ramp, pressure={"kind": "ramp", "from": 1})}))
    with pytest.raises(RigConfigError, match=r"'garage'.*pressure"):
        fleet.load_environments(bad)


@pytest.mark.unit
def test_boards_serial_flag_gives_each_board_a_port_in_the_manifest(tmp_path: Path) -> None:
    args = build_parser().parse_args(["boards", "--serial", "--count", "2"])
    assert args.serial is True
    plans = fleet.plan(2, 1, 1.0, "mqtt://127.0.0.1:1883", prefix="t")
    f = fleet.Fleet(tmp_path / "b", plans, serial=True)
    f.prepare(fresh=True)
    manifest = json.loads((tmp_path / "b" / "boards.json").read_text())
    assert [m["port"] for m in manifest] == [str(tmp_path / "b" / p.device / "tty") for p in plans]
    assert all((tmp_path / "b" / p.device / "flash" / "main.py").exists() for p in plans)


# --- the broker of `iot boards` and `iot flash`: IOT_MQTT_URL and IOT_MQTT_TLS_CA, as the gateway -----


def _ca(tmp_path: Path) -> Path:
    return tls.ensure(tmp_path / "tls", ["localhost"]).ca


@pytest.mark.unit
def test_boards_broker_is_plain_by_default_and_tls_with_mqtts_and_a_ca(tmp_path: Path) -> None:
    plain = fleet.Broker.from_env({})
    assert (plain.url, plain.ca, plain.tls_config()) == ("mqtt://127.0.0.1:1883", None, {})
    ca = _ca(tmp_path)
    secure = fleet.Broker.from_env({"IOT_MQTT_URL": "mqtts://localhost", "IOT_MQTT_TLS_CA": str(ca)})
    assert secure.url == "mqtts://localhost:8883" and secure.ca == ca
    assert secure.tls_config() == {"tls_ca_file": fleet.TLS_CA_NAME}
    # As for the gateway, a CA turns TLS on even with an mqtt:// URL.
    with_ca = fleet.Broker.from_env({"IOT_MQTT_URL": "mqtt://h:9000", "IOT_MQTT_TLS_CA": str(ca)})
    assert with_ca.url == "mqtts://h:9000"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"IOT_MQTT_URL": "mqtts://localhost:8883"}, "IOT_MQTT_TLS_CA"),
        ({"IOT_MQTT_URL": "mqtts://localhost", "IOT_MQTT_TLS_CA": "/nonexistent/ca.crt"}, "IOT_MQTT_TLS_CA"),
        ({"IOT_MQTT_URL": "http://localhost:1883"}, "IOT_MQTT_URL"),
        ({"IOT_MQTT_URL": "mqtt://localhost:99999"}, "IOT_MQTT_URL"),
        ({"IOT_MQTT_URL": "mqtt://user:secret@localhost"}, "IOT_MQTT_URL"),
    ],
)
def test_bad_boards_broker_settings_name_the_variable(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        fleet.Broker.from_env(env)
    assert info.value.field == field
    assert "secret" not in str(info.value)


@pytest.mark.unit
def test_a_ca_file_that_is_no_certificate_is_refused_by_name(tmp_path: Path) -> None:
    junk = tmp_path / "ca.crt"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="neither a PEM nor a DER") as info:
        fleet.Broker.from_env({"IOT_MQTT_URL": "mqtts://localhost", "IOT_MQTT_TLS_CA": str(junk)})
    assert info.value.field == "IOT_MQTT_TLS_CA"


@pytest.mark.unit
def test_iot_boards_with_mqtts_and_no_ca_stops_naming_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IOT_MQTT_URL", "mqtts://localhost:8883")
    monkeypatch.delenv("IOT_MQTT_TLS_CA", raising=False)
    assert main(["boards", "--count", "1", "--state-dir", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ConfigError: IOT_MQTT_TLS_CA: is required for mqtts://localhost:8883")
    assert not (tmp_path / "b").exists(), "no board may be prepared with a config that cannot work"


@pytest.mark.unit
def test_fleet_over_tls_puts_the_ca_on_every_boards_flash_and_names_it_in_the_config(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    broker = fleet.Broker.from_env({"IOT_MQTT_URL": "mqtts://localhost:8883", "IOT_MQTT_TLS_CA": str(ca)})
    plans = fleet.plan(2, 1, 1.0, broker.url, prefix="t", extra_config=broker.tls_config())
    f = fleet.Fleet(tmp_path / "b", plans, tls_ca=broker.ca)
    f.prepare(fresh=True)
    for board in f.boards:
        assert board.flash.read("ca.crt") == ca.read_bytes()
        config = json.loads(board.flash.read("config.json") or b"")
        assert config["broker"] == "mqtts://localhost:8883" and config["tls_ca_file"] == "ca.crt"


@pytest.mark.unit
def test_flash_copies_the_brokers_ca_under_the_configs_name_before_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = _ca(tmp_path)
    config = tmp_path / "board.json"
    config.write_text(
        json.dumps(
            {
                "device": "kitchen-1",
                "place": "kitchen",
                "broker": "mqtts://gw.lan:8883",
                "tls_ca_file": "ca.crt",
            }
        )
    )
    monkeypatch.setenv("IOT_MQTT_URL", "mqtts://localhost:8883")
    monkeypatch.setenv("IOT_MQTT_TLS_CA", str(ca))
    assert main(["flash", "--port", "/dev/ttyUSB0", "--config", str(config), "--dry-run"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("would copy")]
    assert [line.split(" -> :")[1] for line in lines][-3:] == ["ca.crt", "config.json", "main.py"]
    assert lines[-3].startswith(f"would copy {ca} ")
