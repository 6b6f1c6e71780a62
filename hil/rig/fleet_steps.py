"""Steps of fleet operations (issue #22): remote configuration and a revoked account, done to a board
with the operator's own code (fleetops: `iot config set`; iot.devices: `iot devices remove`) on the
rig's broker. Nothing here asks which kind of board it has. A scenario follows these steps with
`expect`: every reading of every boot delivered, none doubled, across the restarts and the revocation.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fleetops import remote
from fleetops.operator import Session, Target
from hil.rig.record import Measurement
from hil.rig.spec import Step
from iot.devices.provision import DevicesSettings, Provisioner
from iot.devices.registry import Registry
from iot.errors import IotError

if TYPE_CHECKING:
    from hil.rig.boards import RigBoard
    from hil.rig.steps import Context


def _settings(ctx: Context) -> DevicesSettings:
    from hil.rig.steps import StepFailed

    settings = ctx.stack.settings
    if settings is None:
        raise StepFailed(
            "fleet steps act as the operator: the rig needs stack.broker: private, or the operator's "
            "account (IOT_MQTT_OPERATOR_USERNAME / _PASSWORD) on its broker"
        )
    return settings


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
