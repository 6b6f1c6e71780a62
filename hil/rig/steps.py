"""What each step of a scenario does to one board (or, for broker_restart and wait, to the rig).

A step raises StepFailed (or a HilError) with what happened and what to look at; it returns its
measurements. Timed faults sleep for their scripted duration: that is the stimulus, not a wait for
something to happen (those poll with a deadline).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hil.errors import HilError
from hil.rig import fleet_steps
from hil.rig.boards import RigBoard
from hil.rig.checks import delivered, latency, windows
from hil.rig.drivers import FlashOptions
from hil.rig.record import FAILED, BoardEvent, Measurement
from hil.rig.spec import Rig, Step
from hil.rig.stack import RigStack

GLOBAL_STEPS = {"broker_restart", "wait"}


class StepFailed(HilError):
    """A step's expectation did not hold; the message says what happened and what to look at."""


@dataclass
class Context:
    rig: Rig
    stack: RigStack
    say: Callable[[str], None]
    events: list[BoardEvent] = field(default_factory=list)
    faults: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # board id -> spans
    # board id -> spans the rig had the board down to flash it: readings it held then are left out of
    # latency, but unlike a fault's the seconds after one are not (hil/rig/checks.py _held_by_flash)
    flashes: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    scenario_start: float = 0.0
    firmware: dict[str, str] = field(default_factory=dict)  # board id -> version seen
    cut_since: dict[str, float] = field(default_factory=dict)  # board id -> network cut until restored
    # board id -> the version an update left it on (verify_version then expects it, not the flashed one)
    updated_to: dict[str, str] = field(default_factory=dict)
    ota: fleet_steps.OtaKit | None = None  # the run's update keys and bundles, made at the first flash

    def fault(self, board: str, kind: str, start: float, end: float, label: str) -> None:
        self.faults.setdefault(board, []).append((start, end))
        self.events.append(BoardEvent(board, kind, start, end, label))


def wait_online(ctx: Context, board: RigBoard, since: float, timeout_s: float) -> float:
    """Seconds until a fresh birth message (`online`, not retained) arrived after `since`."""
    assert ctx.stack.probe is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for m in ctx.stack.probe.messages("status", board.device):
            if m.payload == b"online" and not m.retain and m.at >= since:
                return m.at - since
        time.sleep(0.1)
    raise StepFailed(
        f"{board.id}: no birth message within {timeout_s:.0f}s; see its console ({board.port}) in the report"
    )


def _born_since(ctx: Context, board: RigBoard, since: float) -> float | None:
    """When the rig's probe first saw a fresh birth message of the board after `since`."""
    assert ctx.stack.probe is not None
    births = [
        m.at
        for m in ctx.stack.probe.messages("status", board.device)
        if m.payload == b"online" and not m.retain and m.at >= since
    ]
    return min(births, default=None)


def _flash(ctx: Context, board: RigBoard, step: Step) -> list[Measurement]:
    options = FlashOptions(
        firmware=ctx.rig.firmware.dir,
        mpy=ctx.rig.firmware.mpy,
        wait_s=float(step.arg("wait_s")),
        say=lambda line: ctx.say(f"  {board.id}: {line}"),
        username=ctx.stack.login[0],
        password=ctx.stack.login[1],
        ota_key=fleet_steps.kit(ctx).public,  # it takes the run's updates (ota_push)
    )
    result = board.flash.flash(board.write_config(), ctx.stack.broker_url, options)
    back = _born_since(ctx, board, result.stopped_at) or time.time()
    ctx.flashes.setdefault(board.id, []).append((result.stopped_at, back))
    ctx.events.append(BoardEvent(board.id, "stimulus", result.stopped_at, back, "flash"))
    ctx.firmware[board.id] = result.fw
    ctx.updated_to.pop(board.id, None)
    return [
        Measurement.check("flash_copy_s", round(result.copy_s, 2), None, "s"),
        Measurement.check("flash_online_s", round(result.online_s, 2), float(step.arg("wait_s")), "s"),
    ]


def _verify_version(ctx: Context, board: RigBoard, step: Step) -> list[Measurement]:
    assert ctx.stack.probe is not None
    deadline = time.monotonic() + float(step.arg("timeout_s"))
    fw = ""
    while time.monotonic() < deadline and not fw:
        health = [m for m in ctx.stack.probe.messages("health", board.device) if not m.retain]
        fw = str(health[-1].json().get("fw", "")) if health else ""
        if not fw:
            time.sleep(0.2)
    ctx.firmware[board.id] = fw
    want = ctx.updated_to.get(board.id) or ctx.rig.firmware.version
    if not fw:
        raise StepFailed(f"{board.id}: no health message with a firmware version; is the board online?")
    if want and fw != want:
        raise StepFailed(
            f"{board.id}: runs firmware {fw!r}, the rig expects {want!r} "
            "(firmware.version, or the version its last update left)"
        )
    return []


