"""The `iot` command. Each area registers its own subcommands; this module only dispatches.

Subcommand modules expose `register(subparsers)`, which adds parsers whose `func(args) -> int`
runs the command. Errors of the project's own kinds are printed as `Type: message` (exit 1).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from iot import log
from iot.errors import IotError

# Areas that contribute subcommands, in help order. A module missing here is skipped, so a
# partially built tree still gives a working CLI for what exists.
_AREAS = (
    "iot.app.stack.cli",
    "iot.devices.cli",
    "fleetops.cli",
    "gateway.cli",
    "backend.cli",
    "hil.cli",
    "iot.app.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iot", description="IoT sensor streaming: stack, services, boards")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
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
