"""A rig held up for hand-written tests (the pytest plugin): stack up, boards powered, steps on call.

    rig.step(board, "cut_network", seconds=5)
    measurements = rig.step(board, "expect", windows=False, latency_s=5)

A step is the same code and the same arguments (with their defaults and checks) as in a rig file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hil.errors import HilError
from hil.rig.boards import RigBoard
from hil.rig.record import Measurement
from hil.rig.spec import Rig, parse_step
from hil.rig.stack import RigStack
from hil.rig.steps import BOARD_STEPS, GLOBAL_STEPS, Context, run_global


class RigSession:
    def __init__(self, rig: Rig, workdir: Path, say: Callable[[str], None] = print) -> None:
        self.rig = rig
        self.workdir = workdir
        self.stack = RigStack(rig, workdir, say)
        self.ctx = Context(rig, self.stack, say)
        self.boards: dict[str, RigBoard] = {}

    def up(self) -> RigSession:
        self.stack.up({b.device for b in self.rig.boards})
        host, port = self.stack.broker_host_port
        for spec in self.rig.boards:
            board = RigBoard(
                spec, self.workdir, (host, port), self.rig.stack.proxy_host, self.rig.stack.advertise_host
            )
            self.boards[spec.id] = board
            board.power_up()
        self.ctx.scenario_start = time.time()
        return self

    def begin(self) -> None:
        """Start a new test: expectations look at what happened from here on."""
        self.ctx.scenario_start = time.time()
        self.ctx.faults.clear()

    def step(self, board: RigBoard | None, name: str, **args: Any) -> list[Measurement]:
        step = parse_step({name: args} if args else name, f"step {name}")
        if step.name in GLOBAL_STEPS:
            run_global(self.ctx, step, list(self.boards.values()))
            return []
        if board is None:
            raise HilError(f"step {name} needs a board")
        return BOARD_STEPS[step.name](self.ctx, board, step)

    def down(self) -> None:
        for board in self.boards.values():
            board.shutdown()
        self.stack.down()
