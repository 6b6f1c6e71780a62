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
        ({"ack_timeout_max_s": 10}, "ack_timeout_max_s"),  # below ack_timeout_s (30)
        ({"ack_timeout_max_s": 0}, "ack_timeout_max_s"),
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


def test_a_config_from_before_the_ack_cap_keeps_a_long_ack_timeout() -> None:
    """ack_timeout_max_s came with the re-send backoff (default 300 s). A board whose config raised only
    ack_timeout_s above it (a config from before the cap) must still start after an update: the cap
    follows the timeout. Before, such a config was refused and the board never came up."""
    cfg = config.validate(dict(GOOD, ack_timeout_s=600))
    assert cfg["ack_timeout_s"] == 600 and cfg["ack_timeout_max_s"] == 600
    assert config.validate(dict(GOOD))["ack_timeout_max_s"] == config.DEFAULTS["ack_timeout_max_s"]
    with pytest.raises(config.ConfigError) as err:  # a cap given below the timeout is still an error
        config.validate(dict(GOOD, ack_timeout_s=600, ack_timeout_max_s=300))
    assert err.value.field == "ack_timeout_max_s"


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


# Broker and NTP server by IP address: no DNS lookup (unbounded on the port) in the way.
BY_IP: dict[str, Any] = {**GOOD, "ntp_host": "10.0.0.3"}


@pytest.mark.parametrize(
    ("change", "watchdog_s", "wait"),
    [
        # The default ntp_host is a name: getaddrinfo up to 22 s, then 1 s for the answer.
        ({"ntp_host": "pool.ntp.org"}, 24, "NTP sync"),
        ({"broker": "mqtt://broker.example:1883"}, 23, "DNS lookup of the broker"),
        ({"broker": "mqtts://10.0.0.2", "tls_ca_file": "ca.pem"}, 16, "TLS handshake"),
        # A failing bus: the BME280's calibration read times out after 100 ms x (1 + 1 + 26).
        ({}, 6, "measurement cycle"),
    ],
)
def test_watchdog_shorter_than_the_longest_wait_between_feeds_is_refused_naming_the_wait(
    change: dict[str, Any], watchdog_s: int, wait: str
) -> None:
    """Before: the check counted only puback_timeout_s x (publish_retries + 1) + 6 s, so a 22 s
    watchdog passed with a DNS lookup (no timeout on the port, ~22 s in lwIP) between two feeds."""
    raw = {**BY_IP, "puback_timeout_s": 1, "publish_retries": 0, **change}
    with pytest.raises(config.ConfigError) as err:
        config.validate({**raw, "watchdog_s": watchdog_s})
    assert err.value.field == "watchdog_s"
    assert wait in err.value.problem
    config.validate({**raw, "watchdog_s": watchdog_s + 1})  # one second more is enough


def test_long_puback_waits_are_fed_through_and_need_no_longer_watchdog() -> None:
    """Before: 10 s x 4 attempts + 6 demanded a 46 s watchdog, though every PUBACK wait feeds it."""
    cfg = config.validate({**BY_IP, "puback_timeout_s": 10, "publish_retries": 3, "watchdog_s": 30})
    assert cfg["watchdog_s"] == 30


def test_every_wait_between_feeds_is_counted_with_the_ports_bounds() -> None:
    cfg = config.validate({**GOOD, "broker": "mqtts://broker.example", "tls_ca_file": "ca.pem",
                           "bh1750_mtreg": 254})
    waits = {what.split(" (")[0]: ms for ms, what in config.unfed_waits(cfg)}
    assert waits["the DNS lookup of the broker"] == config.DNS_MS
    assert waits["the NTP sync"] == config.DNS_MS + config.NTP_ANSWER_MS
    assert waits["the TCP connect and TLS handshake"] == config.CONNECT_MS + config.TLS_HANDSHAKE_MS
    # BH1750 at MTreg 254: 663 ms of conversion inside the measurement cycle.
    cycle = waits["a measurement cycle with a failing I2C bus and an outbox write"]
    assert cycle == 20 + 40 + 663 + 2800 + 300 + 2 * config.I2C_RECOVERY_MS + (
        config.I2C_TRAFFIC_MS + config.FLASH_OP_MS)


def test_watchdog_bounds_are_the_ones_the_firmware_uses(tmp_path: Path) -> None:
    code = "import json, link, config\nprint(json.dumps([link.CONNECT_TIMEOUT_MS, config.CONNECT_MS]))"
    assert unixport.run_json(code, tmp_path) == [config.CONNECT_MS, config.CONNECT_MS]


def test_outbox_that_would_not_fit_the_file_system_is_refused() -> None:
    cfg = config.validate({**GOOD, "outbox_slots": 5000})
    config.check_outbox_fits(cfg, 4 * 1024 * 1024)
    with pytest.raises(config.ConfigError) as err:
        config.check_outbox_fits(cfg, 2 * 1024 * 1024)  # the ESP32 generic image's 2 MB
    assert err.value.field == "outbox_slots"
