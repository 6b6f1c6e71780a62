"""The `iot` command. Each area registers its own subcommands; this module only dispatches.

Subcommand modules expose `register(subparsers)`, which adds parsers whose `func(args) -> int`
runs the command. Errors of the project's own kinds are printed as `Type: message` (exit 1).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from backend import cli as backend_cli
from fleetops import cli as fleet_cli
from gateway import cli as gateway_cli
from hil import cli as hil_cli
from iot import log
from iot.app import demo
from iot.app.stack import cli as stack_cli
from iot.devices import cli as devices_cli
from iot.errors import IotError

# The areas that contribute subcommands, in help order.
AREAS = (stack_cli, devices_cli, fleet_cli, gateway_cli, backend_cli, hil_cli, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iot", description="IoT sensor streaming: stack, services, boards")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for area in AREAS:
        area.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        log.setup(args.log_level)
        code: int = args.func(args)
    except IotError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
