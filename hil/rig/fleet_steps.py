"""Steps of fleet operations (issue #22): remote configuration, signed over-the-air updates and a
revoked account, done to a board with the operator's own code (fleetops, `iot config` / `iot ota`)
on the rig's broker. Nothing here asks which kind of board it has, except a power cut inside the swap
(a virtual board's flash counts its operations; a real one has no such switch).

Every board the rig flashes trusts the run's own update key (made at the first flash, in the run's
folder); bundles are built per kind of board (.mpy bytecode for the unix port, xtensawin for an ESP32,
or sources, as the rig's firmware.mpy says) and versioned one patch above what the board runs unless
the step names a version. A scenario follows these steps with `expect`: every reading of every boot
delivered, none doubled, across the update or the rollback.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetops import bundle, push, remote
from fleetops.bundle import Bundle
from fleetops.operator import Session, Target
from hil.rig.record import Measurement
from hil.rig.spec import Step
from iot.devices.provision import DevicesSettings, Provisioner
from iot.devices.registry import Registry
from iot.errors import IotError

if TYPE_CHECKING:
    from hil.rig.boards import RigBoard
    from hil.rig.steps import Context


SWAP_CUT_AFTER = 5  # boot.py's flash operations before the power goes: in the middle of the swap
_lock = threading.Lock()


class OtaKit:
    """The run's update keys and the bundles built with them, shared by the boards' threads."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key, self.public, _kid = bundle.keygen(folder, "rig")
        self.other_key, _pub, _okid = bundle.keygen(folder, "other")
        self._bundles: dict[tuple[str, str, bool, str], Bundle] = {}

    def bundle(self, firmware: Path, build: str, version: str, mpy: bool, arch: str) -> Bundle:
        cache = (build, version, mpy, arch)
        with _lock:
            if cache not in self._bundles:
                source = firmware
                if build == "raises_at_import":
                    source = self.folder / f"broken-{version}"
                    shutil.rmtree(source, ignore_errors=True)
                    shutil.copytree(firmware, source)
                    node = source / "node.py"
                    node.write_text('raise RuntimeError("broken build")\n' + node.read_text())
                key = self.other_key if build == "other_key" else self.key
                out = self.folder / f"{build}-{version}-{arch or 'bytecode'}{'-mpy' if mpy else ''}.bin"
                self._bundles[cache] = bundle.build(source, version, key, out, mpy=mpy, arch=arch)
            return self._bundles[cache]


def kit(ctx: Context) -> OtaKit:
    with _lock:
        if ctx.ota is None:
            ctx.ota = OtaKit(ctx.stack.workdir / "ota")
        return ctx.ota


def _settings(ctx: Context) -> DevicesSettings:
    from hil.rig.steps import StepFailed

    settings = ctx.stack.settings
    if settings is None:
        raise StepFailed(
            "fleet steps act as the operator: the rig needs stack.broker: private, or the operator's "
            "account (IOT_MQTT_OPERATOR_USERNAME / _PASSWORD) on its broker"
        )
    return settings


def running_version(ctx: Context, board: RigBoard) -> str:
    """The firmware version of the board's last live health message (else what the rig last saw)."""
    assert ctx.stack.probe is not None
    live = [m for m in ctx.stack.probe.messages("health", board.device) if not m.retain]
    fw = str(live[-1].json().get("fw", "")) if live else ""
    return fw or ctx.firmware.get(board.id, "") or ctx.rig.firmware.version


def next_version(version: str) -> str:
    """One patch above `version` (0.1.0 -> 0.1.1): what boards take as newer."""
    parts = version.split(".")
    if not parts or not all(p.isdigit() for p in parts):
        return "0.0.1"
    parts[-1] = str(int(parts[-1]) + 1)
    return ".".join(parts)


def _wait_version(ctx: Context, board: RigBoard, version: str, since: float, timeout_s: float) -> float:
    """Seconds from `since` until a live health message says the board runs `version`."""
    from hil.rig.steps import StepFailed

    assert ctx.stack.probe is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for m in ctx.stack.probe.messages("health", board.device):
            if not m.retain and m.at >= since and m.json().get("fw") == version:
                return m.at - since
        time.sleep(0.2)
    raise StepFailed(f"{board.id}: no health message on {version} within {timeout_s:.0f}s of the outcome")


