"""Board config validation: the firmware's own config.py, run under CPython as `iot flash` does."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hil import paths
from tests.firmware import unixport

pytestmark = pytest.mark.unit


def _config_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fw_config", paths.FIRMWARE / "config.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


config = _config_module()
GOOD: dict[str, Any] = {"device": "kitchen-1", "place": "kitchen", "broker": "mqtt://10.0.0.2:1883"}


def test_minimal_config_gets_defaults_for_every_other_field() -> None:
    cfg = config.validate(dict(GOOD))
    assert cfg["interval_s"] == config.DEFAULTS["interval_s"]
    assert config.parse_broker(cfg["broker"]) == ("10.0.0.2", 1883, False)


def test_mqtts_url_selects_tls_and_port_8883() -> None:
    assert config.parse_broker("mqtts://broker.example") == ("broker.example", 8883, True)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"device": None}, "device"),
        ({"place": "kitchen/1"}, "place"),
        ({"broker": "http://x"}, "broker"),
        ({"broker": "mqtt://user:pw@host"}, "broker"),
        ({"interval_s": "ten"}, "interval_s"),
        ({"interval_s": 0}, "interval_s"),
        ({"interval_s": 0.2}, "interval_s"),
        ({"interval_s": 0.5, "bh1750_mtreg": 254}, "interval_s"),
        ({"bh1750_mtreg": 300}, "bh1750_mtreg"),
        ({"bh1750_addr": 0x30}, "bh1750_addr"),
        ({"i2c_sda": 3.5}, "i2c_sda"),
        ({"i2c_freq": 1000000}, "i2c_freq"),
        ({"i2c_scl": 6}, "i2c_scl"),
        ({"i2c_sda": 36}, "i2c_sda"),
        ({"i2c_sda": 22}, "i2c_sda"),
        ({"wifi_ssid": "x" * 33}, "wifi_ssid"),
        ({"wifi_ssid": "home", "wifi_password": "short"}, "wifi_password"),
        ({"broker": "mqtts://broker.example"}, "tls_ca_file"),
        ({"offsets": {"temprature": 1}}, "offsets.temprature"),
        ({"offsets": {"humidity": "x"}}, "offsets.humidity"),
        ({"wifi_pasword": "x"}, "wifi_pasword"),
        ({"mqtt_password": "s3cret"}, "mqtt_password"),
        ({"watchdog_s": 5}, "watchdog_s"),
        ({"tls_verify": "yes"}, "tls_verify"),
    ],
)
def test_bad_field_is_rejected_with_an_error_naming_it(change: dict[str, Any], field: str) -> None:
    raw = dict(GOOD, **change)
    if change.get("device", "") is None:
        del raw["device"]
    with pytest.raises(config.ConfigError) as err:
        config.validate(raw)
    assert err.value.field == field
    assert f"'{field}'" in str(err.value)


def test_error_never_echoes_the_password() -> None:
    with pytest.raises(config.ConfigError) as err:
        config.validate(dict(GOOD, mqtt_password="hunter2"))
    assert "hunter2" not in str(err.value)


def test_malformed_json_is_a_file_level_error() -> None:
    with pytest.raises(config.ConfigError) as err:
        config.parse("{not json")
    assert err.value.field == "(file)"


def test_unix_port_validates_the_same_way_as_cpython(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(dict(GOOD, interval_s=-1)))
    code = """
import json, config
try:
    config.load()
    print(json.dumps(None))
except config.ConfigError as exc:
    print(json.dumps([exc.field, str(exc)]))
"""
    field, message = unixport.run_json(code, tmp_path)
    assert field == "interval_s"
    assert "between" in message


def test_firmware_metric_ranges_and_fields_follow_the_contract(tmp_path: Path) -> None:
    """The firmware cannot import iot.contract; this keeps its copy of the ranges honest."""
    from iot import contract

    code = "import json, node, config\nprint(json.dumps([node._RANGES, config.METRICS]))"
    ranges, metrics = unixport.run_json(code, tmp_path)
    assert tuple(metrics) == contract.METRICS
    assert {k: tuple(v) for k, v in ranges.items()} == dict(contract.METRIC_RANGES)


def test_outbox_that_would_not_fit_the_file_system_is_refused() -> None:
    cfg = config.validate({**GOOD, "outbox_slots": 5000})
    config.check_outbox_fits(cfg, 4 * 1024 * 1024)
    with pytest.raises(config.ConfigError) as err:
        config.check_outbox_fits(cfg, 2 * 1024 * 1024)  # the ESP32 generic image's 2 MB
    assert err.value.field == "outbox_slots"
