"""A private Mosquitto on a free port and in its own folder: for whatever must not touch the shared
broker (a test, a benchmark or a rig run that stops, SIGKILLs or reconfigures it)."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from types import TracebackType

from iot.broker import local
from iot.broker.credentials import GATEWAY, OPERATOR, Credentials
from iot.env import MqttEndpoint
from iot.harness.children import Child
from iot.harness.errors import HarnessError
from iot.harness.mqtt import MqttLogin
from iot.harness.ports import HOST, free_port, listening

__all__ = ["MOSQUITTO", "PrivateBroker"]

MOSQUITTO = "/usr/sbin/mosquitto"


class PrivateBroker:
    """Start, stop (SIGTERM) or kill (SIGKILL) at will; it dies with the process that started it.

    `listener_conf` goes under the listener (authentication, ACL, TLS files; anonymous by default);
    `tls` only changes `url`. `accounts`: authenticated like the native stack's broker, the
    dynamic-security plugin with the operator and gateway accounts (`operator`, `gateway`; `ca`
    verifies a TLS-only broker for setting them up). `persistent`: sessions and their queued QoS 1
    messages survive a clean restart, as the gateway's must. Queue limits are raised like the stack
    broker's: the default 1000 queued messages per session would drop most of an outage (FACTS.md)."""

    def __init__(
        self,
        folder: Path,
        listener_conf: str | None = None,
        tls: bool = False,
        persistent: bool = True,
        accounts: bool = False,
        ca: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.folder = folder
        self.tls = tls
        self._ca = ca
        folder.mkdir(parents=True, exist_ok=True)
        self.logins: dict[str, Credentials] = {}
        if accounts:
            dynsec_file = folder / local.DYNSEC_FILE
            self.logins = local.prepare_accounts(dynsec_file, folder / "credentials.json")
            listener_conf = local.plugin_conf(dynsec_file) + (listener_conf or "")
        elif listener_conf is None:
            listener_conf = "allow_anonymous true\n"
        self.conf = folder / "mosquitto.conf"
        lines = [
            # Started as root, mosquitto would drop to its own user, which cannot write to our folder.
            f"user {getpass.getuser()}",
            f"listener {self.port} {HOST}",
            listener_conf.rstrip("\n"),
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            "max_inflight_messages 1000",
            # As the stack's broker: without it a reply after a PUBACK waits for the peer's delayed
            # ACK (~40 ms a plugin command round trip, measured; 0.25 ms with it).
            "set_tcp_nodelay true",
            f"log_dest file {folder}/mosquitto.log",
        ]
        if persistent:
            lines += ["persistence true", f"persistence_location {folder}/"]
        self.conf.write_text("\n".join(lines) + "\n")
        # Its output and its own log (log_dest) in one file: what the log tail of a failure shows.
        self.child = Child("mosquitto", [MOSQUITTO, "-c", str(self.conf)], folder / "mosquitto.log")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{HOST}:{self.port}"

    @property
    def operator(self) -> Credentials:
        return self.logins[OPERATOR]

    @property
    def gateway(self) -> Credentials:
        return self.logins[GATEWAY]

    @property
    def login(self) -> MqttLogin:
        """How a test's client reaches it: anonymously, or with accounts as the operator (a test with
        another login, or TLS, makes its own MqttLogin)."""
        if self.logins:
            return MqttLogin(self.url, self.operator.username, self.operator.password, str(self._ca or ""))
        return MqttLogin(self.url)

    def start(self, timeout: float = 15.0) -> None:
        if not os.path.exists(MOSQUITTO):
            raise HarnessError(f"{MOSQUITTO} missing: `iot stack install` installs mosquitto")
        self.child.start()
        self.child.wait_ready(lambda: listening(self.port), timeout, f"listening on {self.port}")
        if self.logins:
            endpoint = MqttEndpoint(HOST, self.port, self.tls)
            local.ensure_accounts(endpoint, self.logins, str(self._ca) if self._ca else None)

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves sessions and queued messages to its persistence file first."""
        self.child.stop(30)

    def kill(self) -> None:
        """SIGKILL: what is only in Mosquitto's memory is gone."""
        self.child.kill()

    @property
    def pid(self) -> int | None:
        return self.child.pid

    def log(self) -> str:
        return self.child.log()

    def __enter__(self) -> PrivateBroker:
        self.start()
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.kill()
