"""Boards against an authenticating broker with the shipped ACL (compose/mosquitto/acl): the
device id as MQTT user, the password from the board's config and never in its logs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil import paths
from hil.probe import Probe
from tests.brokers import PrivateBroker
from tests.hil.conftest import BoardFactory
from tests.support import unique, wait_for

pytestmark = [pytest.mark.hil, pytest.mark.integration]
SHIPPED_ACL = paths.REPO / "compose" / "mosquitto" / "acl"


@pytest.fixture
def users() -> dict[str, str]:
    return {"gateway": unique("gw-pass"), unique("vt"): unique("dev-pass")}


@pytest.fixture
def auth_broker(tmp_path: Path, users: dict[str, str]) -> Iterator[PrivateBroker]:
    passwd = tmp_path / "passwd"
    passwd.touch()
    for user, password in users.items():
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwd), user, password], check=True, capture_output=True
        )
    extra = f"allow_anonymous false\npassword_file {passwd}\nacl_file {SHIPPED_ACL}\n"
    with PrivateBroker(tmp_path / "mosquitto", listener_conf=extra, persistent=False) as broker:
        yield broker


def test_board_with_its_credentials_publishes_through_the_shipped_acl(
    make_board: BoardFactory, auth_broker: PrivateBroker, users: dict[str, str]
) -> None:
    device, password = next((u, p) for u, p in users.items() if u != "gateway")
    with Probe(
        auth_broker.url,
        ["sensors/+/+/reading", "sensors/+/+/status"],
        username="gateway",
        password=users["gateway"],
    ) as probe:
        board = make_board(broker=auth_broker.url, device=device, mqtt_user=device, mqtt_password=password)
        board.start()
        wait_for(lambda: len(probe.readings(device)) >= 3, 20, "readings through the ACL")
        wait_for(lambda: probe.messages("status", device), 10, "the birth message")
    assert password not in board.console()


def test_board_with_a_wrong_password_is_refused_says_so_and_keeps_measuring(
    make_board: BoardFactory, auth_broker: PrivateBroker, users: dict[str, str]
) -> None:
    device = next(u for u in users if u != "gateway")
    board = make_board(broker=auth_broker.url, device=device, mqtt_user=device, mqtt_password="wrong-secret")
    board.start()
    console = board.wait_console("connect_refused", 20)
    assert "not authorised" in console or "bad user name or password" in console
    assert "wrong-secret" not in console
    wait_for(lambda: board.outbox_depth() >= 3, 20, "readings kept in the outbox")
    assert board.running
