"""The five native services: how each is configured, started and proven healthy, a module each."""

from __future__ import annotations

import os

from iot.app.stack.services.ferretdb import FERRETDB
from iot.app.stack.services.kafka import KAFKA, kafka_sasl_ready, sasl_connection, sasl_env_file
from iot.app.stack.services.mosquitto import MOSQUITTO, mosquitto_config
from iot.app.stack.services.node_exporter import NODE_EXPORTER
from iot.app.stack.services.prometheus import PROMETHEUS, prometheus_config
from iot.app.stack.services.service import Listener, Service

__all__ = [
    "BY_NAME",
    "FERRETDB",
    "KAFKA",
    "MOSQUITTO",
    "NODE_EXPORTER",
    "PROMETHEUS",
    "SERVICES",
    "Listener",
    "Service",
    "kafka_sasl_ready",
    "mosquitto_config",
    "prometheus_config",
    "sasl_connection",
    "sasl_env_file",
    "service_env",
]

# Start order: dependencies first; `down` goes in reverse.
SERVICES: tuple[Service, ...] = (MOSQUITTO, KAFKA, FERRETDB, NODE_EXPORTER, PROMETHEUS)
BY_NAME = {s.name: s for s in SERVICES}


def service_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("JAVA_TOOL_OPTIONS", None)
    return env
