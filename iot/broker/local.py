"""Accounts on a broker this machine runs (the native stack's, a test's or a rig's private one).

Before the first start: the operator's and the gateway's passwords (random, kept in a 0600
credentials file) and the plugin's first file with the operator in it (`accounts.seed_file`). After
every start: the roles and the gateway's account (`accounts.ensure_base`), as compose's
broker-accounts step does for the compose broker.
"""

from __future__ import annotations

from pathlib import Path

from iot.broker import accounts, credentials
from iot.broker.credentials import GATEWAY, OPERATOR, Credentials
from iot.broker.dynsec import Dynsec
from iot.env import MqttEndpoint
from iot.errors import ConfigError

__all__ = ["PLUGIN", "ensure_accounts", "plugin_conf", "prepare_accounts"]

# Debian's build of the plugin (package mosquitto, 2.0.11); the compose image has its own path.
PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
DYNSEC_FILE = "dynamic-security.json"


def plugin_conf(dynsec_file: Path) -> str:
    """mosquitto.conf lines: no anonymous clients; accounts, roles and ACLs from the plugin."""
    return f"allow_anonymous false\nplugin {PLUGIN}\nplugin_opt_config_file {dynsec_file}\n"


def prepare_accounts(dynsec_file: Path, credentials_file: Path) -> dict[str, Credentials]:
    """The operator's and the gateway's credentials, made (random) on first use and kept in
    `credentials_file`; the plugin's first file with the operator, if there is none yet."""
    known = credentials.read_stack_file(credentials_file)
    if dynsec_file.exists() and OPERATOR not in known:
        raise ConfigError(
            str(credentials_file),
            f"has no operator password, and the broker's accounts file {dynsec_file} exists: restore the "
            f"credentials file, or delete {dynsec_file} to start the broker's accounts over (boards "
            "provisioned on it must then be added again)",
        )
    wanted = {
        OPERATOR: known.get(OPERATOR)
        or Credentials("operator", credentials.new_password(), str(credentials_file)),
        GATEWAY: known.get(GATEWAY)
        or Credentials("gateway", credentials.new_password(), str(credentials_file)),
    }
    if wanted != {k: known.get(k) for k in wanted}:
        credentials.write_stack_file(credentials_file, {**known, **wanted})
    accounts.seed_file(dynsec_file, wanted[OPERATOR])
    return wanted


def ensure_accounts(
    endpoint: MqttEndpoint, logins: dict[str, Credentials], tls_ca: str | None = None
) -> list[str]:
    """The roles and the gateway's account on the running broker; what changed."""
    with Dynsec(endpoint, logins[OPERATOR], tls_ca) as dynsec:
        return accounts.ensure_base(dynsec, logins.get(GATEWAY), tls_ca)
