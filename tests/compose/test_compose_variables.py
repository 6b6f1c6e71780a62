"""The variables the compose file gives each of our programs are the ones the program reads, and every
endpoint it reads is set: inside a container the defaults (127.0.0.1) name the container itself.

The compose file as Compose resolves it (`docker-compose config` with the example .env), each service's
environment fed to the program's own settings reader through a mapping that records what it looks up."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from backend import settings as backend_settings
from gateway.settings import GatewaySettings
from hil.fleet import Broker
from iot.broker import credentials
from iot.devices.provision import DevicesSettings

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Read by every program at start (iot/log.py), outside any settings object.
EVERY_PROGRAM = {"IOT_LOG_LEVEL"}


class Recording(Mapping[str, str]):
    """An environment that remembers which variables were looked up."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self._env[key]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return key in self._env

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)


def _resolved() -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "MONGO_", "GRAFANA_", "IOT_"))}
    proc = subprocess.run(
        [
            "docker-compose",
            "-f",
            "docker-compose.yml",
            "--env-file",
            ".env.example",
            "--profile",
            "demo",
            "config",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT / "compose",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    services: dict[str, Any] = yaml.safe_load(proc.stdout)["services"]
    return services


SERVICES = _resolved()


def _host(endpoint: str) -> str:
    return endpoint.rsplit("@", 1)[-1].split("://")[-1].split("/")[0].rsplit(":", 1)[0]


def _gateway(env: Mapping[str, str]) -> list[str]:
    s = GatewaySettings.from_env(env)
    return [s.mqtt_host, _host(s.kafka_bootstrap), _host(s.mongo_uri)]


def _broker_accounts(env: Mapping[str, str]) -> list[str]:
    s = DevicesSettings.from_env(env, registry=False)  # what `iot devices setup` reads
    gateway = credentials.find(credentials.GATEWAY, env)
    assert gateway is not None, "broker-accounts makes the gateway's account: it needs its credentials"
    return [s.endpoint.host]


def _backend(env: Mapping[str, str]) -> list[str]:
    s = backend_settings.load(env)
    return [_host(s.kafka_bootstrap), _host(s.mongo_uri)]


def _boards(env: Mapping[str, str]) -> list[str]:
    broker = Broker.from_env(env)
    provisioning = broker.provisioning(env)
    assert provisioning is not None, "the demo's boards need the operator's account to get theirs"
    return [broker.endpoint.host, _host(provisioning.mongo_uri)]


# Service -> its program's settings reader, returning the hosts it would connect to.
READERS: dict[str, Callable[[Mapping[str, str]], list[str]]] = {
    "broker-accounts": _broker_accounts,
    "gateway": _gateway,
    "backend": _backend,
    "boards": _boards,
}


def test_every_service_running_our_image_is_checked() -> None:
    ours = {name for name, svc in SERVICES.items() if svc.get("image", "").startswith("iot-sensor-streaming")}
    assert ours - {"kafka-topics"} == set(READERS)
    # Topic set-up names its bootstrap in its command and reads no variable.
    assert "kafka:9092" in " ".join(SERVICES["kafka-topics"]["command"])
    assert not any(k.startswith("IOT_") for k in SERVICES["kafka-topics"].get("environment") or {})


@pytest.mark.parametrize("service", sorted(READERS))
def test_compose_sets_only_variables_the_program_reads(service: str) -> None:
    given = {k: str(v) for k, v in (SERVICES[service].get("environment") or {}).items()}
    env = Recording(given)
    READERS[service](env)
    unread = {k for k in given if k.startswith("IOT_")} - env.read - EVERY_PROGRAM
    assert unread == set(), f"{service}: compose sets {sorted(unread)}, which its program never reads"


@pytest.mark.parametrize("service", sorted(READERS))
def test_every_endpoint_the_program_reads_is_a_compose_service(service: str) -> None:
    given = {k: str(v) for k, v in (SERVICES[service].get("environment") or {}).items()}
    hosts = READERS[service](given)
    for host in hosts:
        assert host not in LOOPBACK, f"{service}: an endpoint is left at its default {host} (the container)"
        assert host in SERVICES, f"{service}: {host} is no service of the compose file"


@pytest.mark.parametrize("service", ["gateway", "backend"])
def test_metrics_are_served_where_prometheus_scrapes_them(service: str) -> None:
    """Prometheus is another container: a metrics endpoint on the container's loopback is unreachable
    (the backend's was, until it read IOT_BACKEND_METRICS_HOST)."""
    given = {k: str(v) for k, v in (SERVICES[service].get("environment") or {}).items()}
    if service == "gateway":
        gw = GatewaySettings.from_env(given)
        host, port = gw.metrics_host, gw.metrics_port
    else:
        be = backend_settings.load(given)
        host, port = be.metrics_host, be.metrics_port
    assert host == "0.0.0.0"
    prom = yaml.safe_load((ROOT / "compose" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert f"{service}:{port}" in targets
