"""The product's roles and service accounts on a real broker with the dynamic-security plugin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from iot.broker import accounts
from iot.broker.credentials import Credentials
from iot.broker.dynsec import Dynsec
from iot.env import parse_mqtt_url
from iot.harness.broker import PrivateBroker
from tests.peer import Peer

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    with PrivateBroker(tmp_path / "mosquitto", accounts=True, persistent=False) as broker:
        yield broker


def test_setting_up_again_changes_nothing_and_disconnects_no_one(broker: PrivateBroker) -> None:
    """`iot stack up` and compose's broker-accounts run it at every start: the plugin disconnects
    every client of an account or role it changes, so an unchanged one must be left alone."""
    gateway = Peer(broker.port, broker.gateway)
    try:
        with Dynsec(parse_mqtt_url(broker.url), broker.operator) as dynsec:
            assert accounts.ensure_base(dynsec, broker.gateway) == []
            operator = dynsec.get_client(broker.operator.username) or {}
        gateway.round_trip()  # a change would have closed this connection before its answer
        assert gateway.disconnects == []
    finally:
        gateway.close()
    assert {r["rolename"] for r in operator["roles"]} == {accounts.ADMIN_ROLE, accounts.OPERATOR_ROLE}


def test_a_changed_gateway_password_is_applied_and_a_changed_role_repaired(broker: PrivateBroker) -> None:
    endpoint = parse_mqtt_url(broker.url)
    new = Credentials(broker.gateway.username, "another-password-0123456789")
    with Dynsec(endpoint, broker.operator) as dynsec:
        dynsec.call(
            "removeRoleACL",
            rolename=accounts.GATEWAY_ROLE,
            acltype="publishClientSend",
            topic="sensors/+/+/ack",
        )
        changed = accounts.ensure_base(dynsec, new)
        assert changed == [f"role {accounts.GATEWAY_ROLE}", f"account {new.username}"]
        assert accounts.login_works(dynsec, new)
        assert not accounts.login_works(dynsec, broker.gateway)
        role = dynsec.get_role(accounts.GATEWAY_ROLE) or {}
    assert {(a["acltype"], a["topic"]) for a in role["acls"]} == {
        (a["acltype"], a["topic"]) for a in accounts.gateway_acls()
    }
