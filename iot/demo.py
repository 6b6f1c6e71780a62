"""`iot demo`: the whole product on this machine. Until every part exists it brings up what does and
says plainly what is missing."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from iot.stack.config import StackConfig
from iot.stack.manager import Stack, StackError

_PARTS = {
    "gateway.service": "the MQTT -> Kafka gateway (`iot gateway`)",
    "backend.app": "the Faust window backend (`iot backend`)",
    "hil.boards": "virtual boards (`iot boards`)",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("demo", help="run the whole product locally: stack, gateway, backend, boards")
    parser.set_defaults(func=run)


def run(_args: argparse.Namespace) -> int:
    stack = Stack(StackConfig.from_env())
    try:
        statuses = stack.up()
    except StackError as exc:
        print(f"StackError: {exc}", file=sys.stderr)
        return 1
    for status in statuses:
        print(f"  {status.name:<14} {'healthy' if status.healthy else 'DOWN'} on port {status.port}")
    missing = [what for module, what in _PARTS.items() if importlib.util.find_spec(module) is None]
    if missing:
        print("The native stack is up. Not built yet, so the demo stops here:")
        for what in missing:
            print(f"  - {what}")
        print("Stop the stack with `.venv/bin/iot stack down`.")
        return 0
    print("All parts exist; the live demo view is not wired up yet (end-to-end issue).")
    return 0
