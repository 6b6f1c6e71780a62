"""The strategy: runs a rig's scenarios over its boards and keeps the record.

Per board a small state machine (labgrid's strategy): off -> online (powered, publishing) ->
broken. A board that fails a step is broken: the rest of that scenario and its later scenarios are
skipped for it, not cascaded. Steps run in lockstep over the boards of a scenario (each board in
its own thread, so a 60 s outage costs 60 s however many boards), rig-wide steps (broker_restart,
wait) once.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from hil import paths
from hil.errors import HilError
from hil.rig.boards import RigBoard
from hil.rig.operator import Operator
from hil.rig.preflight import firmware_version
from hil.rig.record import (
    FAILED,
    PASSED,
    SKIPPED,
    BoardEvent,
    BoardSeries,
    CaseRecord,
    RunRecord,
    StepRecord,
)
from hil.rig.session import RigSession
from hil.rig.spec import VIRTUAL_ONLY, Rig, Scenario, Step
from hil.rig.steps import BOARD_STEPS, GLOBAL_STEPS, Context, StepFailedWith, run_global
from iot import contract, log

_log = log.get("hil.rig")
CONSOLE_KEEP = 20_000


class BoardState(Enum):
    OFF = "off"  # made, not powered yet
    ONLINE = "online"  # powered and publishing: steps run on it
    BROKEN = "broken"  # a step failed: its later steps and scenarios are skipped, not cascaded


@dataclass
class Strategy:
    """One board's state machine: OFF -> ONLINE by power_up, ONLINE -> BROKEN by the first failure
    (or OFF -> BROKEN when it cannot be powered up); nothing leaves BROKEN."""

    board: RigBoard
    state: BoardState = BoardState.OFF
    broken: str = ""  # why, once BROKEN

    def power_up(self) -> None:
        try:
            self.board.power_up()
        except HilError as exc:
            self.fail(f"power up failed: {exc}")
            return
        self.state = BoardState.ONLINE

    def fail(self, why: str) -> None:
        self.state, self.broken = BoardState.BROKEN, why


class Runner:
    def __init__(
        self,
        rig: Rig,
        workdir: Path,
        say: Callable[[str], None] = print,
        board: str | None = None,
        scenario: str | None = None,
        operator: Operator | None = None,
    ) -> None:
        self.rig = rig
        self.operator = operator
        self.workdir = workdir
        self.started = time.monotonic()
        self._say = say
        self.boards = [b for b in rig.boards if board is None or b.id == board]
        self.scenarios = [s for s in rig.scenarios if scenario is None or s.name == scenario]
        if not self.boards:
            raise HilError(f"no board {board!r} in {rig.path}; boards: {', '.join(b.id for b in rig.boards)}")
        if not self.scenarios:
            raise HilError(
                f"no scenario {scenario!r} in {rig.path}; "
                f"scenarios: {', '.join(s.name for s in rig.scenarios)}"
            )

    def say(self, line: str) -> None:
        self._say(f"[{time.monotonic() - self.started:6.1f}s] {line}")

    def run(self) -> RunRecord:
        record = RunRecord(self.rig.name, self.rig.run_id, time.time(), meta=run_meta(self.rig))
        session = RigSession(self.rig, self.workdir, self.say, self.boards, record.events, self.operator)
        ctx = session.ctx
        strategies: list[Strategy] = []
        try:
            session.start_stack()
            for spec in self.boards:
                board = session.make_board(spec)
                strategy = Strategy(board)
                strategies.append(strategy)
                strategy.power_up()
                if strategy.state is BoardState.ONLINE:
                    self.say(f"board {spec.id} ({spec.kind}) device={spec.device} port={board.port} up")
                else:
                    self.say(f"board {spec.id} BROKEN: {strategy.broken}")
            for n, scenario in enumerate(self.scenarios, 1):
                self.say(f"scenario {n}/{len(self.scenarios)} {scenario.name}: {len(scenario.steps)} steps")
                record.cases += self._scenario(ctx, scenario, strategies)
        finally:
            for s in strategies:
                self._collect_events(ctx, s.board, record)
                record.boards.append(
                    {
                        "id": s.board.id,
                        "device": s.board.device,
                        "kind": s.board.spec.kind,
                        "port": s.board.port,
                        "place": s.board.place,
                        "state": s.state.value,
                        "broken": s.broken,
                        "firmware": ctx.firmware.get(s.board.id, ""),
                    }
                )
            session.down()
            record.ended = time.time()
        return record

    def _scenario(self, ctx: Context, scenario: Scenario, strategies: list[Strategy]) -> list[CaseRecord]:
        targets = [s for s in strategies if not scenario.boards or s.board.id in scenario.boards]
        ctx.scenario_start = time.time()
        ctx.faults.clear()
        cases: dict[str, CaseRecord] = {}
        offsets: dict[str, int] = {}
        for s in targets:
            b = s.board
            cases[b.id] = CaseRecord(scenario.name, b.id, b.device, b.spec.kind, b.port, ctx.scenario_start)
            offsets[b.id] = len(b.console.text())
            if s.state is BoardState.BROKEN:
                cases[b.id].outcome, cases[b.id].detail = SKIPPED, f"board broken earlier: {s.broken}"
        for step in scenario.steps:
            active = [s for s in targets if s.state is BoardState.ONLINE]
            if not active:
                break
            if step.name in GLOBAL_STEPS:
                self._global(ctx, step, active, cases)
                continue
            with ThreadPoolExecutor(max_workers=len(active)) as pool:
                list(pool.map(lambda s, st=step: self._board_step(ctx, st, s, cases[s.board.id]), active))
        for s in targets:
            case = cases[s.board.id]
            case.ended = time.time()
            case.firmware = ctx.firmware.get(s.board.id, "")
            case.console = s.board.console.text()[offsets[s.board.id] :][-CONSOLE_KEEP:]
            if case.outcome != SKIPPED:
                self.say(f"  {case.outcome.upper()} {scenario.name} on {s.board.id} ({case.seconds:.0f}s)")
        return list(cases.values())

    def _global(self, ctx: Context, step: Step, active: list[Strategy], cases: dict[str, CaseRecord]) -> None:
        started = time.time()
        self.say(f"  {StepRecord(step.name, step.where, started, args=dict(step.args)).label}")
        outcome, detail = PASSED, ""
        try:
            run_global(ctx, step, [s.board for s in active])
        except HilError as exc:
            outcome, detail = FAILED, f"{type(exc).__name__}: {exc}"
        for s in active:
            rec = StepRecord(
                step.name, step.where, started, time.time(), outcome, detail, args=dict(step.args)
            )
            cases[s.board.id].steps.append(rec)
            if outcome == FAILED:
                self._break(s, cases[s.board.id], rec)

    def _board_step(self, ctx: Context, step: Step, strategy: Strategy, case: CaseRecord) -> None:
        board = strategy.board
        rec = StepRecord(step.name, step.where, time.time(), args=dict(step.args))
        case.steps.append(rec)
        if step.name in VIRTUAL_ONLY and not board.spec.virtual:
            rec.ended, rec.outcome, rec.detail = time.time(), SKIPPED, "virtual boards only"
            return
        try:
            rec.measurements = BOARD_STEPS[step.name](ctx, board, step)
        except StepFailedWith as exc:
            rec.measurements, rec.outcome, rec.detail = exc.measurements, FAILED, str(exc)
        except HilError as exc:
            rec.outcome, rec.detail = FAILED, f"{type(exc).__name__}: {exc}"
        rec.ended = time.time()
        ctx.events.append(BoardEvent(board.id, "step", rec.started, rec.ended, f"{step.name} {rec.outcome}"))
        shown = " ".join(f"{m.name}={m.value:g}" for m in rec.measurements)
        self.say(f"  {board.id} {rec.label} {rec.outcome} ({rec.seconds:.1f}s) {shown}".rstrip())
        if rec.outcome == FAILED:
            self._break(strategy, case, rec)

    def _break(self, strategy: Strategy, case: CaseRecord, rec: StepRecord) -> None:
        strategy.fail(f"{rec.where} failed: {rec.detail}")
        case.outcome, case.detail = FAILED, strategy.broken
        self.say(
            f"  board {strategy.board.id} BROKEN at {rec.where}: {rec.detail}; "
            "its later scenarios are skipped"
        )

    def _collect_events(self, ctx: Context, board: RigBoard, record: RunRecord) -> None:
        """Readings and final windows onto the board's timeline and plots, and its console, for the
        HTML report."""
        series = BoardSeries(board.id)
        record.series.append(series)
        record.consoles[board.id] = board.console.text()[-CONSOLE_KEEP * 10 :]
        probe = ctx.stack.probe
        if probe is not None:
            for m in probe.messages("reading", board.device):
                try:
                    r = m.json()
                    ts = int(r["ts"]) / 1000
                except (ValueError, KeyError, TypeError):
                    continue
                label = f"boot {r.get('boot')} seq {r.get('seq')} t={r.get('temperature')}"
                record.events.append(BoardEvent(board.id, "reading", ts, m.at, label))
                expected = board.sensors.expected(ts) or {}
                for metric in contract.METRICS:
                    value = r.get(metric)
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        series.readings.setdefault(metric, []).append((ts, float(value)))
                    if metric in expected:
                        series.expected.setdefault(metric, []).append((ts, float(expected[metric])))
        if ctx.stack.db is not None:
            try:
                for d in ctx.stack.db["sensor_windows"].find({"device": board.device, "kind": "tumbling"}):
                    mean = (d.get("temperature") or {}).get("mean")
                    start, end = d["start"].timestamp(), d["end"].timestamp()
                    record.events.append(
                        BoardEvent(
                            board.id,
                            "window",
                            start,
                            end,
                            f"count {d.get('count')} t_mean={mean} final={d.get('final')}",
                        )
                    )
                    for metric in contract.METRICS:
                        m_mean = (d.get(metric) or {}).get("mean")
                        if d.get("final") and isinstance(m_mean, (int, float)):
                            series.windows.setdefault(metric, []).append((start, end, float(m_mean)))
            except Exception as exc:
                self.say(f"could not read windows of {board.id} for the report: {exc}")


def run_meta(rig: Rig) -> dict[str, str]:
    """Where and what the run was: the report's header and the JUnit suite's properties."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "host": socket.gethostname(),
        "rig_file": str(rig.path),
        "firmware_dir": str(rig.firmware.dir),
        "firmware_version": rig.firmware.version or firmware_version(rig.firmware.dir),
        "commit": _commit(),
        "run_id": rig.run_id,
    }


def _commit() -> str:
    """The checkout's commit, `+changes` when the working tree differs from it."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "-C", str(paths.REPO), *args], capture_output=True, text=True, timeout=10, check=False
        )

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = git("diff", "--quiet", "HEAD").returncode != 0
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"
    return head.stdout.strip() + (" +changes" if dirty else "")
