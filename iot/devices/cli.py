"""`iot devices add | list | show | remove | setup`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from iot import contract
from iot.broker import accounts, credentials
from iot.devices.provision import DevicesSettings, DeviceView, Provisioner, board_config, write_board_config
from iot.env import parse_mqtt_url

_EPILOG = """The broker is IOT_MQTT_URL (IOT_MQTT_TLS_CA for mqtts://), the registry IOT_MONGO_URI; the
operator's account comes from IOT_MQTT_OPERATOR_USERNAME/IOT_MQTT_OPERATOR_PASSWORD, else from the native
stack's credentials file (<IOT_STACK_DIR>/credentials.json, written by `iot stack up`)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "devices",
        help="provision boards: broker account and ACL, registry, board config",
        epilog=_EPILOG,
    )
    actions = parser.add_subparsers(dest="action", required=True)
    add = actions.add_parser(
        "add",
        help="a board's account (its own topics only), registry entry and config; shows its password once",
        epilog=_EPILOG,
    )
    add.add_argument("device", help="device id = MQTT user = client id")
    add.add_argument("--place", required=True, help="the place id in its topics")
    add.add_argument(
        "--out",
        default=None,
        help="write the board's config to OUT/DEVICE.json (0600) for `iot flash`; `-` prints it instead",
    )
    add.add_argument(
        "--broker",
        default=None,
        help="the broker URL as the board reaches it, for its config (default: IOT_MQTT_URL)",
    )
    add.add_argument(
        "--replace",
        action="store_true",
        help="the board exists: new password and place (it must be re-flashed)",
    )
    add.set_defaults(func=_add)
    lst = actions.add_parser("list", help="every board: place, online, last seen, firmware, config, update")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_list)
    show = actions.add_parser("show", help="one board: registry entry and broker account with its ACL")
    show.add_argument("device")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_show)
    remove = actions.add_parser(
        "remove", help="revoke a board now: its connection is closed and refused from then on"
    )
    remove.add_argument("device")
    remove.set_defaults(func=_remove)
    setup = actions.add_parser(
        "setup",
        help="the broker's roles and the gateway's account (IOT_MQTT_USERNAME/IOT_MQTT_PASSWORD); "
        "`iot stack up` does it natively, compose's broker-accounts step runs it",
    )
    setup.set_defaults(func=_setup)


def _provisioner() -> Provisioner:
    return Provisioner.open(DevicesSettings.from_env())


def _add(args: argparse.Namespace) -> int:
    settings = DevicesSettings.from_env()
    board_broker = parse_mqtt_url(args.broker, "--broker") if args.broker else settings.endpoint
    accounts.check_device_id(args.device, args.place)
    with Provisioner.open(settings) as prov:
        password = prov.add(args.place, args.device, replace=args.replace)
    config = board_config(args.place, args.device, password, board_broker)
    # The config (and so the password) goes where it was asked for; everything else to stderr when
    # the config is printed, so `--out - > board.json` leaves a clean file.
    say = sys.stderr if args.out == "-" else sys.stdout
    print(f"{'replaced' if args.replace else 'added'} {args.device} in place {args.place}", file=say)
    if args.out == "-":
        print(json.dumps(config, indent=1))
        print("its password is in that config, shown this once: the broker keeps only a hash", file=say)
    elif args.out:
        path = write_board_config(Path(args.out), config)
        print(f"password: {password}  (shown this once; the broker keeps only a hash)", file=say)
        print(f"board config: {path} (mode 0600); add wifi_ssid and wifi_password, then", file=say)
        print(f"  iot flash --port /dev/ttyUSB0 --config {path}", file=say)
    else:
        print(f"password: {password}  (shown this once; the broker keeps only a hash)", file=say)
        print(f"MQTT user and client id: {args.device}; broker for the board: {board_broker.url}", file=say)
    if board_broker.host in ("127.0.0.1", "localhost", "::1"):
        print(
            f"note: the board's broker is {board_broker.url}, this machine's loopback; a real board needs "
            "--broker with an address it can reach",
            file=sys.stderr,
        )
    return 0


