"""The gateway's exceptions, one tree:

GatewayError                 anything the gateway reports as its own failure
├── SettingsError            a configuration variable is missing or invalid (names the variable)
├── MqttConnectError         the broker refused or could not be reached at start
└── KafkaFatalError          the idempotent producer hit a fatal error; un-acked readings
                             stay with the broker and are redelivered after a restart
"""

from __future__ import annotations

from iot.errors import ConfigError, IotError

__all__ = ["GatewayError", "KafkaFatalError", "MqttConnectError", "SettingsError"]


class GatewayError(IotError):
    """Base of every error the gateway raises on purpose."""


class SettingsError(GatewayError, ConfigError):
    """A configuration variable is missing or invalid; the message names it."""

    def __init__(self, variable: str, problem: str) -> None:
        ConfigError.__init__(self, variable, problem)
        self.variable = variable


class MqttConnectError(GatewayError):
    """The MQTT broker could not be reached or refused the connection."""


class KafkaFatalError(GatewayError):
    """The Kafka producer cannot go on (fatal idempotence error or bad configuration)."""
