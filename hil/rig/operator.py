"""The operator at the rig's terminal: what a step cannot do by itself on a real board (power for a
board with `power: manual`, no relay) it asks for, and waits until the operator says it is done.

Unattended (no terminal: CI, a pipe, pytest) there is no operator, and such a step fails with a
message saying so, rather than waiting for an answer that never comes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from hil.errors import HilError

# Asks for one action ("unplug board a's USB cable") and returns once the operator confirms it.
Operator = Callable[[str], None]


class NoAnswer(HilError, EOFError):
    """The terminal closed (Ctrl-D) instead of confirming."""


def console_operator(stdin: TextIO | None = None, stdout: TextIO | None = None) -> Operator | None:
    """An operator on the terminal, or None when the run is unattended (stdin is not a terminal)."""
    source = sys.stdin if stdin is None else stdin
    sink = sys.stdout if stdout is None else stdout
    try:
        interactive = source.isatty()
    except ValueError:  # a closed stream
        interactive = False
    if not interactive:
        return None

    def ask(action: str) -> None:
        sink.write(f"\a\n>>> OPERATOR: {action}, then press Enter ")
        sink.flush()
        if not source.readline():
            raise NoAnswer(f"no answer from the operator to: {action}")

    return ask