def _when(value: Any) -> str:
    if not isinstance(value, dt.datetime):
        return "-"
    seconds = (dt.datetime.now(dt.UTC) - value).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{value:%Y-%m-%d %H:%M}Z"


def _row(view: DeviceView) -> dict[str, Any]:
    doc = view.registry or {}
    return {
        "device": view.device,
        "place": view.place,
        "online": bool(doc.get("online")),
        "status": doc.get("status"),
        "last_seen": doc["last_seen"].isoformat() if isinstance(doc.get("last_seen"), dt.datetime) else None,
        "fw": doc.get("fw"),
        "boot": doc.get("boot"),
        contract.HEALTH_CONFIG_REV: doc.get(contract.HEALTH_CONFIG_REV),
        contract.HEALTH_UPDATE_STATE: doc.get(contract.HEALTH_UPDATE_STATE),
        "problem": view.problem or None,
    }


def _list(args: argparse.Namespace) -> int:
    with _provisioner() as prov:
        views = prov.views()
    if args.json:
        print(json.dumps([_row(v) for v in views], indent=1))
        return 0
    if not views:
        print("no devices: `iot devices add DEVICE --place PLACE` provisions one")
        return 0
    head = f"{'DEVICE':<24} {'PLACE':<14} {'ONLINE':<7} {'LAST SEEN':<17} {'FW':<12} {'CONFIG':<6} UPDATE"
    print(head)
    for view in views:
        doc = view.registry or {}
        online = "yes" if doc.get("online") else ("no" if doc.get("status") else "-")
        print(
            f"{view.device:<24} {view.place or '-':<14} {online:<7} {_when(doc.get('last_seen')):<17} "
            f"{doc.get('fw') or '-':<12} {doc.get(contract.HEALTH_CONFIG_REV) or '-'!s:<6} "
            f"{doc.get(contract.HEALTH_UPDATE_STATE) or '-'}"
            + (f"  ! {view.problem}" if view.problem else "")
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    with _provisioner() as prov:
        view = prov.view(args.device)
    if view is None:
        print(f"no device {args.device!r} in the registry or on the broker", file=sys.stderr)
        return 1
    row = _row(view)
    account = view.account
    row["account"] = (
        None
        if account is None
        else {"client_id": account.client_id, "disabled": account.disabled, "acls": account.acls}
    )
    if args.json:
        print(json.dumps(row, indent=1, default=str))
        return 0
    for key, value in row.items():
        if key != "account":
            print(f"{key:<13} {'-' if value is None else value}")
    if account is None:
        print("account       none")
        return 0
    print(f"client id     {account.client_id}{'  (disabled)' if account.disabled else ''}")
    for acl in sorted(account.acls, key=lambda a: (-int(a.get("priority", 0)), str(a["acltype"]))):
        verb = "allow" if acl.get("allow") else "deny "
        print(f"acl           {verb} {acl['acltype']:<20} {acl['topic']}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    with _provisioner() as prov:
        existed = prov.remove(args.device)
    if not existed:
        print(f"no device {args.device!r} in the registry or on the broker", file=sys.stderr)
        return 1
    print(
        f"removed {args.device}: its account is deleted (the broker closed its connection and refuses it), "
        "its retained topics cleared, its registry entry deleted"
    )
    return 0


def _setup(_args: argparse.Namespace) -> int:
    settings = DevicesSettings.from_env(registry=False)
    gateway = credentials.find(credentials.GATEWAY)
    with settings.dynsec() as dynsec:
        changed = accounts.ensure_base(dynsec, gateway, settings.tls_ca)
    print(
        f"broker {settings.endpoint.url}: roles and accounts "
        + (f"updated ({', '.join(changed)})" if changed else "already in place")
        + ("" if gateway else "; no gateway account (IOT_MQTT_USERNAME is not set)")
    )
    return 0
