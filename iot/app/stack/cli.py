"""`iot stack install | up | down | status [--json]`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from iot.app.stack import install, tls
from iot.app.stack.config import VARIABLES, ConfigError, StackConfig, tls_hosts
from iot.app.stack.manager import Stack, StackError
from iot.env import writable_dir

_EPILOG = (
    VARIABLES.help()
    + """

The ports of IOT_MQTT_URL, IOT_KAFKA_BOOTSTRAP and IOT_MONGO_URI are where Mosquitto, Kafka and FerretDB
listen, so the gateway, the backend and the boards find them with the same variables."""
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "stack",
        help="the native stack: Mosquitto (plain and TLS), Kafka, FerretDB, Prometheus, node-exporter",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("install", help="install what the stack needs (idempotent, cached)").set_defaults(
        func=_install
    )
    up = actions.add_parser("up", help="start the stack; returns when every service answers a real client")
    up.add_argument("services", nargs="*", help="only these services (default: all)")
    up.add_argument("--json", action="store_true", help="print their status as `status --json` does")
    up.set_defaults(func=_up)
    down = actions.add_parser("down", help="stop the services this stack started")
    down.add_argument("services", nargs="*")
    down.set_defaults(func=_down)
    kill = actions.add_parser(
        "kill",
        help="SIGKILL services at once, as a crash would (fault drills); `up` brings them back on their data",
    )
    kill.add_argument("services", nargs="+")
    kill.set_defaults(func=_kill)
    certs = actions.add_parser(
        "certs",
        help="make (or renew) a broker CA and certificate; `up` does it for the native broker",
        description="Writes ca.crt, ca.key, server.crt and server.key into DIR, reusing valid ones "
        "(the same files `up` keeps in <state>/tls/). For the compose broker: "
        "--dir compose/mosquitto/certs --hosts <the names boards connect to>.",
    )
    certs.add_argument("--dir", type=Path, default=None, help="where (default: <state>/tls)")
    certs.add_argument(
        "--hosts",
        default="",
        help="comma-separated names and addresses for the certificate, besides localhost and 127.0.0.1",
    )
    certs.set_defaults(func=_certs)
    status = actions.add_parser("status", help="health of each service")
    status.add_argument("--json", action="store_true", help="one JSON object per service, in a list")
    status.set_defaults(func=_status)


def _stack(writes: bool = True) -> Stack:
    """The stack of this environment's configuration; a command that `writes` gets its state and
    cache folders proven writable first, so a bad one is named here, not by a failing service."""
    cfg = StackConfig.from_env()
    if writes:
        writable_dir("IOT_STACK_DIR", cfg.state_dir)
        writable_dir("IOT_CACHE_DIR", cfg.cache_dir)
    return Stack(cfg)


def _install(_args: argparse.Namespace) -> int:
    try:
        install.ensure_all(_stack().cfg)
    except install.InstallError as exc:
        print(f"InstallError: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_table(rows: list[dict[str, object]]) -> None:
    for row in rows:
        mark = "healthy " if row["healthy"] else "DOWN    "
        print(f"{mark}{row['name']:<14} port {row['port']:<6} pid {row['pid'] or '-':<8} {row['detail']}")


def _up(args: argparse.Namespace) -> int:
    stack = _stack()
    started = time.monotonic()
    try:
        statuses = stack.up(args.services or None)
    except (StackError, install.InstallError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
    else:
        _print_table([s.as_dict() for s in statuses])
        print(f"stack up in {time.monotonic() - started:.1f}s; state in {stack.cfg.state_dir}")
    return 0 if all(s.healthy for s in statuses) else 1


def _down(args: argparse.Namespace) -> int:
    try:
        stopped = _stack().down(args.services or None)
    except StackError as exc:
        print(f"StackError: {exc}", file=sys.stderr)
        return 1
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def _kill(args: argparse.Namespace) -> int:
    stack = _stack()
    try:
        for name in args.services:
            pid = stack.kill(name)
            print(f"killed {name} (pid {pid})" if pid is not None else f"{name} was not running")
    except StackError as exc:
        print(f"StackError: {exc}", file=sys.stderr)
        return 1
    return 0


def _certs(args: argparse.Namespace) -> int:
    cfg = _stack().cfg
    try:
        hosts = list(dict.fromkeys([*cfg.tls_hosts, *tls_hosts(cfg.host, args.hosts, "--hosts")]))
        files = tls.ensure(args.dir or cfg.tls_dir, hosts)
        until = tls.expiry(files.cert)
    except (ConfigError, tls.CertificateError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"CA {files.ca} (the file boards and the gateway verify the broker with)")
    names = ", ".join(sorted(tls.san_hosts(files.cert)))
    print(f"server certificate {files.cert} for {names}, valid until {until:%Y-%m-%d}")
    return 0


def _status(args: argparse.Namespace) -> int:
    statuses = [s.as_dict() for s in _stack(writes=False).status()]
    if args.json:
        print(json.dumps(statuses, indent=2))
    else:
        _print_table(statuses)
    return 0 if all(s["healthy"] for s in statuses) else 1