def _set_environment(ctx: Context, board: RigBoard, step: Step) -> list[Measurement]:
    values = {k: float(v) for k, v in step.args.items() if v is not None}
    now = time.time()
    board.sensors.set_environment(now, values)
    ctx.events.append(
        BoardEvent(
            board.id,
            "stimulus",
            now,
            now,
            "environment " + ", ".join(f"{k}={v:g}" for k, v in values.items()),
        )
    )
    return []


def _cut_network(ctx: Context, board: RigBoard, step: Step) -> list[Measurement]:
    start = time.time()
    board.proxy.cut()
    if not step.arg("seconds"):
        ctx.cut_since[board.id] = start  # until restore_network
        return []
    time.sleep(float(step.arg("seconds")))
    board.proxy.restore()
    ctx.fault(board.id, "fault", start, time.time(), f"network cut {step.arg('seconds'):g}s")
    return []


def _restore_network(ctx: Context, board: RigBoard, _step: Step) -> list[Measurement]:
    board.proxy.restore()
    start = ctx.cut_since.pop(board.id, None)
    if start is not None:
        ctx.fault(board.id, "fault", start, time.time(), f"network cut {time.time() - start:.0f}s")
    return []


def _power_cut(ctx: Context, board: RigBoard, step: Step) -> list[Measurement]:
    start = time.time()
    board.power.off()
    time.sleep(float(step.arg("seconds")))
    board.power.on()
    back = time.time()  # after power(True): an operator may take a while to plug the board back in
    ctx.fault(board.id, "fault", start, back, f"power cut {step.arg('seconds'):g}s")
    if not step.arg("wait_online"):
        return []
    online = wait_online(ctx, board, back, 60)
    return [Measurement.check("online_after_power_s", round(online, 2), 60, "s")]


def _reset(ctx: Context, board: RigBoard, step: Step) -> list[Measurement]:
    start = time.time()
    board.reset.reset()
    online = wait_online(ctx, board, start, float(step.arg("online_s")))
    ctx.fault(board.id, "stimulus", start, time.time(), "reset")
    return [Measurement.check("online_after_reset_s", round(online, 2), float(step.arg("online_s")), "s")]


def _sensor_fault(ctx: Context, board: RigBoard, step: Step) -> list[Measurement]:
    start = time.time()
    board.sensors.inject(step.arg("sensor"), step.arg("kind"))
    time.sleep(float(step.arg("seconds")))
    board.sensors.inject(step.arg("sensor"), None)
    ctx.fault(board.id, "fault", start, time.time(), f"{step.arg('sensor')} {step.arg('kind')}")
    return []


def _expect(ctx: Context, board: RigBoard, step: Step) -> list[Measurement]:
    until = time.time()
    timeout = float(step.arg("timeout_s"))
    out: list[Measurement] = []
    if step.arg("delivered") or step.arg("latency_s"):
        faults = ctx.faults.get(board.id, [])
        last_fault_end = max((end for _start, end in faults), default=0.0)
        found, published, kafka = delivered(
            ctx.stack, board, ctx.scenario_start, timeout, int(step.arg("readings")), last_fault_end
        )
        if step.arg("delivered"):
            out += found
        if step.arg("latency_s"):
            limit = float(step.arg("latency_s"))
            out += latency(published, kafka, faults, limit, ctx.flashes.get(board.id, []))
    if step.arg("windows"):
        grace = ctx.rig.stack.grace_s + ctx.rig.stack.tumbling_s
        faults = ctx.faults.get(board.id, [])
        out += windows(ctx.stack, board, ctx.scenario_start, until, faults, timeout + grace)
    failed = [m for m in out if m.outcome == FAILED]
    if failed:
        raise StepFailedWith("; ".join(f"{m.name}={m.value:g} (limit {_limits(m)})" for m in failed), out)
    return out


def _limits(m: Measurement) -> str:
    parts = []
    if m.low is not None:
        parts.append(f">= {m.low:g}")
    if m.limit is not None:
        parts.append(f"<= {m.limit:g}")
    return " and ".join(parts)


class StepFailedWith(StepFailed):
    def __init__(self, message: str, measurements: list[Measurement]) -> None:
        super().__init__(message)
        self.measurements = measurements


BOARD_STEPS: dict[str, Callable[[Context, RigBoard, Step], list[Measurement]]] = {
    "flash": _flash,
    "verify_version": _verify_version,
    "set_environment": _set_environment,
    "cut_network": _cut_network,
    "restore_network": _restore_network,
    "power_cut": _power_cut,
    "reset": _reset,
    "sensor_fault": _sensor_fault,
    "expect": _expect,
    "config_set": fleet_steps.config_set,
    "ota_push": fleet_steps.ota_push,
    "revoke": fleet_steps.revoke,
}


def run_global(ctx: Context, step: Step, boards: list[RigBoard]) -> None:
    if step.name == "wait":
        time.sleep(float(step.arg("seconds")))
    elif step.name == "broker_restart":
        start = time.time()
        ctx.stack.restart_broker(float(step.arg("down_s")))
        for b in boards:
            ctx.fault(b.id, "fault", start, time.time(), f"broker restart {step.arg('down_s'):g}s")
    else:
        raise StepFailed(f"{step.name} is not a rig-wide step")
