"""Where the native stack lives and listens: one frozen object built from the environment.

Ports come from the contract's endpoint variables (IOT_MQTT_URL, IOT_KAFKA_BOOTSTRAP, IOT_MONGO_URI), so
the services listen exactly where the gateway, backend and boards will look for them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from iot import contract
from iot.env import CONTRACT, EnvReader, Var, Variables, stack_dir
from iot.errors import ConfigError

__all__ = ["VARIABLES", "ConfigError", "StackConfig"]


KAFKA_VERSION = "4.1.1"
FERRETDB_VERSION = "v1.24.2"
# Our build of it: FERRETDB_VERSION plus the source patches in install.FERRETDB_PATCHES. A new patch
# gets a new name, so every machine builds it again instead of keeping a cached older binary.
FERRETDB_BUILD = f"{FERRETDB_VERSION}-iot1"


DEFAULT_MQTT_TLS_PORT = 8883
_HOST_NAME = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")
_HEAP = re.compile(r"^[0-9]+[mMgG]$")

# What `iot stack` reads (its --help lists them). The endpoint variables are the contract's: their
# ports are where the services listen, so they listen exactly where the gateway, the backend and the
# boards look for them.
VARIABLES: Final = Variables(
    CONTRACT.pick("IOT_MQTT_URL", "IOT_KAFKA_BOOTSTRAP", "IOT_MONGO_URI"),
    Var(
        "IOT_MQTT_TLS_PORT",
        None,
        "Mosquitto's TLS listener (its CA is <state>/tls/ca.crt); 0: none",
        shown=f"{DEFAULT_MQTT_TLS_PORT} beside 1883, else the MQTT port + 1",
    ),
    Var("IOT_MQTT_TLS_HOSTS", None, "extra names and addresses in the servers' certificate, comma separated"),
    Var("IOT_KAFKA_CONTROLLER_PORT", None, "Kafka's KRaft controller", shown="the Kafka port + 1"),
    Var(
        "IOT_KAFKA_SASL_PORT",
        "0",
        "a SASL_SSL listener (SCRAM-SHA-512, certificate from <state>/tls) beside the plain one; 0: none. "
        "Its user `iot` gets a password made once; <state>/kafka/sasl-client.env holds the client "
        "variables for it",
    ),
    Var("IOT_KAFKA_HEAP", "512m", "Kafka's JVM heap, e.g. 512m or 1g"),
    Var("IOT_PROMETHEUS_PORT", "9090", "Prometheus"),
    Var("IOT_NODE_EXPORTER_PORT", "9100", "node-exporter"),
    Var("IOT_FERRETDB_DEBUG_PORT", "8088", "FerretDB's metrics and debug handlers"),
    Var(
        "IOT_STACK_SCRAPE_GATEWAY",
        f"127.0.0.1:{contract.GATEWAY_METRICS_PORT}",
        "where Prometheus scrapes the gateway",
    ),
    Var(
        "IOT_STACK_SCRAPE_BACKEND",
        f"127.0.0.1:{contract.BACKEND_METRICS_PORT}",
        "where Prometheus scrapes the backend",
    ),
    Var("IOT_STACK_DIR", None, "state: data, logs, pids, certificates", shown=".stack/ in the checkout"),
    Var("IOT_CACHE_DIR", None, "installed programs (Kafka's jars, FerretDB)", shown="~/.cache/iot"),
)


def _endpoint(reader: EnvReader, var: str, value: str, default: int) -> tuple[str, int]:
    """Host and port of an endpoint variable (any scheme, or host:port); a port 1..65535."""
    parts = urlsplit(value if "://" in value else f"tcp://{value}")
    try:
        port = default if parts.port is None else parts.port
    except ValueError:
        raise reader.fail(var, f"{value!r} has an invalid port") from None
    if not parts.hostname:
        raise reader.fail(var, f"{value!r} names no host")
    if port == 0:
        raise reader.fail(var, "port 0 is no port a service can listen on")
    return parts.hostname, port


def _listen_port(reader: EnvReader, var: str, default: int | None = None) -> int:
    """A port a service listens on: 1..65535 (0 is "off" only where the variable says so)."""
    return reader.integer(var, default, 1, 65535)


def tls_hosts(listen_host: str, extra: str | None, field: str = "IOT_MQTT_TLS_HOSTS") -> tuple[str, ...]:
    """localhost, 127.0.0.1, the listen address (unless a wildcard), then IOT_MQTT_TLS_HOSTS
    (comma separated: the names or addresses boards on the network use to reach this machine)."""
    hosts = ["localhost", "127.0.0.1"]
    if listen_host not in ("0.0.0.0", "::"):
        hosts.append(listen_host)
    for item in (extra or "").split(","):
        name = item.strip()
        if not name:
            continue
        if not _HOST_NAME.match(name):
            raise ConfigError(field, f"{name!r} is not a host name or IP address")
        hosts.append(name)
    return tuple(dict.fromkeys(hosts))


@dataclass(frozen=True, slots=True)
class StackConfig:
    state_dir: Path
    cache_dir: Path
    host: str
    mqtt_port: int
    mqtt_tls_port: int  # 0: no TLS listener
    tls_hosts: tuple[str, ...]  # names and addresses in the servers' certificate (first = CN)
    kafka_port: int
    kafka_controller_port: int
    kafka_sasl_port: int  # 0: no SASL_SSL listener
    mongo_port: int
    prometheus_port: int
    node_exporter_port: int
    ferretdb_debug_port: int
    kafka_heap: str
    scrape_targets: Mapping[str, str]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackConfig:
        reader = VARIABLES.reader(env)
        mqtt_host, mqtt_port = _endpoint(reader, "IOT_MQTT_URL", reader.text("IOT_MQTT_URL"), 1883)
        bootstrap = reader.bootstrap("IOT_KAFKA_BOOTSTRAP").split(",")[0]
        _, kafka_port = _endpoint(reader, "IOT_KAFKA_BOOTSTRAP", bootstrap, 9092)
        _, mongo_port = _endpoint(reader, "IOT_MONGO_URI", reader.mongo_uri("IOT_MONGO_URI"), 27017)
        # 8883 beside the default 1883; beside any other MQTT port (a private stack on free ports)
        # that port + 1, as Kafka's controller port follows Kafka's, so stacks never share it.
        tls_default = DEFAULT_MQTT_TLS_PORT if mqtt_port == 1883 else mqtt_port + 1
        mqtt_tls_port = reader.port("IOT_MQTT_TLS_PORT", tls_default)
        if mqtt_tls_port == mqtt_port:
            raise reader.fail("IOT_MQTT_TLS_PORT", f"{mqtt_tls_port} is already the plain MQTT port")
        controller = _listen_port(reader, "IOT_KAFKA_CONTROLLER_PORT", kafka_port + 1)
        if controller == kafka_port:
            raise reader.fail("IOT_KAFKA_CONTROLLER_PORT", f"{controller} is already Kafka's port")
        sasl_port = reader.port("IOT_KAFKA_SASL_PORT")
        if sasl_port in (kafka_port, controller):
            raise reader.fail(
                "IOT_KAFKA_SASL_PORT", f"{sasl_port} is already Kafka's plain or controller port"
            )
        cert_hosts = tls_hosts(mqtt_host, reader.optional("IOT_MQTT_TLS_HOSTS"))
        heap = reader.text("IOT_KAFKA_HEAP")
        if not _HEAP.match(heap):
            raise reader.fail("IOT_KAFKA_HEAP", f"{heap!r} must look like 512m or 1g")
        targets = {
            "gateway": reader.bootstrap("IOT_STACK_SCRAPE_GATEWAY"),
            "backend": reader.bootstrap("IOT_STACK_SCRAPE_BACKEND"),
        }
        return cls(
            state_dir=stack_dir(env),
            cache_dir=Path(reader.text("IOT_CACHE_DIR", str(Path.home() / ".cache/iot"))).absolute(),
            host=mqtt_host,
            mqtt_port=mqtt_port,
            mqtt_tls_port=mqtt_tls_port,
            tls_hosts=cert_hosts,
            kafka_port=kafka_port,
            kafka_controller_port=controller,
            kafka_sasl_port=sasl_port,
            mongo_port=mongo_port,
            prometheus_port=_listen_port(reader, "IOT_PROMETHEUS_PORT"),
            node_exporter_port=_listen_port(reader, "IOT_NODE_EXPORTER_PORT"),
            ferretdb_debug_port=_listen_port(reader, "IOT_FERRETDB_DEBUG_PORT"),
            kafka_heap=heap,
            scrape_targets=targets,
        )

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{self.host}:{self.mqtt_port}"

    @property
    def mqtt_tls_url(self) -> str:
        return f"mqtts://{self.host}:{self.mqtt_tls_port}"

    @property
    def tls_dir(self) -> Path:
        """The broker's CA and certificate (iot/app/stack/tls.py); `ca.crt` is what boards verify."""
        return self.state_dir / "tls"

    @property
    def mqtt_tls_ca(self) -> Path:
        return self.tls_dir / "ca.crt"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def mongo_uri(self) -> str:
        return f"mongodb://{self.host}:{self.mongo_port}/{contract.DEFAULT_DATABASE}"

    @property
    def kafka_dir(self) -> Path:
        return self.cache_dir / f"kafka-{KAFKA_VERSION}"

    @property
    def ferretdb_bin(self) -> Path:
        return self.cache_dir / f"ferretdb-{FERRETDB_BUILD}" / "ferretdb"
