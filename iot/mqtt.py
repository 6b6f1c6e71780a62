"""One MQTT client connection config: the broker URL, its TLS files and the client's credentials.

Read from these variables (`VARIABLES`) by every MQTT client of the product that takes them from the
environment (the gateway; `iot boards` and `iot flash` take the URL and the CA):

    IOT_MQTT_URL                        mqtt://host[:1883], or mqtts://host[:8883] for TLS
    IOT_MQTT_TLS_CA                     the CA that verifies the broker (sets TLS on)
    IOT_MQTT_TLS_CERT / IOT_MQTT_TLS_KEY  a client certificate and its key (mutual TLS)
    IOT_MQTT_USERNAME / IOT_MQTT_PASSWORD the client's account on the broker

Files are checked when the settings are read (a CA file that holds no certificate, a key that does
not belong to its certificate), so a bad one stops the command naming the variable instead of
failing inside the MQTT library's thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from iot.env import CONTRACT, EnvReader, MqttEndpoint, Secret, Var, Variables

__all__ = ["OPERATOR", "VARIABLES", "MqttConnection"]

VARIABLES: Final = Variables(
    CONTRACT.pick("IOT_MQTT_URL"),
    Var("IOT_MQTT_TLS_CA", None, "CA file (PEM) that verifies the broker; setting it turns TLS on"),
    Var("IOT_MQTT_TLS_CERT", None, "client certificate (PEM), for mutual TLS"),
    Var("IOT_MQTT_TLS_KEY", None, "the client certificate's private key (PEM)"),
    Var("IOT_MQTT_USERNAME", None, "the client's MQTT user"),
    Var("IOT_MQTT_PASSWORD", None, "its password", secret=True),
)

# The broker's operator account (iot/broker/credentials.py): what `iot devices` and `iot boards`
# provision boards with.
OPERATOR: Final = Variables(
    Var(
        "IOT_MQTT_OPERATOR_USERNAME",
        None,
        "the broker's operator account, which provisions boards",
        shown="from <stack>/credentials.json",
    ),
    Var("IOT_MQTT_OPERATOR_PASSWORD", None, "its password", secret=True),
)


@dataclass(frozen=True, slots=True)
class MqttConnection:
    endpoint: MqttEndpoint
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    username: str | None = None
    password: Secret | None = None

    @classmethod
    def read(cls, reader: EnvReader) -> MqttConnection:
        """From a command's reader (its declarations must include `VARIABLES`)."""
        endpoint = reader.mqtt_url("IOT_MQTT_URL")
        ca = reader.ca_file("IOT_MQTT_TLS_CA")
        cert, key = reader.cert_and_key("IOT_MQTT_TLS_CERT", "IOT_MQTT_TLS_KEY")
        username = reader.optional("IOT_MQTT_USERNAME")
        password = reader.secret("IOT_MQTT_PASSWORD")
        if password is not None and username is None:
            raise reader.fail("IOT_MQTT_USERNAME", "required when IOT_MQTT_PASSWORD is set")
        if ca is not None or cert is not None:
            endpoint = MqttEndpoint(endpoint.host, endpoint.port, True)
        return cls(endpoint, ca, cert, key, username, password)

    @property
    def tls(self) -> bool:
        return self.endpoint.tls
