"""The tests' logins on the broker: the native stack's operator (it may publish any board's topics
and read everything, the way a test plays a fleet) and gateway, found as the product finds them
(IOT_MQTT_OPERATOR_* / IOT_MQTT_USERNAME, else the stack's .stack/credentials.json). A broker without
authentication (a private one) takes any login."""

from __future__ import annotations

import paho.mqtt.client as mqtt

from iot.broker import credentials
from iot.broker.credentials import OPERATOR, Credentials

__all__ = ["log_in", "login"]


def login(account: str = OPERATOR) -> Credentials | None:
    return credentials.find(account)


def log_in(client: mqtt.Client, account: str = OPERATOR) -> mqtt.Client:
    """Give `client` the account's credentials (none when there is no such account); returns it."""
    found = login(account)
    if found is not None:
        client.username_pw_set(found.username, found.password)
    return client