def ota_push(ctx: Context, board: RigBoard, step: Step) -> list[Measurement]:
    from hil.rig.steps import StepFailed

    cut = step.arg("cut")
    if cut == "swap" and not board.spec.virtual:
        raise StepFailed(f"{board.id}: cut: swap needs a virtual board (its flash counts the swap's steps)")
    settings = _settings(ctx)
    running = running_version(ctx, board)
    version = step.arg("version") or next_version(running)
    arch = "" if board.spec.virtual else "xtensawin"
    b = kit(ctx).bundle(ctx.rig.firmware.dir, step.arg("build"), version, ctx.rig.firmware.mpy, arch)
    target = Target(board.device, board.place)
    say = lambda line: ctx.say(f"  {board.id}: {line}")  # noqa: E731
    start = time.time()
    if cut == "swap":
        board.cut_power_in_boot(SWAP_CUT_AFTER)
    with Session(settings, [target]) as session:
        session.settle()
        transfer = push.Transfer(
            session,
            target,
            b,
            time.time_ns() // 1_000_000,
            int(step.arg("trial_s")),
            step.arg("timeout_s"),
            say,
        )
        outcome = transfer.start()
        cut_at = 0.0
        while outcome is None:
            outcome = transfer.poll()
            if cut == "transfer" and not cut_at and transfer.last_have > b.size // 3:
                cut_at = time.time()
                board.power.off()  # the power goes in the middle of the transfer, and comes back
                time.sleep(1.0)  # the scripted outage, not a synchronisation
                board.power.on()
                ctx.fault(board.id, "fault", cut_at, time.time(), f"power cut at {transfer.last_have} bytes")
            session.wait(0.05)
    done = time.time()
    ctx.fault(board.id, "stimulus", start, done, f"ota {b.version} {step.arg('build')}: {outcome.state}")
    want = step.arg("expect")
    if outcome.state != want:
        raise StepFailed(
            f"{board.id}: update to {b.version} ({step.arg('build')} build) ended {outcome.state}, the "
            f"scenario expects {want}" + (f": {outcome.error}" if outcome.error else "")
        )
    if step.arg("error") not in outcome.error:
        raise StepFailed(
            f"{board.id}: {outcome.state} with {outcome.error!r}, expected {step.arg('error')!r} in it"
        )
    if cut == "transfer" and not cut_at:
        raise StepFailed(f"{board.id}: the transfer ended before a third of it: no power cut in it")
    console = board.console.text()
    if cut == "swap" and board.spec.virtual and "power_cut during=boot.py" not in console:
        raise StepFailed(f"{board.id}: the power cut armed for the swap did not happen")
    now_on = b.version if outcome.state == "updated" else running
    online_s = _wait_version(ctx, board, now_on, done - 1, 60)
    ctx.firmware[board.id] = ctx.updated_to[board.id] = now_on
    return [
        Measurement.check("bundle_bytes", b.size, None, "bytes"),
        Measurement.check("ota_s", round(outcome.seconds, 2), float(step.arg("timeout_s")), "s"),
        Measurement.check("ota_transfer_s", round(outcome.transfer_s, 2), None, "s"),
        Measurement.check("ota_sent_bytes", outcome.sent_bytes, None, "bytes"),
        Measurement.check("ota_resends", outcome.resends, None, "times"),
        Measurement.check("online_on_version_s", round(online_s, 2), 60, "s"),
    ]


def config_set(ctx: Context, board: RigBoard, step: Step) -> list[Measurement]:
    from hil.rig.steps import StepFailed

    settings = _settings(ctx)
    target = Target(board.device, board.place)
    changes: dict[str, Any] = dict(step.arg("set") or {})
    unset = [str(f) for f in step.arg("unset") or []]
    start = time.time()
    registry = Registry.connect(settings.mongo_uri)
    try:
        with Session(settings, [target]) as session:
            session.settle()
            try:
                (d,) = remote.deliver(session, registry, [target], changes, unset, int(step.arg("trial_s")))
            except IotError as exc:
                raise StepFailed(f"{board.id}: {type(exc).__name__}: {exc}") from None
            say = lambda line: ctx.say(f"  {board.id}: {line}")  # noqa: E731
            state, detail = remote.wait_applied(session, [d], float(step.arg("timeout_s")), say)[board.device]
    finally:
        registry.close()
    if d.restart:
        ctx.fault(board.id, "fault", start, time.time(), f"config rev {d.rev} on trial: {state}")
    want = step.arg("expect")
    if state != want:
        raise StepFailed(f"{board.id}: config rev {d.rev} {state}, the scenario expects {want}: {detail}")
    if step.arg("error") not in detail:
        raise StepFailed(
            f"{board.id}: rev {d.rev} {state} with {detail!r}, expected {step.arg('error')!r} in it"
        )
    return [Measurement.check("config_s", round(time.time() - start, 2), float(step.arg("timeout_s")), "s")]


def revoke(ctx: Context, board: RigBoard, step: Step) -> list[Measurement]:
    """`iot devices remove` the board: from then on nothing of it reaches the broker (its connection
    closed, every login refused) while it keeps measuring into its outbox; then its account is made
    again with the password it was flashed with, and it delivers what it kept."""
    from hil.rig.steps import StepFailed, wait_online

    settings = _settings(ctx)
    password = board.login.get("mqtt_password", "")
    if not password:
        raise StepFailed(f"{board.id}: the rig did not provision it (no account to revoke)")
    assert ctx.stack.probe is not None
    with Provisioner.open(settings) as prov:
        if not prov.remove(board.device):
            raise StepFailed(f"{board.id}: {board.device} had no account to remove")
    start = time.time()
    time.sleep(float(step.arg("seconds")))  # the scripted revocation, not a synchronisation
    late = [
        m.topic
        for kind in ("reading", "status", "health")  # what the board itself publishes
        for m in ctx.stack.probe.messages(kind, board.device)
        if not m.retain and m.at > start + 1.0  # what was in flight when it was removed may land
    ]
    with Provisioner.open(settings) as prov:
        prov.add(board.place, board.device, password=password)
    back = time.time()
    ctx.fault(board.id, "fault", start, back, f"account revoked {step.arg('seconds'):g}s")
    if late:
        raise StepFailed(f"{board.id}: {len(late)} messages reached the broker after its account was removed")
    online = wait_online(ctx, board, back, float(step.arg("online_s")))
    return [Measurement.check("online_after_restore_s", round(online, 2), float(step.arg("online_s")), "s")]
