"""The product's broker accounts and what each may do (docs/CONTRACT.md, "Accounts, ACL and
provisioning"), kept in Mosquitto's dynamic-security plugin.

- **operator** (roles `admin`, the plugin's, and `iot-operator`): runs the plugin's commands, reads
  everything, writes under `sensors/` (config, ota, clearing a removed board's retained topics); may
  not join a `$share` group;
- **gateway** (`iot-gateway`): reads readings (also through `$share/<group>/`), status and health;
  writes acks;
- **one account per board**, user = client id = device id (`iot-device-<device>`): writes its own
  reading, status and health; reads its own ack, config and ota topics; nothing else.

Nothing else is allowed: the plugin's defaults deny every publish and subscribe no role allows. A
board's account is bound to its client id, so it cannot take over another client's session (the
gateway's persistent one), and its role names its place, so it cannot publish as another place. A
subscription through `$share/...` reaches the plugin with the prefix, so a role pattern without it
never matches one: boards can join no shared group.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iot import contract, log
from iot.broker.credentials import Credentials
from iot.broker.dynsec import Dynsec, connect
from iot.broker.errors import BrokerAuthError, BrokerError, DynsecError

__all__ = [
    "ADMIN_ROLE",
    "DEVICE_ROLE_PREFIX",
    "GATEWAY_ROLE",
    "OPERATOR_ROLE",
    "DeviceAccount",
    "create_device",
    "delete_device",
    "device_account",
    "device_accounts",
    "device_acls",
    "ensure_base",
    "login_works",
    "reset_device",
    "seed_file",
]

_log = log.get("iot.broker")

ADMIN_ROLE = "admin"  # the plugin's own, as `mosquitto_ctrl dynsec init` makes it
OPERATOR_ROLE = "iot-operator"
GATEWAY_ROLE = "iot-gateway"
DEVICE_ROLE_PREFIX = "iot-device-"
# The operator's own role goes before the plugin's admin role, whose `#` would let it join groups.
_OPERATOR_ROLE_PRIORITY = 10
# Ids no board may take: the service accounts and everything of the product's own (`iot-…`, e.g.
# the gateway's default client id `iot-gateway-<host>`), so a board can never be bound to a client id
# a service uses.
RESERVED_PREFIX = "iot-"
RESERVED_NAMES = frozenset({"operator", "gateway", "admin", "healthcheck"})

ACL = dict[str, Any]


def _acl(kind: str, topic: str, allow: bool = True, priority: int = 0) -> ACL:
    return {"acltype": kind, "topic": topic, "allow": allow, "priority": priority}


def operator_acls() -> list[ACL]:
    return [
        _acl("publishClientSend", "sensors/#"),
        _acl("subscribePattern", "$share/#", allow=False),
    ]


def gateway_acls() -> list[ACL]:
    readings = contract.READING_SUBSCRIPTION
    return [
        _acl("subscribePattern", f"$share/+/{readings}"),
        _acl("subscribePattern", readings),
        _acl("subscribePattern", contract.STATUS_SUBSCRIPTION),
        _acl("subscribePattern", contract.HEALTH_SUBSCRIPTION),
        _acl("publishClientSend", contract.ACK_SUBSCRIPTION),
    ]


def device_acls(place: str, device: str) -> list[ACL]:
    """A board's whole world. Reads are allowed only where it may subscribe, and everything else it
    might receive is denied too (priority -1), so no future role or default widens it by accident."""
    reads = [
        contract.ack_topic(place, device),
        contract.config_topic(place, device),
        contract.ota_topic(place, device),
    ]
    ota_tree = contract.ota_topic(place, device) + "/#"
    return [
        *(
            _acl("publishClientSend", topic)
            for topic in (
                contract.reading_topic(place, device),
                contract.status_topic(place, device),
                contract.health_topic(place, device),
            )
        ),
        *(_acl("subscribeLiteral", topic) for topic in reads),
        _acl("subscribePattern", ota_tree),
        *(_acl("publishClientReceive", topic) for topic in [*reads, ota_tree]),
        _acl("publishClientReceive", "#", allow=False, priority=-1),
    ]


def device_role(device: str) -> str:
    return f"{DEVICE_ROLE_PREFIX}{device}"


# --- the first start ---------------------------------------------------------------------------


def seed_file(path: Path, operator: Credentials) -> bool:
    """Write the plugin's first configuration if there is none: the operator with the plugin's admin
    role, the defaults that deny what no role allows (what `mosquitto_ctrl dynsec init` writes, done
    here so the password is on no command line). Everything else is added at run time
    (`ensure_base`). Returns False when the file already exists: the broker owns it from its first
    start on, and board accounts live in it."""
    if path.exists():
        return False
    salt = secrets.token_bytes(12)
    iterations = 101  # the plugin's own for clients it creates; the passwords are random (credentials.py)
    digest = hashlib.pbkdf2_hmac("sha512", operator.password.encode(), salt, iterations, 64)
    document = {
        "clients": [
            {
                "username": operator.username,
                "textName": "iot operator (dynamic-security admin)",
                "password": base64.b64encode(digest).decode(),
                "salt": base64.b64encode(salt).decode(),
                "iterations": iterations,
                "roles": [{"rolename": ADMIN_ROLE}],
            }
        ],
        "roles": [
            {
                "rolename": ADMIN_ROLE,
                "acls": [
                    _acl("publishClientSend", "$CONTROL/dynamic-security/#"),
                    _acl("publishClientReceive", "$CONTROL/dynamic-security/#"),
                    _acl("subscribePattern", "$CONTROL/dynamic-security/#"),
                    _acl("publishClientReceive", "$SYS/#"),
                    _acl("subscribePattern", "$SYS/#"),
                    _acl("publishClientReceive", "#"),
                    _acl("subscribePattern", "#"),
                    _acl("unsubscribePattern", "#"),
                ],
            }
        ],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(document, out, indent=1)
    return True


# --- service accounts --------------------------------------------------------------------------


def _acl_key(acl: Mapping[str, Any]) -> tuple[str, str, bool, int]:
    return (str(acl["acltype"]), str(acl["topic"]), bool(acl.get("allow")), int(acl.get("priority", 0)))


def ensure_role(dynsec: Dynsec, rolename: str, acls: list[ACL]) -> bool:
    """Make the role hold exactly `acls`; True when something changed. A change disconnects the
    role's clients (the plugin does), so an unchanged role is left alone."""
    role = dynsec.get_role(rolename)
    if role is None:
        dynsec.call("createRole", rolename=rolename, acls=acls)
        return True
    have = {_acl_key(a) for a in role.get("acls", [])}
    want = {_acl_key(a) for a in acls}
    if have == want:
        return False
    commands: list[dict[str, Any]] = [
        {"command": "removeRoleACL", "rolename": rolename, "acltype": kind, "topic": topic}
        for kind, topic, _allow, _priority in have - want
    ]
    commands += [
        {"command": "addRoleACL", "rolename": rolename, "acltype": k, "topic": t, "allow": a, "priority": p}
        for k, t, a, p in want - have
    ]
    dynsec.run(*commands)
    return True


