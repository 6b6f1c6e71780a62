"""The rig file: the shipped rigs load, and a broken one gives an error that names the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil import paths
from hil.errors import RigConfigError
from hil.rig import preflight, spec
from iot.app.cli import main

pytestmark = pytest.mark.unit
RIGS = paths.REPO / "hil" / "rigs"

GOOD = """
rig: t
firmware: {version: 0.1.0}
boards:
  - {id: a, place: kitchen, count: 2}
scenarios:
  - name: s
    steps: [flash, {wait: 3}, {cut_network: 5}, {expect: {latency_s: 2}}]
"""


ESP32_WITH_PROFILE = "{id: e, kind: esp32, device: d1, port: /dev/x, profile: '1.22'}"


def _load(tmp_path: Path, text: str) -> spec.Rig:
    path = tmp_path / "rig.yaml"
    path.write_text(text)
    return spec.load(path, "r1")


def test_shipped_rigs_load(monkeypatch: pytest.MonkeyPatch) -> None:
    virtual = spec.load(RIGS / "virtual.yaml")
    assert {b.kind for b in virtual.boards} == {"virtual"} and len(virtual.scenarios) >= 5
    assert [b.profile for b in virtual.boards] == ["1.22", "1.26"]  # the oldest and the newest
    assert virtual.firmware.mpy
    steps = {s.name for sc in virtual.scenarios for s in sc.steps}
    assert {"flash", "verify_version", "cut_network", "power_cut", "sensor_fault", "broker_restart"} <= steps
    fleet = {"remote_config", "ota_update", "ota_rollback", "ota_bad_signature", "ota_power_cut"}
    assert fleet | {"device_revoked"} <= {sc.name for sc in virtual.scenarios}  # issue #22's
    with pytest.raises(RigConfigError, match="IOT_GATEWAY_MQTT_PASSWORD"):
        spec.load(RIGS / "esp32-bench.yaml")  # the broker password comes from the environment
    monkeypatch.setenv("IOT_GATEWAY_MQTT_PASSWORD", "pw")
    bench = spec.load(RIGS / "esp32-bench.yaml")
    assert {b.kind for b in bench.boards} == {"esp32"} and all(b.port for b in bench.boards)
    assert bench.stack.mqtt_password == "pw" and bench.boards[0].power.off.startswith("usbrelay")


def test_a_good_rig_expands_counts_and_fills_step_defaults(tmp_path: Path) -> None:
    rig = _load(tmp_path, GOOD)
    assert [b.id for b in rig.boards] == ["a-1", "a-2"]
    assert [b.device for b in rig.boards] == ["hil-r1-a-1", "hil-r1-a-2"]
    steps = rig.scenarios[0].steps
    assert steps[1].args == {"seconds": 3} and steps[2].args == {"seconds": 5}
    assert steps[3].args["latency_s"] == 2 and steps[3].args["delivered"] is True


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (("{cut_network: 5}", "{cut_network: {secs: 5}}"), "scenarios[0].steps[2].cut_network.secs"),
        (("{wait: 3}", "{wait: -3}"), "scenarios[0].steps[1].wait.seconds"),
        (("flash,", "flsh,"), "scenarios[0].steps[0].flsh"),
        (("place: kitchen", "place: kitchen, colour: red"), "boards[0].colour"),
        (("rig: t", "rig: t\nstack: {broker: amqp://x}"), "stack.broker"),
        # The run's own gateway and backend on the product's broker or Kafka would cross over with it.
        (("rig: t", "rig: t\nstack: {broker: 'mqtt://127.0.0.1:1883'}"), "stack.broker"),
        (("rig: t", "rig: t\nstack: {kafka: '127.0.0.1:9092'}"), "stack.kafka"),
        (("rig: t", "rig: t\nboard_config: {interval: 1}"), "board_config.interval"),
        (("{id: a,", "{id: 'a b',"), "boards[0].id"),
        # A whole match: a `$`-anchored pattern's match() takes an id with a trailing line break.
        (("{id: a,", '{id: "a\\n",'), "boards[0].id"),
        (("count: 2}", 'device: "d1\\n"}'), "boards[0].device"),
        (("{id: a, place: kitchen, count: 2}", "{id: e, kind: esp32, device: d1}"), "boards[0].port"),
        # Values the firmware's own config check refuses, named where the rig file sets them (they
        # failed at flash time, naming a generated config/<board>.json).
        (("rig: t", "rig: t\nboard_config: {interval_s: fast}"), "board_config.interval_s"),
        (("count: 2}", "count: 2, config: {interval_s: -1}}"), "boards[0].config.interval_s"),
        (("count: 2}", "count: 2, config: {i2c_sda: 99}}"), "boards[0].config.i2c_sda"),
        # A MicroPython version not modelled; a real board runs what it was flashed with.
        (("count: 2}", "count: 2, profile: '1.19'}"), "boards[0].profile"),
        (("{id: a, place: kitchen, count: 2}", ESP32_WITH_PROFILE), "boards[0].profile"),
        # Fleet steps: a build, a cut or an outcome the rig does not know; a config step with nothing.
        (("{wait: 3}", "{ota_push: {build: unsigned}}"), "scenarios[0].steps[1].ota_push.build"),
        (("{wait: 3}", "{ota_push: {cut: middle}}"), "scenarios[0].steps[1].ota_push.cut"),
        (("{wait: 3}", "{ota_push: {expect: fine}}"), "scenarios[0].steps[1].ota_push.expect"),
        (("{wait: 3}", "{config_set: {unset: [x], expect: ok}}"), "scenarios[0].steps[1].config_set.expect"),
        (("{wait: 3}", "{config_set: {trial_s: 10}}"), "scenarios[0].steps[1].config_set"),
        (("{wait: 3}", "{config_set: {set: [interval_s]}}"), "scenarios[0].steps[1].config_set.set"),
    ],
)
def test_a_broken_rig_file_names_the_key(tmp_path: Path, change: tuple[str, str], key: str) -> None:
    old, new = change
    assert old in GOOD
    with pytest.raises(RigConfigError) as err:
        _load(tmp_path, GOOD.replace(old, new, 1))
    assert err.value.field == key
    assert key in str(err.value)


def test_iot_hil_check_reports_the_bad_key_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rig.yaml"
    path.write_text(GOOD.replace("{wait: 3}", "{wait: soon}"))
    assert main(["hil", "check", str(path)]) == 1
    assert "RigConfigError: field 'scenarios[0].steps[1].wait.seconds'" in capsys.readouterr().err


def _with_version(tmp_path: Path, version: str, steps: str) -> spec.Rig:
    text = GOOD.replace("version: 0.1.0", f"version: {version}").replace(
        "steps: [flash, {wait: 3}, {cut_network: 5}, {expect: {latency_s: 2}}]", f"steps: {steps}"
    )
    return _load(tmp_path, text)


def test_a_version_the_flashed_firmware_does_not_have_is_named_before_the_run(tmp_path: Path) -> None:
    have = preflight.firmware_version(paths.FIRMWARE)
    assert have and have != "9.9.9"
    problem = preflight.firmware_problem(_with_version(tmp_path, "9.9.9", "[flash, verify_version]"))
    assert problem.startswith("firmware.version is 9.9.9, but firmware.dir") and f"holds {have}" in problem
    assert preflight.firmware_problem(_with_version(tmp_path, have, "[flash, verify_version]")) == ""
    # Nothing is flashed: what counts is what the boards run (version_problem).
    assert preflight.firmware_problem(_with_version(tmp_path, "9.9.9", "[verify_version]")) == ""


def test_a_board_on_another_version_fails_only_if_verified_before_a_flash(tmp_path: Path) -> None:
    verify_first = _with_version(tmp_path, "0.2.0", "[verify_version, flash]")
    problem = preflight.version_problem(verify_first, "a-1", "0.1.0")
    assert problem == (
        "runs firmware 0.1.0, the rig expects 0.2.0 (firmware.version) at "
        "scenarios[0].steps[0].verify_version, before any flash"
    )
    assert preflight.version_problem(verify_first, "a-1", "0.2.0") == ""
    flash_first = _with_version(tmp_path, "0.2.0", "[flash, verify_version]")
    assert preflight.version_problem(flash_first, "a-1", "0.1.0") == ""


def test_a_run_against_the_products_services_may_name_them(tmp_path: Path) -> None:
    stack_line = "stack: {services: running, broker: 'mqtt://h:1883', kafka: 'h:9092'}"
    text = GOOD.replace("rig: t", f"rig: t\n{stack_line}")
    stack = _load(tmp_path, text).stack
    assert (stack.broker, stack.kafka.bootstrap, stack.own_kafka) == ("mqtt://h:1883", "h:9092", False)
    assert _load(tmp_path, GOOD).stack.own_kafka  # services: start, the default: the run's own
