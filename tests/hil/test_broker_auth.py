"""Boards against a broker with accounts (the dynamic-security plugin, as the native stack and
compose run it): provisioned as `iot devices add` provisions them, the device id as user and client
id, the password from the board's config and never in its logs; refused and revoked boards say so and
keep measuring."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hil import fleet
from hil.board_flash import ImageFlash
from hil.probe import Probe
from iot.broker.credentials import OPERATOR
from iot.devices.provision import DevicesSettings, Provisioner
from iot.harness.broker import PrivateBroker
from tests.hil.conftest import BoardFactory, provisioned
from tests.support import unique, wait_for

pytestmark = [pytest.mark.hil, pytest.mark.integration]


def test_provisioned_board_publishes_through_its_acl(
    make_board: BoardFactory, auth_broker: PrivateBroker, settings: DevicesSettings
) -> None:
    board, password = provisioned(make_board, settings, auth_broker)
    device = board.device
    with Probe(
        auth_broker.url,
        ["sensors/+/+/reading", "sensors/+/+/status"],
        username=auth_broker.gateway.username,
        password=auth_broker.gateway.password,
    ) as probe:
        board.start()
        wait_for(lambda: len(probe.readings(device)) >= 3, 20, "readings through the ACL")
        wait_for(lambda: probe.messages("status", device), 10, "the birth message")
    assert password not in board.console()


def test_board_with_a_wrong_password_is_refused_says_so_and_keeps_measuring(
    make_board: BoardFactory, auth_broker: PrivateBroker, settings: DevicesSettings
) -> None:
    board, _ = provisioned(make_board, settings, auth_broker, password="wrong-secret")
    board.start()
    console = board.wait_console("connect_refused", 20)
    assert "not authorised" in console or "bad user name or password" in console
    assert "wrong-secret" not in console
    assert board.login_refused() in ("not authorised", "bad user name or password")
    wait_for(lambda: board.outbox_depth() >= 3, 20, "readings kept in the outbox")
    assert board.running


def test_a_removed_board_is_cut_off_and_keeps_its_readings(
    make_board: BoardFactory, auth_broker: PrivateBroker, settings: DevicesSettings
) -> None:
    board, _ = provisioned(make_board, settings, auth_broker)
    device = board.device
    board.start()
    board.wait_console("link_up", 20)
    with Provisioner.open(settings) as prov:
        assert prov.remove(device)
    wait_for(lambda: board.login_refused(), 30, "the board's next login to be refused")
    depth = board.outbox_depth()
    wait_for(lambda: board.outbox_depth() > depth, 20, "readings kept in the outbox after the revocation")
    assert board.running


def test_iot_boards_provisions_its_fleet_or_says_the_login_was_refused(
    tmp_path: Path, auth_broker: PrivateBroker, settings: DevicesSettings
) -> None:
    prefix = unique("vt")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("IOT_")},
        "IOT_MQTT_URL": auth_broker.url,
        "IOT_MONGO_URI": settings.mongo_uri,
        "IOT_STACK_DIR": str(tmp_path / "no-stack"),
    }
    args = [
        sys.executable,
        "-m",
        "iot.app.cli",
        "boards",
        "--count",
        "2",
        "--interval",
        "0.5",
        "--prefix",
        prefix,
    ]
    # No operator account: the error says the login was refused, not "no SUBACK".
    bare = subprocess.run(
        [*args, "--state-dir", str(tmp_path / "bare")], env=env, capture_output=True, text=True, timeout=60
    )
    assert bare.returncode == 1
    assert (
        "refused the login without credentials" in bare.stderr and "IOT_MQTT_OPERATOR_USERNAME" in bare.stderr
    )
    assert "no SUBACK" not in bare.stderr

    devices = {p.device for p in fleet.plan(2, 1, 0.5, auth_broker.url, prefix=prefix)}
    with Probe(
        auth_broker.url,
        ["sensors/+/+/reading"],
        keep=lambda t: t.split("/")[2] in devices,
        username=auth_broker.gateway.username,
        password=auth_broker.gateway.password,
    ) as probe:
        proc = subprocess.Popen(
            [*args, "--state-dir", str(tmp_path / "fleet")],
            env={**env, **auth_broker.operator.as_env(OPERATOR)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for(
                lambda: {m.topic.split("/")[2] for m in probe.messages("reading")} == devices,
                30,
                "readings from both provisioned boards",
            )
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, out
    configs = [json.loads(ImageFlash(tmp_path / "fleet" / d / "flash.img").read("config.json") or b"")
               for d in devices]
    assert {c["mqtt_user"] for c in configs} == devices
    for config in configs:
        assert config["mqtt_password"] not in out
    with Provisioner.open(settings) as prov:
        listed = {v.device: v for v in prov.views() if v.device.startswith(prefix)}
    assert set(listed) == devices and all(not v.problem for v in listed.values())
