"""The tests' logins on the broker: the native stack's operator (it may publish any board's topics
and read everything, the way a test plays a fleet) and gateway, found as the product finds them
(IOT_MQTT_OPERATOR_* / IOT_MQTT_USERNAME, else the stack's .stack/credentials.json). A broker without
authentication (a private one) takes any login."""

from __future__ import annotations

from collections.abc import Iterable

import paho.mqtt.client as mqtt

from hil.fleet import Broker
from iot.broker import credentials
from iot.broker.credentials import OPERATOR, Credentials
from iot.devices.provision import Provisioner

__all__ = ["log_in", "login", "remove_boards"]


def login(account: str = OPERATOR) -> Credentials | None:
    return credentials.find(account)


def log_in(client: mqtt.Client, account: str = OPERATOR) -> mqtt.Client:
    """Give `client` the account's credentials (none when there is no such account); returns it."""
    found = login(account)
    if found is not None:
        client.username_pw_set(found.username, found.password)
    return client


def remove_boards(devices: Iterable[str]) -> list[str]:
    """Revoke the accounts (and registry entries) a test's `iot boards` or `iot demo` gave its boards
    on the stack's broker, as `iot devices remove` does; returns those that had one. A throwaway
    account left behind would grow the broker's accounts file, which it rewrites at every change."""
    settings = Broker.from_env().provisioning()
    if settings is None:
        return []
    with Provisioner.open(settings) as prov:
        return [device for device in devices if prov.remove(device)]
