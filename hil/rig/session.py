"""A rig held up for hand-written tests (the pytest plugin) and for the runner: stack up, boards
powered, steps on call.

    rig.step(board, "cut_network", seconds=5)
    measurements = rig.step(board, "expect", windows=False, latency_s=5)

A step is the same code and the same arguments (with their defaults and checks) as in a rig file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hil.errors import HilError
from hil.rig.boards import RigBoard
from hil.rig.operator import Operator
from hil.rig.record import BoardEvent, Measurement
from hil.rig.spec import BoardSpec, Rig, parse_step
from hil.rig.stack import RigStack
from hil.rig.steps import BOARD_STEPS, GLOBAL_STEPS, Context, run_global


class RigSession:
    def __init__(
        self,
        rig: Rig,
        workdir: Path,
        say: Callable[[str], None] = print,
        boards: Sequence[BoardSpec] | None = None,
        events: list[BoardEvent] | None = None,
        operator: Operator | None = None,
    ) -> None:
        self.rig = rig
        self.operator = operator
        self.workdir = workdir
        self.say = say
        self.specs = list(rig.boards if boards is None else boards)
        self.stack = RigStack(rig, workdir, say)
        self.ctx = Context(rig, self.stack, say, events if events is not None else [])
        self.boards: dict[str, RigBoard] = {}
        self.logins: dict[str, dict[str, str]] = {}

    def start_stack(self) -> None:
        self.stack.up({b.device for b in self.specs})
        # Virtual boards get accounts as real ones do (`iot devices add`); a real board's login is in
        # the rig file (its flash keeps it), and so is one a rig file gives a virtual board.
        self.logins = self.stack.provision(
            [(b.place, b.device) for b in self.specs if b.virtual and "mqtt_user" not in b.config]
        )

    def make_board(self, spec: BoardSpec) -> RigBoard:
        """The board's driver, with its fault proxy to the rig's broker (not powered yet)."""
        host, port = self.stack.broker_host_port
        stack = self.rig.stack
        board = RigBoard(
            spec,
            self.workdir,
            (host, port),
            stack.proxy_host,
            stack.advertise_host,
            self.operator,
            self.logins.get(spec.device, {}),
        )
        self.boards[spec.id] = board
        return board

    def up(self) -> RigSession:
        self.start_stack()
        for spec in self.specs:
            self.make_board(spec).power_up()
        self.begin()
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
        """Every board off and its proxy closed, then the stack; a board that will not stop is
        reported and the rest still go down."""
        try:
            for board in self.boards.values():
                try:
                    board.shutdown()
                except HilError as exc:
                    self.say(f"board {board.id} did not shut down cleanly: {exc}")
        finally:
            self.stack.down()
