"""Where the native stack lives and listens: one frozen object built from the environment.

Ports come from the contract's endpoint variables (IOT_MQTT_URL, IOT_KAFKA_BOOTSTRAP, IOT_MONGO_URI), so
the services listen exactly where the gateway, backend and boards will look for them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from iot import contract
from iot.env import EnvReader, stack_dir
from iot.errors import ConfigError

__all__ = ["ConfigError", "StackConfig"]


KAFKA_VERSION = "4.1.1"
FERRETDB_VERSION = "v1.24.2"
# Our build of it: FERRETDB_VERSION plus the source patches in install.FERRETDB_PATCHES. A new patch
# gets a new name, so every machine builds it again instead of keeping a cached older binary.
FERRETDB_BUILD = f"{FERRETDB_VERSION}-iot1"


def _port(var: str, text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(var, f"port {text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError(var, f"port {port} is outside 1..65535")
    return port


def _url_port(var: str, url: str, default: int) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    try:
        port = parts.port or default
    except ValueError:
        raise ConfigError(var, f"{url!r} has an invalid port") from None
    if not parts.hostname:
        raise ConfigError(var, f"{url!r} names no host")
    return parts.hostname, _port(var, str(port))


DEFAULT_MQTT_TLS_PORT = 8883
_HOST_NAME = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")


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
    tls_hosts: tuple[str, ...]  # names and addresses in the broker's certificate (first = CN)
    kafka_port: int
    kafka_controller_port: int
    mongo_port: int
    prometheus_port: int
    node_exporter_port: int
    ferretdb_debug_port: int
    kafka_heap: str
    scrape_targets: Mapping[str, str]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackConfig:
        env = os.environ if env is None else env

        def get(var: str, default: str) -> str:
            return env.get(var) or default

        mqtt_host, mqtt_port = _url_port(
            "IOT_MQTT_URL", get("IOT_MQTT_URL", contract.ENV_DEFAULTS["IOT_MQTT_URL"]), 1883
        )
        bootstrap = get("IOT_KAFKA_BOOTSTRAP", contract.ENV_DEFAULTS["IOT_KAFKA_BOOTSTRAP"]).split(",")[0]
        _, kafka_port = _url_port("IOT_KAFKA_BOOTSTRAP", bootstrap, 9092)
        _, mongo_port = _url_port(
            "IOT_MONGO_URI", get("IOT_MONGO_URI", contract.ENV_DEFAULTS["IOT_MONGO_URI"]), 27017
        )
        reader = EnvReader(env)
        # 8883 beside the default 1883; beside any other MQTT port (a private stack on free ports)
        # that port + 1, as Kafka's controller port follows Kafka's, so stacks never share it.
        tls_default = DEFAULT_MQTT_TLS_PORT if mqtt_port == 1883 else mqtt_port + 1
        mqtt_tls_port = reader.port("IOT_MQTT_TLS_PORT", tls_default)
        if mqtt_tls_port == mqtt_port:
            raise ConfigError("IOT_MQTT_TLS_PORT", f"{mqtt_tls_port} is already the plain MQTT port")
        cert_hosts = tls_hosts(mqtt_host, reader.optional("IOT_MQTT_TLS_HOSTS"))
        heap = get("IOT_KAFKA_HEAP", "512m")
        if not heap[:-1].isdigit() or heap[-1] not in "mMgG":
            raise ConfigError("IOT_KAFKA_HEAP", f"{heap!r} must look like 512m or 1g")
        targets = {
            "gateway": get("IOT_STACK_SCRAPE_GATEWAY", f"127.0.0.1:{contract.GATEWAY_METRICS_PORT}"),
            "backend": get("IOT_STACK_SCRAPE_BACKEND", f"127.0.0.1:{contract.BACKEND_METRICS_PORT}"),
        }
        return cls(
            state_dir=stack_dir(env),
            cache_dir=Path(get("IOT_CACHE_DIR", str(Path.home() / ".cache/iot"))).absolute(),
            host=mqtt_host,
            mqtt_port=mqtt_port,
            mqtt_tls_port=mqtt_tls_port,
            tls_hosts=cert_hosts,
            kafka_port=kafka_port,
            kafka_controller_port=_port(
                "IOT_KAFKA_CONTROLLER_PORT", get("IOT_KAFKA_CONTROLLER_PORT", str(kafka_port + 1))
            ),
            mongo_port=mongo_port,
            prometheus_port=_port("IOT_PROMETHEUS_PORT", get("IOT_PROMETHEUS_PORT", "9090")),
            node_exporter_port=_port("IOT_NODE_EXPORTER_PORT", get("IOT_NODE_EXPORTER_PORT", "9100")),
            ferretdb_debug_port=_port("IOT_FERRETDB_DEBUG_PORT", get("IOT_FERRETDB_DEBUG_PORT", "8088")),
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
