"""Adding and removing a board: its broker account and ACL, its registry document, its config.

Order and failure: the registry is checked first (an unreachable MongoDB changes nothing), then the
broker account is made, then the document; if the document cannot be written the account is deleted
again. Removal deletes the account first (the broker drops the board's connection at that moment and
refuses it from then on), then clears the board's retained topics, then the document.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iot import contract, log
from iot.broker import accounts, credentials
from iot.broker.credentials import Credentials
from iot.broker.dynsec import Dynsec
from iot.broker.errors import BrokerError
from iot.devices.registry import Registry, RegistryError
from iot.env import EnvReader, MqttEndpoint
from iot.errors import ConfigError

__all__ = ["DevicesSettings", "Provisioner", "board_config", "write_board_config"]

_log = log.get("iot.devices")
# Where a board keeps the broker's CA on its flash (the config's `tls_ca_file`; `iot flash` copies it).
TLS_CA_NAME = "ca.crt"


@dataclass(frozen=True)
class DevicesSettings:
    """What `iot devices` needs: the broker (IOT_MQTT_URL, IOT_MQTT_TLS_CA), the operator's
    credentials (credentials.py) and the registry (IOT_MONGO_URI)."""

    endpoint: MqttEndpoint
    tls_ca: str | None
    operator: Credentials
    mongo_uri: str  # "" when the command needs no registry (`setup`)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, registry: bool = True) -> DevicesSettings:
        env = os.environ if env is None else env
        reader = EnvReader(env)
        operator = credentials.find(credentials.OPERATOR, env)
        if operator is None:
            raise ConfigError(
                "IOT_MQTT_OPERATOR_USERNAME",
                f"not set, and no {credentials.stack_file(env)}: start the native stack (`iot stack up` "
                "makes the operator account) or set IOT_MQTT_OPERATOR_USERNAME/IOT_MQTT_OPERATOR_PASSWORD "
                "(compose: MQTT_OPERATOR_PASSWORD in compose/.env)",
            )
        return cls(
            endpoint=reader.mqtt_url("IOT_MQTT_URL"),
            tls_ca=reader.path("IOT_MQTT_TLS_CA"),
            operator=operator,
            mongo_uri=reader.text("IOT_MONGO_URI") if registry else "",
        )

    def dynsec(self) -> Dynsec:
        return Dynsec(self.endpoint, self.operator, self.tls_ca)


def board_config(place: str, device: str, password: str, broker: MqttEndpoint) -> dict[str, Any]:
    """The part of a board's config.json this provisioning decides (firmware/README.md lists the
    rest: Wi-Fi, pins, interval …, each with a default)."""
    config: dict[str, Any] = {
        "device": device,
        "place": place,
        "broker": broker.url,
        "mqtt_user": device,
        "mqtt_password": password,
    }
    if broker.tls:
        config["tls_ca_file"] = TLS_CA_NAME
    return config


def write_board_config(folder: Path, config: Mapping[str, Any]) -> Path:
    """`folder/<device>.json`, mode 0600 (it holds the board's password), replaced atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{config['device']}.json"
    temp = folder / f".{path.name}.{os.getpid()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        json.dump(dict(config), out, indent=1)
        out.write("\n")
    os.replace(temp, path)
    return path


@dataclass(frozen=True)
class DeviceView:
    """A board as `list` and `show` present it: what the registry and the broker each know."""

    device: str
    place: str | None
    registry: dict[str, Any] | None
    account: accounts.DeviceAccount | None

    @property
    def problem(self) -> str:
        if self.account is None:
            return "no broker account (cannot connect): `iot devices add` it again or remove it"
        if self.registry is None:
            return "not in the registry: `iot devices add --replace` it"
        if self.account.disabled:
            return "account disabled"
        if self.account.place != self.registry.get("place"):
            return f"account is for place {self.account.place}, registry says {self.registry.get('place')}"
        return ""


class Provisioner:
    """One admin session on the broker and one registry connection; close() releases both."""

    def __init__(self, dynsec: Dynsec, registry: Registry) -> None:
        self.dynsec = dynsec
        self.registry = registry

    @classmethod
    def open(cls, settings: DevicesSettings) -> Provisioner:
        registry = Registry.connect(settings.mongo_uri)
        try:
            registry.ping()
            dynsec = settings.dynsec().open()
        except BaseException:
            registry.close()
            raise
        return cls(dynsec, registry)

    def close(self) -> None:
        self.dynsec.close()
        self.registry.close()

    def __enter__(self) -> Provisioner:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def add(self, place: str, device: str, replace: bool = False, password: str | None = None) -> str:
        """A new account for the board (a new password, returned; the broker keeps only its hash) and
        its registry document. With `replace`, an existing board gets a new password and place, and is
        disconnected; without, an existing one is an error. `password`: the one a board was flashed
        with, for an account made again after a revocation (the rig's device_revoked)."""
        accounts.check_device_id(device, place)
        existing = accounts.device_account(self.dynsec, device)
        if existing is not None and not replace:
            raise BrokerError(
                f"device {device!r} exists (place {existing.place}); `iot devices add --replace` gives it a "
                "new password (the board must be flashed with it) or `iot devices remove` it first"
            )
        password = password or credentials.new_password()
        accounts.reset_device(self.dynsec, place, device, password)
        try:
            self.registry.add(device, place)
        except RegistryError:
            if existing is None:
                accounts.delete_device(self.dynsec, device)
            raise
        _log.info("device_added", device=device, place=place, replaced=existing is not None)
        return password

    def ensure_all(
        self,
        boards: list[tuple[str, str, str | None]],
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, str]:
        """Each (place, device, known password) provisioned, keeping the known password where the
        broker takes it for this board in this place (a fleet that restarts keeps its boards'
        passwords: a new one costs the plugin a save of its whole file, ~70 ms at 2,000 boards),
        else as `add --replace` does. Returns device -> the password it must use. Checking a password
        logs in as the board, which would disconnect it: for boards that are not running."""
        found = accounts.device_accounts(self.dynsec)
        docs = {str(d["_id"]) for d in self.registry.all()}
        out = {}
        for done, (place, device, password) in enumerate(boards, 1):
            account = found.get(device)
            if not (
                account is not None
                and password
                and account.place == place
                and account.client_id == device
                and not account.disabled
                and device in docs
                and accounts.login_works(self.dynsec, Credentials(device, password), client_id=device)
            ):
                password = self.add(place, device, replace=account is not None)
            out[device] = password
            if progress is not None:
                progress(done, len(boards))
        return out

    def remove(self, device: str) -> bool:
        """Revoke the board: its account and role go (the broker closes its connection now and refuses
        every later one), its retained status, health, config and ota topics are cleared, its document
        deleted. False when there was neither an account nor a document."""
        account = accounts.device_account(self.dynsec, device)
        doc = self.registry.get(device)
        place = (account.place if account else None) or (doc or {}).get("place")
        had_account = accounts.delete_device(self.dynsec, device)
        if place:
            self.dynsec.clear_retained(
                [
                    contract.status_topic(place, device),
                    contract.health_topic(place, device),
                    contract.config_topic(place, device),
                    contract.ota_topic(place, device),
                ]
            )
        had_doc = self.registry.remove(device)
        if had_account or had_doc:
            _log.info("device_removed", device=device, place=place)
        return had_account or had_doc

    def view(self, device: str) -> DeviceView | None:
        account = accounts.device_account(self.dynsec, device)
        doc = self.registry.get(device)
        if account is None and doc is None:
            return None
        place = (doc or {}).get("place") or (account.place if account else None)
        return DeviceView(device, place, doc, account)

    def views(self) -> list[DeviceView]:
        """Every board the registry or the broker knows, registry order first."""
        docs = {str(d["_id"]): d for d in self.registry.all()}
        found = accounts.device_accounts(self.dynsec)
        out = []
        for device in [*docs, *sorted(set(found) - set(docs))]:
            account, doc = found.get(device), docs.get(device)
            place = (doc or {}).get("place") or (account.place if account else None)
            out.append(DeviceView(device, place, doc, account))
        return out
