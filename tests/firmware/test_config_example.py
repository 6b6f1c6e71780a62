"""The sample board config the README points a new user to is one the firmware accepts."""

from __future__ import annotations

import json

import pytest

from hil import paths
from hil.flash import load_board_config

pytestmark = pytest.mark.unit

EXAMPLE = paths.FIRMWARE / "config.example.json"


def test_the_example_config_passes_the_firmwares_own_checker() -> None:
    cfg = load_board_config(EXAMPLE)
    raw = json.loads(EXAMPLE.read_text())
    # Every field it sets is kept as written (nothing silently replaced by a default) ...
    for key, value in raw.items():
        assert cfg[key] == value, key
    # ... and it shows a user the fields a real board on the network needs.
    for key in ("device", "place", "wifi_ssid", "wifi_password", "broker", "mqtt_user", "mqtt_password"):
        assert raw[key], key
    assert raw["broker"].startswith("mqtts://") and raw["tls_ca_file"]