def login_works(
    dynsec: Dynsec, login: Credentials, tls_ca: str | None = None, client_id: str | None = None
) -> bool:
    """Whether the broker accepts `login`, by logging in once (clean session, then gone). A board's
    account is bound to its client id, so its check passes `client_id`, and would disconnect the board
    if it were connected: only for boards that are not running."""
    try:
        client = connect(dynsec.endpoint, login, tls_ca, client_id or f"iot-check-{secrets.token_hex(6)}")
    except BrokerAuthError:
        return False
    client.disconnect()
    client.loop_stop()
    return True


def _role_names(client: Mapping[str, Any]) -> set[str]:
    return {str(r.get("rolename")) for r in client.get("roles", []) if isinstance(r, dict)}


def ensure_base(dynsec: Dynsec, gateway: Credentials | None, tls_ca: str | None = None) -> list[str]:
    """The roles and service accounts every broker of the product has (idempotent; run by `iot stack
    up` and by compose's mosquitto-accounts step). Returns what it changed, for the log.

    The operator is the account `dynsec` is logged in as. Giving it its role disconnects it (the
    plugin does that on every role change of a client), so that comes last and `dynsec` reconnects."""
    changed = []
    for rolename, acls in ((OPERATOR_ROLE, operator_acls()), (GATEWAY_ROLE, gateway_acls())):
        if ensure_role(dynsec, rolename, acls):
            changed.append(f"role {rolename}")
    if gateway is not None and _ensure_gateway(dynsec, gateway, tls_ca):
        changed.append(f"account {gateway.username}")
    operator = dynsec.get_client(dynsec.username)
    if operator is None:
        raise BrokerError(f"the operator {dynsec.username!r} is not a client of the dynamic-security plugin")
    if OPERATOR_ROLE not in _role_names(operator):
        dynsec.execute_then_reconnect(
            {
                "command": "addClientRole",
                "username": dynsec.username,
                "rolename": OPERATOR_ROLE,
                "priority": _OPERATOR_ROLE_PRIORITY,
            }
        )
        again = dynsec.get_client(dynsec.username) or {}
        if OPERATOR_ROLE not in _role_names(again):
            raise BrokerError(f"adding role {OPERATOR_ROLE} to {dynsec.username!r} did not take")
        changed.append(f"account {dynsec.username}")
    if changed:
        _log.info("broker_accounts_updated", broker=dynsec.endpoint.url, changed=",".join(changed))
    return changed


def _ensure_gateway(dynsec: Dynsec, gateway: Credentials, tls_ca: str | None) -> bool:
    if gateway.username == dynsec.username:
        raise BrokerError(f"the gateway and the operator must be different accounts ({gateway.username!r})")
    client = dynsec.get_client(gateway.username)
    if client is None:
        dynsec.call(
            "createClient",
            username=gateway.username,
            password=gateway.password,
            textName="iot gateway",
            roles=[{"rolename": GATEWAY_ROLE}],
        )
        return True
    if any(r.startswith(DEVICE_ROLE_PREFIX) for r in _role_names(client)):
        raise BrokerError(f"{gateway.username!r} is a board's account, not the gateway's")
    changed = False
    if GATEWAY_ROLE not in _role_names(client):
        dynsec.call("addClientRole", username=gateway.username, rolename=GATEWAY_ROLE)
        changed = True
    # Setting the password disconnects a running gateway: only when it is not already this one.
    if not login_works(dynsec, gateway, tls_ca):
        dynsec.call("setClientPassword", username=gateway.username, password=gateway.password)
        changed = True
    return changed


# --- boards ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceAccount:
    device: str
    place: str | None  # from its role's topics; None when the role is missing or foreign
    client_id: str | None
    disabled: bool
    acls: list[ACL]


def _place_of(device: str, acls: list[ACL]) -> str | None:
    for acl in acls:
        parts = str(acl.get("topic", "")).split("/")
        if acl.get("acltype") == "publishClientSend" and len(parts) == 4 and parts[2] == device:
            return parts[1]
    return None


def _device_account(device: str, client: Mapping[str, Any], role: Mapping[str, Any]) -> DeviceAccount:
    acls = [a for a in role.get("acls", []) if isinstance(a, dict)]
    return DeviceAccount(
        device=device,
        place=_place_of(device, acls),
        client_id=client.get("clientid"),
        disabled=bool(client.get("disabled", False)),
        acls=acls,
    )


def device_accounts(dynsec: Dynsec) -> dict[str, DeviceAccount]:
    """Every board's account, by device id (two commands, whatever the fleet's size)."""
    roles = {str(r.get("rolename")): r for r in dynsec.list_roles()}
    out = {}
    for client in dynsec.list_clients():
        device = str(client.get("username"))
        if device_role(device) in _role_names(client):
            out[device] = _device_account(device, client, roles.get(device_role(device), {}))
    return out


def device_account(dynsec: Dynsec, device: str) -> DeviceAccount | None:
    """The board's account, None when there is none. Raises BrokerError when the name belongs to an
    account that is not a board's."""
    client = dynsec.get_client(device)
    if client is None:
        return None
    if device_role(device) not in _role_names(client):
        raise BrokerError(
            f"{device!r} is an account of the broker but not a board's ({device_role(device)} missing)"
        )
    return _device_account(device, client, dynsec.get_role(device_role(device)) or {})


def check_device_id(device: str, place: str | None = None) -> None:
    """Raise BrokerError unless `device` (and `place`) may name a board's account."""
    for what, value in (("device", device), ("place", place)):
        if value is not None and not contract.ID_PATTERN.fullmatch(value):
            raise BrokerError(f"{what} {value!r} must match {contract.ID_PATTERN.pattern}")
    if device in RESERVED_NAMES or device.startswith(RESERVED_PREFIX):
        raise BrokerError(
            f"device {device!r} is reserved: the service accounts and ids starting with {RESERVED_PREFIX!r} "
            "are the product's own"
        )


def create_device(dynsec: Dynsec, place: str, device: str, password: str) -> None:
    """The board's role and account, bound to client id = device id. Raises DynsecError when the
    account exists."""
    check_device_id(device, place)
    if dynsec.get_client(device) is not None:
        raise DynsecError("createClient", "Client already exists", f"username {device!r}")
    ensure_role(dynsec, device_role(device), device_acls(place, device))
    dynsec.call(
        "createClient",
        username=device,
        password=password,
        clientid=device,
        textName=f"board in {place}",
        roles=[{"rolename": device_role(device)}],
    )


def reset_device(dynsec: Dynsec, place: str, device: str, password: str) -> None:
    """Give an existing board account (or a new one) this place and password; a connected board is
    disconnected by the plugin and must log in with the new password."""
    check_device_id(device, place)
    if device_account(dynsec, device) is None:
        create_device(dynsec, place, device, password)
        return
    ensure_role(dynsec, device_role(device), device_acls(place, device))
    dynsec.run(
        {"command": "setClientPassword", "username": device, "password": password},
        {"command": "setClientId", "username": device, "clientid": device},
        {"command": "enableClient", "username": device},
    )


def delete_device(dynsec: Dynsec, device: str) -> bool:
    """Delete the board's account and role: the plugin closes its connection at once, without its
    last will, and refuses it from then on. False when there was no account."""
    if device_account(dynsec, device) is None:
        return False
    # deleteClient first: the plugin closes the board's connection inside that command, right after
    # rewriting its file (mosquitto_kick_client_by_username -> do_disconnect), before the role goes.
    dynsec.run(
        {"command": "deleteClient", "username": device},
        {"command": "deleteRole", "rolename": device_role(device)},
    )
    return True
